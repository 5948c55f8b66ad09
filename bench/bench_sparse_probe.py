"""Benchmark: the sparse-probe extractor on SmolLM2-135M, French (positive) vs English.

    python bench/bench_sparse_probe.py [--threads 2] [--snippet-tokens 48] [--out FILE] [--plots DIR]

Data: the shipped bricks/data/fr.jsonl and en.jsonl. The extractor splits them by document (held-out 20%,
then 25% of the rest chooses C) and only then cuts every document into snippets of <= 48 tokens (~550
French and ~520 English snippets in all), so no snippet's document is on two sides of a split.

Prints one JSON object (and writes it to --out): for each setting, the brick's size and share of all
neurons, the probe's held-out accuracy and AUROC and its chosen C, the same-size random-set probes
(held-out accuracy: mean and max over 5 sets), and for the main setting the ablation check (ΔPPL% on
held-out French and English with the brick at gain 0, and with 5 random same-shape sets). Settings:
- main: whole 48-token snippets, budget 0.1% of all neurons;
- short: the same snippets cut to their first 4 tokens (max_len=4), budget 0.1%;
- few (only with --settings ...,few): whole snippets, budget 0.01% (4 neurons).
The last two are harder on purpose: on whole snippets fr-vs-en is easy for random neuron sets too. With
--plots, each setting also reports gap_by_size: every probe of the C path (1 neuron upwards) against
random sets of its size, which is the "fewer neurons" comparison without another extraction.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from bricks.constants import DEFAULT_HOST
from bricks.corpus import DATA_DIR, load_corpus
from bricks.errors import InvalidInputError
from bricks.extract import get_extractor
from bricks.host import load_host

SETTINGS = {  # budget as a multiple of --budget
    "main": {"budget": 1.0},
    "short": {"budget": 1.0, "max_len": 4, "ablation": False},
    "few": {"budget": 0.1, "ablation": False},
}


def run_setting(host, corpus, options: dict, plots: Path | None) -> dict:
    """One extraction; the figures the issue asks for, gathered from its report."""
    t = time.perf_counter()
    ex = get_extractor("sparse-probe").run(host, corpus, name="fr-probe", out_dir=plots, positive="fr", force=True,
                                           **options)
    m = ex.report["fr-probe"]
    out = {"options": options, "wall_s": round(time.perf_counter() - t, 1),
           "texts": m["texts"], "brick_neurons": m["brick_neurons"], "probe_neurons": m["probe_neurons"],
           "budget_neurons": m["budget_neurons"], "brick_fraction_pct": round(100 * m["brick_fraction"], 4),
           "chosen_c": m["chosen_c"], "held_out_accuracy": m["held_out_accuracy"],
           "held_out_auroc": m["held_out_auroc"], "random_probe": m["random_probe"],
           "gap_points": round(100 * (m["held_out_accuracy"] - m["random_probe"]["test_acc_mean"]), 2),
           "brick_only_probe": m["brick_only_probe"], "random_brick_size_probe": m["random_brick_size_probe"],
           "path": m["path"], "neurons": m["weights"]}
    out["bars"] = {"size_le_0.1pct": m["brick_fraction"] <= 0.001, "gap_ge_10_points": out["gap_points"] >= 10}
    if "ablation" in m:
        ab = m["ablation"]
        out["ablation"] = ab
        rand_max = ab["random_own_over_other_max"]
        out["bars"]["ablation_own_ge_3x_other"] = ab["own_over_other"] >= 3
        out["bars"]["random_sets_not_asymmetric"] = rand_max is None or rand_max < 3
    out["plots"] = {k: str(v) for k, v in ex.artifacts.items()}
    if "random_curve" in m:
        out["gap_by_size"] = gap_by_size(m["path"], m["random_curve"])
    return out


def gap_by_size(path: list[dict], random_curve: list[dict]) -> list[dict]:
    """Fewer neurons: each probe of the L1 path (held-out accuracy) against random sets of its size."""
    rand = {r["neurons"]: r for r in random_curve}
    rows = []
    for p in path:
        r = rand.get(p["neurons"])
        if r is not None:
            rows.append({"neurons": p["neurons"], "c": p["c"], "probe_acc": p["held_out_acc"],
                         "random_acc_mean": r["mean"], "random_acc_max": r["max"],
                         "gap_points": round(100 * (p["held_out_acc"] - r["mean"]), 2)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--host", default=DEFAULT_HOST, help="Host (a local folder for a quick smoke run).")
    ap.add_argument("--snippet-tokens", type=int, default=48)
    ap.add_argument("--settings", default="main,short", help="Comma-separated: " + ", ".join(SETTINGS))
    ap.add_argument("--budget", type=float, default=0.001, help="The main setting's budget (share of all neurons).")
    ap.add_argument("--n-random", type=int, default=5)
    ap.add_argument("--out", default=None, help="Also write the JSON here.")
    ap.add_argument("--plots", default=None, help="Folder for the accuracy-vs-neurons plots (one per setting).")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    host = load_host(args.host)
    corpus = load_corpus([DATA_DIR / "fr.jsonl", DATA_DIR / "en.jsonl"])
    result = {"host": args.host, "threads": args.threads, "load_avg_before": [round(x, 2) for x in os.getloadavg()],
              "documents": {lab: len(corpus.by_label(lab)) for lab in corpus.labels()},
              "all_neurons": host.n_layers * host.d_ff, "settings": {}}
    for key in args.settings.split(","):
        options = {"snippet_tokens": args.snippet_tokens, "n_random": args.n_random, **SETTINGS[key]}
        options["budget"] = SETTINGS[key]["budget"] * args.budget
        plots = Path(args.plots) / key if args.plots else None
        try:
            result["settings"][key] = run_setting(host, corpus, options, plots)
        except InvalidInputError as e:  # e.g. no probe within a tiny budget: recorded, the other settings still run
            result["settings"][key] = {"options": options, "error": str(e)}
        if args.out:  # the figures so far survive an interrupted run
            Path(args.out).write_text(json.dumps(result, indent=2))
    result["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
