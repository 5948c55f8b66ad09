"""Routing benchmark: accuracy of retrieval routing per embedder and rule, and latency over 10k bricks.

Accuracy: one routable brick per label of the shipped corpora, its routing keys taken as the extractor
takes them (`example_texts`, from the training split only: `load_corpus("builtin").split(0.2, seed=0)`,
plus the label's requests written for routing keys, `routing_requests`: bricks/data/routing/keys.jsonl).
Evaluated on text never used for fitting: 300-character paragraphs of the held-out documents, the chat
prompts in bricks/data/routing/prompts.jsonl (fr/de/en, code and maths requests), prompts_mixed.jsonl
(written after the request keys, to check them: code and maths asked in French, German and English) and,
for the "none of these" threshold, prompts in other languages (out_of_domain.jsonl: no brick should run).
Latency: 10k synthetic bricks (one centroid each), the embedder's time included.

    python bench/bench_routing.py [--embedders minilm,chars,minilm+chars,host] [--rules centroid,knn,linear]
                                  [--keys 64] [--per-label 40] [--latency-only] [--no-latency]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bricks.corpus import load_corpus
from bricks.extract.emergent import example_texts, routing_requests
from router.assembly import BrickChoice
from router.embed import get_embedder
from router.evaluate import NONE, evaluate, held_out_paragraphs, load_labelled
from router.policy import RULES, RouteEntry, Router

DATA = Path(__file__).resolve().parents[1] / "bricks" / "data" / "routing"


def label_router(embedder, rule: str, keys: int, top_k: int = 2, without: tuple[str, ...] = (),
                 requests: str = "builtin") -> Router:
    train, _ = load_corpus("builtin").split(0.2, seed=0)
    extra = routing_requests(requests)
    entries = [RouteEntry(lab, BrickChoice(f"lang-{lab}"), True, example_texts(train, lab, n=keys) + extra.get(lab, []))
               for lab in train.labels() if lab not in without]
    return Router("retrieval", entries, top_k=top_k, embedder=embedder, rule=rule)


def eval_sets(per_label: int | None, without: tuple[str, ...] = ()) -> dict[str, list[tuple[str, str]]]:
    """Evaluation sets; the examples of a label in `without` (a brick the manifest lacks) expect no brick."""
    _, held = load_corpus("builtin").split(0.2, seed=0)
    sets = {"paragraphs": held_out_paragraphs(held, 300, per_label),
            "prompts": load_labelled(DATA / "prompts.jsonl"),
            "prompts_mixed": load_labelled(DATA / "prompts_mixed.jsonl"),
            "out_of_domain": load_labelled(DATA / "out_of_domain.jsonl")}
    return {k: [(t, NONE if lab in without else lab) for t, lab in v] for k, v in sets.items()}


def make_embedder(name: str):
    if name != "host":
        return get_embedder(name)
    from bricks.host import load_host

    host = load_host()
    return get_embedder("host", host.model, host.tokenizer)


def accuracy(embedders: list[str], rules: list[str], keys: int, per_label: int | None,
             without: tuple[str, ...] = (), requests: str = "builtin") -> dict:
    sets = eval_sets(per_label, without)
    out = {}
    for name in embedders:
        emb = make_embedder(name)
        for rule in rules:
            t0 = time.perf_counter()
            router = label_router(emb, rule, keys, without=without, requests=requests)
            build_s = time.perf_counter() - t0
            row = {"build_s": round(build_s, 2), "thresholds": {k: round(v, 3) for k, v in
                                                                 router.index.thresholds.items()}}
            for set_name, examples in sets.items():
                res = evaluate(router, examples, {})
                s = res.summary()
                if set_name == "out_of_domain":
                    row[set_name] = {"none_rejected": s["none_rejected"], "confusion": s["confusion"]["none"]}
                else:
                    row[set_name] = {k: s[k] for k in ("accuracy", "min_accuracy", "no_brick_rate",
                                                         "extra_brick_rate", "confusion", "none_rejected") if k in s}
            out[f"{name}/{rule}"] = row
            print(f"{name}/{rule}: paragraphs min {row['paragraphs']['min_accuracy']:.3f} "
                  f"prompts min {row['prompts']['min_accuracy']:.3f} "
                  f"mixed min {row['prompts_mixed']['min_accuracy']:.3f} "
                  f"ood rejected {row['out_of_domain']['none_rejected']:.3f}", file=sys.stderr, flush=True)
    return out


def routing_latency(n_bricks: int = 10_000, embedder: str = "minilm", rule: str = "centroid") -> dict:
    """10k bricks, one key vector each (random unit vectors: the centroid), 180 prompts."""
    emb = get_embedder(embedder)
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n_bricks, emb.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    router = Router("retrieval", [], top_k=3, threshold=0.0, embedder=emb, rule=rule)
    for i in range(n_bricks):
        router.entries[f"b{i}"] = RouteEntry(f"b{i}", BrickChoice(f"b{i}"), True, [])
    router.index.add_many([f"b{i}" for i in range(n_bricks)], vecs)
    prompts = [f"{text} (variant {i})" for i in range(20) for text, _ in load_labelled(DATA / "prompts.jsonl")[::11]]
    router.route("warm up")
    emb.forget()  # every timed prompt is embedded, not recalled (the embedders remember recent texts)
    times = [router.route(p).route_ms for p in prompts]
    return {"bricks": n_bricks, "embedder": embedder, "rule": router.index.rule, "prompts": len(times),
            "route_ms_p50": round(statistics.median(times), 3),
            "route_ms_p99": round(float(np.percentile(times, 99)), 3),
            "includes": f"{embedder} embedding + FAISS search over the centroids + thresholds"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--embedders", default="minilm,chars,minilm+chars")
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--keys", type=int, default=64, help="routing keys per brick")
    ap.add_argument("--per-label", type=int, default=None, help="cap held-out paragraphs per label")
    ap.add_argument("--without", default="", help="labels with no brick (as in manifests/smollm2-languages.yaml: "
                    "en); their examples should get none")
    ap.add_argument("--requests", default="builtin", help="routing requests added to the keys, as the extractor "
                    "adds them (builtin: bricks/data/routing/keys.jsonl; none: paragraphs only)")
    ap.add_argument("--latency-only", action="store_true")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--latency-embedders", default="minilm,minilm+chars")
    ap.add_argument("--latency-rules", default="centroid,knn")
    args = ap.parse_args()
    torch.set_num_threads(2)
    result = {}
    if not args.latency_only:
        without = tuple(x for x in args.without.split(",") if x)
        result["accuracy"] = accuracy(args.embedders.split(","), args.rules.split(","), args.keys, args.per_label,
                                      without, args.requests)
    if not args.no_latency:
        result["latency"] = [routing_latency(embedder=e, rule=r) for e in args.latency_embedders.split(",")
                             for r in args.latency_rules.split(",")]
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
