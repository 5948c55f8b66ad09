"""Evaluation on the tiny host: perplexity with bricks, selectivity report shapes, steering helpers, CLI."""

import json

import pytest
import torch

from bricks.compose import BrickUse
from bricks.corpus import Corpus, Doc
from bricks.evaluate import (
    _batch_nll,
    heatmap_png,
    jaccard,
    label_perplexity,
    random_like,
    render_table,
    selectivity_report,
    stability,
)
from tests.conftest import TINY_TEXT, labelled_brick

TORCH_THREADS = 1  # the tiny model's matmuls are microseconds: OpenMP hand-offs cost more than they save


@pytest.fixture(scope="module")
def corpus():
    labels = ["en", "fr", "code", "math", "de"]
    return Corpus(Doc(t + f" {i}", lab) for i in range(3) for t, lab in zip(TINY_TEXT, labels, strict=True))


def test_nll_equals_transformers_loss(tiny_host):
    ids = tiny_host.tokenizer(TINY_TEXT[1], return_tensors="pt").input_ids
    pad = torch.full((1, 5), tiny_host.tokenizer.pad_token_id)
    batch = torch.cat([torch.cat([ids, pad], 1), torch.cat([ids[:, :-5], pad, pad[:, :5]], 1)])
    mask = torch.cat([torch.cat([torch.ones_like(ids), 0 * pad], 1),
                      torch.cat([torch.ones_like(ids[:, :-5]), 0 * pad, 0 * pad[:, :5]], 1)])
    with torch.no_grad():
        got = _batch_nll(tiny_host, batch, mask)
        want = tiny_host.model(ids, labels=ids).loss * (ids.shape[1] - 1)
    assert got[0].item() == pytest.approx(want.item(), rel=1e-5)


def test_gain_one_leaves_perplexity_bit_identical(tiny_host, corpus):
    base = label_perplexity(tiny_host, corpus)
    assert label_perplexity(tiny_host, corpus, [BrickUse(labelled_brick(tiny_host, gain=1.0))]) == base
    assert label_perplexity(tiny_host, corpus, [BrickUse(labelled_brick(tiny_host, gain=0.0))]) != base


def test_random_like_keeps_counts_per_layer(tiny_host):
    b = labelled_brick(tiny_host)
    r = random_like(b, seed=3)
    assert {k: s.indices.numel() for k, s in r.neurons.items()} == {1: 3, 3: 2}
    assert all((s.gain == 0).all() for s in r.neurons.values())
    assert jaccard(b, b) == 1.0 and jaccard(b, r) < 1.0
    assert not torch.equal(random_like(b, seed=4).neurons[1].indices, r.neurons[1].indices)


def test_selectivity_report_shapes(tiny_host, corpus, tmp_path):
    rep = selectivity_report(tiny_host, corpus, [labelled_brick(tiny_host)], random_sets=5, progress=False)
    (b,) = rep.bricks
    assert rep.labels == corpus.labels() and len(b.random) == 5
    assert all(set(r) == set(corpus.labels()) for r in b.random)
    s = b.summary()
    assert s["own"] == b.delta["fr"] and s["random_own"] is not None
    assert json.loads(rep.to_json())["bricks"][0]["summary"]["own"] == s["own"]
    assert render_table(rep).row_count == 1
    assert heatmap_png(rep, tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    own_only = selectivity_report(tiny_host, corpus, [labelled_brick(tiny_host)], random_sets=2, random_labels="own",
                                  progress=False)
    assert all(set(r) == {"fr"} for r in own_only.bricks[0].random)


def test_stability_reextracts_on_two_halves(tiny_host, corpus):
    got = stability(tiny_host, Corpus(list(corpus) * 1 + [Doc(d.text + " again", d.label) for d in corpus]),
                    top_pct=5.0, progress=False)
    assert set(got) == set(corpus.labels()) and all(0.0 <= v <= 1.0 for v in got.values())
