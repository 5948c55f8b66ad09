"""Benchmark: `brick eval --metric stability` and `--metric mfa` on SmolLM2-135M.

    python bench/bench_metrics.py [--brick random|emergent] [--gain 4] [--samplings 10] [--threads 2]
                                  [--plots DIR] [--out FILE]

- stability: the host vs the host with a demo-like brick at --gain (default x4): the per-layer lambda, its sum
  (log amplification of an input-embedding perturbation end to end) and the relative-perturbation version.
  The brick is `random` (default: a random set of 0.5% of all FFN neurons, the size of the demo's emergent
  language bricks at top_pct=0.5, spread uniformly over layers, seed 0), or `emergent` (the French brick the
  emergent extractor finds in the shipped corpora with the demo's defaults; a few minutes more).
- mfa: NeuroMFA of the host vs a random initialisation of the same config: alpha_0, width and the degree of
  emergence with 95% bootstrap intervals over --samplings samplings, and the seconds the samplings took.

Prints one JSON object (and writes it to --out); plots go to --plots (stability.png, mfa.png).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bricks.analysis.metrics import run_metric
from bricks.compose import BrickUse
from bricks.constants import DEFAULT_HOST
from bricks.host import load_host
from bricks.kinds.neurons import neuron_brick

BRICK_PCT = 0.5  # % of all FFN neurons: the emergent extractor's default top_pct, as the demo's bricks use


def random_brick(host, pct: float = BRICK_PCT, seed: int = 0):
    """A neurons brick of pct% of all FFN neurons drawn uniformly over (layer, neuron), gain 1."""
    total = host.n_layers * host.d_ff
    flat = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[: round(total * pct / 100)]
    layers = {}
    for layer in range(host.n_layers):
        idx = flat[flat // host.d_ff == layer] % host.d_ff
        if idx.numel():
            layers[layer] = idx
    return neuron_brick("random-set", host.ref, layers, gain=1.0)


def emergent_french_brick(host, progress: bool):
    from bricks.corpus import load_corpus
    from bricks.extract import get_extractor

    result = get_extractor("emergent").run(host, load_corpus("builtin"), name="bench", progress=progress, force=True)
    return next(b for b in result.bricks if b.meta.routing.label == "fr")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default=DEFAULT_HOST)
    ap.add_argument("--brick", choices=["random", "emergent"], default="random")
    ap.add_argument("--gain", type=float, default=4.0)
    ap.add_argument("--texts", type=int, default=8)
    ap.add_argument("--samplings", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plots", default="brick-plots")
    ap.add_argument("--out", default=None)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    host = load_host(args.host)
    out: dict = {"host": host.ref.name, "threads": args.threads}

    start = time.perf_counter()
    brick = random_brick(host) if args.brick == "random" else emergent_french_brick(host, args.progress)
    out["brick"] = {"kind": args.brick, "neurons": brick.size(), "layers": len(brick.neurons), "gain": args.gain,
                    "seconds": round(time.perf_counter() - start, 1)}
    start = time.perf_counter()
    st = run_metric("stability", host, [BrickUse(brick, gain=args.gain)], plot=Path(args.plots) / "stability.png",
                    texts=args.texts, progress=args.progress).report
    keys = ("sum", "mean", "max", "max_layer", "contracting_layers", "sum_relative", "contracting_layers_relative")
    out["stability"] = {"eps": st["eps"], "texts": st["texts"], "tokens": st["tokens"],
                        **{run: {k: st[run][k] for k in keys} | {"lambda": st[run]["lambda"],
                                                                 "lambda_relative": st[run]["lambda_relative"]}
                           for run in ("host", "assembly")},
                        "sum_change": st["sum_change"], "seconds": round(time.perf_counter() - start, 1)}

    start = time.perf_counter()
    mfa = run_metric("mfa", host, plot=Path(args.plots) / "mfa.png", samplings=args.samplings,
                     progress=args.progress).report
    out["mfa"] = {"samplings": mfa["samplings"], "nodes": mfa["nodes"], "centers": mfa["centers"],
                  **{run: {k: mfa[run][k] for k in ("alpha_0", "width", "d_0", "seconds", "per_sampling")}
                     for run in ("host", "random_init")},
                  "emergence": mfa["emergence"], "seconds": round(time.perf_counter() - start, 1)}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
