"""Benchmark: activation-profiling throughput vs the plain forward pass, and emergent extraction wall time.

    python bench/bench_extract.py [--threads 2] [--skip-extract] [--docs N] [--throughput-every N]

Prints one JSON object:
- throughput_ratio: plain forward time / profiling time on the same batches (target >= 0.8). The
  plain forward is the full model (with logits), as a user would run it; profiling runs the decoder
  without the LM head (it needs no logits) plus the statistics hooks. Batches are timed interleaved
  (plain, decoder-only, profiling on each batch in turn), so load from other processes hits all three
  alike; ratio_vs_decoder_only isolates the cost of the hooks themselves.
- extract_all_labels_s: wall time of `extract_emergent` on the shipped corpora (profiling the 80%
  training split, selecting every label's brick and ablating each candidate on held-out text).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from bricks.constants import DEFAULT_HOST
from bricks.corpus import Corpus, batches, load_corpus
from bricks.extract.emergent import EmergentOptions, extract_emergent
from bricks.host import load_host
from bricks.profile import chunk_corpus, decoder, profile_corpus


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def throughput(host, corpus: Corpus, batch_tokens: int = 4096) -> dict:
    """Time the three passes batch by batch on identical token batches."""
    times = {"plain": 0.0, "decoder": 0.0, "profile": 0.0}
    tokens = 0
    for batch in batches(corpus, host.tokenizer, batch_tokens=batch_tokens):
        docs = Corpus(corpus[i] for i in batch.doc_index)
        kw = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
        with torch.inference_mode():
            times["plain"] += _timed(lambda: host.model(**kw))  # noqa: B023 (called at once)
            times["decoder"] += _timed(lambda: decoder(host.model)(**kw))  # noqa: B023
        times["profile"] += _timed(lambda: profile_corpus(host, docs, batch_tokens=batch_tokens,  # noqa: B023
                                                          progress=False))
        tokens += int(batch.attention_mask.sum())
    return {"profile_tokens": tokens, "plain_forward_s": round(times["plain"], 2),
            "decoder_forward_s": round(times["decoder"], 2), "profile_s": round(times["profile"], 2),
            "throughput_ratio": round(times["plain"] / times["profile"], 3),
            "ratio_vs_decoder_only": round(times["decoder"] / times["profile"], 3),
            "profile_tokens_per_s": round(tokens / times["profile"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--docs", type=int, default=0, help="Use every n-th document only (quick runs).")
    ap.add_argument("--throughput-every", type=int, default=4,
                    help="Time throughput on every n-th document of the (used) corpus; each pass is timed.")
    ap.add_argument("--skip-extract", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    host = load_host(DEFAULT_HOST)
    corpus = load_corpus("builtin")
    if args.docs:
        corpus = Corpus(corpus[:: args.docs])
    out = {"threads": args.threads, "load_avg_before": [round(x, 2) for x in os.getloadavg()]}
    out.update(throughput(host, chunk_corpus(Corpus(corpus[:: args.throughput_every]), host.tokenizer)))
    if not args.skip_extract:
        t = time.perf_counter()
        ex = extract_emergent(host, corpus, EmergentOptions(progress=False), name="bench")
        out["extract_all_labels_s"] = round(time.perf_counter() - t, 1)
        out["published"] = [b.name for b in ex.bricks]
        out["skipped"] = ex.skipped
    out["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
