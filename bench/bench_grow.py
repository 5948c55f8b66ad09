"""Grow on the real host: the shipped 36 fictional facts, each growth method, EasyEdit-style. Prints JSON.

    .venv/bin/python bench/bench_grow.py [--methods tpatcher,lm] [--steps 150] [--save DIR] [--out FILE]

Per method (same facts, layers, neurons per fact, steps and seed):
- reliability: greedy recall of each fact's target from its prompt, with the brick (and the plain host's);
- generality: recall from the trained paraphrases, and from bricks/data/facts/heldout.jsonl (other wordings of
  the same facts, never trained on);
- locality: EasyEdit's token agreement with the plain host on unrelated prompts (fixed prompts in the facts'
  templates and held-out corpus prefixes, none trained on), and the held-out perplexity change on the shipped
  corpora's held-out documents (target: <= 1%);
- the new neurons' gate activation on their facts vs their largest on unrelated held-out text (the margin), and
  how large the neurons' output coefficient is on unrelated text relative to on the facts;
- training seconds.
`--save DIR` writes each grown brick as DIR/<method>.brick (what bench_growth_serving and the HTTP check serve).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bricks.format import save_brick  # noqa: E402
from bricks.host import load_host  # noqa: E402
from bricks.ops.data import file_digest, read_facts  # noqa: E402
from bricks.ops.grow import SHIPPED_FACTS, SHIPPED_HELDOUT, grow_facts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="tpatcher,lm")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--save", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    facts_path, held_path = SHIPPED_FACTS, SHIPPED_HELDOUT
    facts, held = read_facts(facts_path), read_facts(held_path)
    host = load_host()
    out: dict = {"host": host.ref.name, "n_facts": len(facts), "steps": args.steps, "methods": {}}
    for method in args.methods.split(","):
        started = time.perf_counter()
        result = grow_facts(host, facts, {"method": method, "steps": args.steps}, f"facts-{method}",
                            data_digest=file_digest(facts_path), heldout=held)
        out["methods"][method] = {**result.report, "wall_s": round(time.perf_counter() - started, 1)}
        print(json.dumps({method: out["methods"][method]}), file=sys.stderr)
        if args.save:
            Path(args.save).mkdir(parents=True, exist_ok=True)
            save_brick(result.brick, Path(args.save) / f"{method}.brick")
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
