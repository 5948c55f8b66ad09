"""The selectivity bars for emergent bricks on SmolLM2-135M and the shipped corpora (`bricks.audit`).

    python bench/bench_bars.py [--threads 2] [--heatmap out/selectivity.png] [--top-pct 0.5]

Prints one JSON object: per-brick ΔPPL% on every label on a test split the extractor never saw,
own / mean other / random-set ratios, Jaccard stability across disjoint corpus halves, the general-check
controls and the wall time; the selectivity table goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from rich.console import Console

from bricks.audit import audit_emergent
from bricks.constants import DEFAULT_HOST
from bricks.corpus import load_corpus
from bricks.evaluate import heatmap_png, render_table
from bricks.host import load_host


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top-pct", type=float, default=0.5)
    ap.add_argument("--heatmap", default="out/selectivity.png")
    ap.add_argument("--eval-tokens", type=int, default=1000,
                    help="Test-split tokens per label (0 = the whole test split, ~5k per label: slower).")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    host = load_host(DEFAULT_HOST)
    t = time.perf_counter()
    audit = audit_emergent(host, load_corpus("builtin"), top_pct=args.top_pct, eval_tokens=args.eval_tokens,
                           progress=True)
    out = {"threads": args.threads, "wall_s": round(time.perf_counter() - t, 1),
           "load_avg": [round(x, 2) for x in os.getloadavg()],
           "summary": {b.name: {**b.summary(), "size": b.size} for b in audit.report.bricks},
           **audit.to_dict()}
    if args.heatmap:
        out["heatmap"] = str(heatmap_png(audit.report, args.heatmap))
    Console(file=sys.stderr).print(render_table(audit.report))
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
