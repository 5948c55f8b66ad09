"""Rare-token extraction on the tiny host: the split, brick size, and the exact head replay."""

import json

import numpy as np
import pytest
import torch

from bricks.analysis.regimes import RegimeFit
from bricks.compose import BrickUse
from bricks.corpus import Corpus, Doc, batches
from bricks.errors import InvalidInputError
from bricks.extract import get_extractor
from bricks.extract.rare_tokens import (
    COMMON,
    OTHER,
    RARE,
    HeadReplay,
    TokenSplit,
    brick_size,
    cache_layer,
    class_means,
    split_by_mass,
)
from bricks.format import brick_from_bytes
from bricks.kinds.neurons import compose_neurons, neuron_brick, neuron_map_applied
from tests.conftest import TINY_TEXT


def test_split_by_occurrence_mass():
    #              unseen  five singletons  two 2s  5  10  30  50  -> 104 occurrences
    counts = torch.tensor([0, 1, 1, 1, 1, 1, 2, 2, 5, 10, 30, 50])
    s = split_by_mass(counts, rare_mass=0.15, common_mass=0.5)
    total = counts.sum()
    assert s.rare.tolist() == [True] * 9 + [False] * 3  # 14 occurrences <= 15.6, and the unseen type
    assert s.common.tolist() == [False] * 10 + [True, True]  # 80 >= 52, and 50 alone is not enough
    assert counts[s.rare].sum() <= 0.15 * total and counts[s.common].sum() >= 0.5 * total
    assert not (s.rare & s.common).any()
    assert s.classify(torch.tensor([0, 4, 11, 9])).tolist() == [RARE, RARE, COMMON, OTHER]


def test_split_rejects_bad_masses():
    with pytest.raises(InvalidInputError):
        split_by_mass(torch.tensor([1, 2, 3]), rare_mass=0.6, common_mass=0.6)


def test_brick_size_is_the_plateau_else_the_top_percent():
    plateau = RegimeFit([20.5, 400.0], [-0.2, -1.0, -5.0], -2.0, {2: 0.0}, ["plateau", "power-law", "fast-decay"])
    assert brick_size(plateau, 1536) == (20, "plateau: ranks 1-20 of the influence curve")
    power = RegimeFit([], [-1.1], -1.0, {0: 0.0}, ["power-law"])
    size, rule = brick_size(power, 1536)
    assert size == 15 and "no plateau" in rule


@pytest.fixture(scope="module")
def all_rare(tiny_host):
    """Every position counts as rare, so the cache holds every position with a next token."""
    vocab = tiny_host.model.get_output_embeddings().weight.shape[0]
    split = TokenSplit(torch.ones(vocab, dtype=torch.bool), torch.zeros(vocab, dtype=torch.bool))
    corpus = Corpus(Doc(t, "x") for t in TINY_TEXT)
    layer = tiny_host.n_layers - 1
    return corpus, cache_layer(tiny_host, corpus, split, layer), layer


def _full_forward_ce(host, corpus, nmap=None):
    """Per-position next-token loss from the whole model, in the cache's position order."""
    rows = []
    for b in batches(corpus, host.tokenizer, max_len=1 << 20):
        with torch.no_grad():
            if nmap is None:
                logits = host.model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
            else:
                with neuron_map_applied(host.model, host.adapter, nmap):
                    logits = host.model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
        keep = b.attention_mask[:, :-1].bool() & b.attention_mask[:, 1:].bool()
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), b.input_ids[:, 1:], reduction="none")
        rows.append(ce[keep])
    return torch.cat(rows)


def test_replay_equals_applying_the_brick(tiny_host, all_rare):
    corpus, cache, layer = all_rare
    replay = HeadReplay(tiny_host, layer, cache.mean())
    idx = torch.tensor([3, 17, 64, 100])
    got = replay.ablated(cache, [idx, idx[:1]])
    brick = neuron_brick("rt", tiny_host.ref, {layer: idx}, gain=0.0, offset={layer: cache.mean()[idx]})
    nmap = compose_neurons([BrickUse(brick)], tiny_host.n_layers, tiny_host.d_ff)
    base = _full_forward_ce(tiny_host, corpus)
    want = _full_forward_ce(tiny_host, corpus, nmap) - base
    assert got.shape == (2, base.numel())
    assert torch.allclose(got[0], want, atol=2e-5)
    assert got[0].abs().max() > 1e-3  # the ablation does something


def test_linearised_influence_tracks_true_ablation(tiny_host, all_rare):
    _, cache, layer = all_rare
    replay = HeadReplay(tiny_host, layer, cache.mean())
    base, lin = replay.linearised(cache)
    assert torch.allclose(base, _full_forward_ce(tiny_host, Corpus(Doc(t, "x") for t in TINY_TEXT)), atol=1e-5)
    true_rare, _ = class_means(replay.ablated(cache, [torch.tensor([j]) for j in range(tiny_host.d_ff)]), cache.cls)
    assert np.corrcoef(lin[RARE].numpy(), true_rare)[0, 1] > 0.9


def test_mean_is_the_dataset_mean(tiny_host, all_rare):
    corpus, cache, layer = all_rare
    from bricks.profile import ffn_capture

    hs = []
    for doc in corpus:
        ids = tiny_host.tokenizer(doc.text, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad(), ffn_capture(tiny_host, [layer]) as acts:
            tiny_host.model(ids)
        hs.append(acts[layer][0])
    assert torch.allclose(cache.mean(), torch.cat(hs).mean(0), atol=1e-5)


def test_only_the_last_layer_is_replayed(tiny_host, all_rare):
    with pytest.raises(InvalidInputError, match="last layer"):
        HeadReplay(tiny_host, 1, all_rare[1].mean())


def _tiny_corpus():
    return Corpus(Doc(f"{t} {i} {t[::-1][:12]} {i * 7}", lab) for i in range(12)
                  for t, lab in zip(TINY_TEXT, ["en", "fr", "code", "math", "de"], strict=True))


def test_extractor_end_to_end(tiny_host, tmp_path):
    ex = get_extractor("rare_tokens").run(
        tiny_host, _tiny_corpus(), name="rare", confirm_top=24, confirm_positions=256, max_tokens=None,
        eval_tokens=None, max_common_ratio=None, out_dir=str(tmp_path), zones=True, force=True, progress=False)
    (brick,) = ex.bricks
    s = brick.neurons[tiny_host.n_layers - 1]
    assert s.gain.eq(0).all() and s.offset is not None and s.label_means.shape == (5, s.indices.numel())
    m = brick.meta.metrics
    assert m["brick_size"] == s.indices.numel() and len(m["evaluation"]["random"]) == 5
    assert set(m["regimes"]) >= {"names", "breaks", "slopes", "bic"} and "hill_alpha" in m["coordination"]
    assert ex.artifacts["influence_curve"] == tmp_path / "rare-influence.png"
    assert ex.artifacts["influence_curve"].stat().st_size > 1000
    ev = m["evaluation"]
    assert ex.evidence["rare"] == {"rare Δloss": ev["brick"]["rare_dloss"], "common Δloss": ev["brick"]["common_dloss"],
                                   "rare/common": ev["rare_over_common"], "rare/random": ev["rare_over_random"]}
    assert brick.meta.profile["neurons"] and json.dumps(brick.meta.profile)
    assert brick_from_bytes(brick.to_bytes()).meta.metrics == json.loads(json.dumps(m))
    assert brick.meta.params["held_out"] == 0.2 and brick.meta.params["split_seed"] == 0


def test_a_brick_below_the_bars_is_reported_not_published(tiny_host):
    """A random tiny model has no selective rare-token neurons: the bars decide, force overrides."""
    ex = get_extractor("rare-token").run(tiny_host, _tiny_corpus(), name="rare", confirm_top=24, max_tokens=None,
                                         eval_tokens=None, max_common_ratio=None, n_random=2, progress=False)
    assert not ex.artifacts  # no out_dir: no plot written anywhere
    assert set(ex.evidence["rare"]) == {"rare Δloss", "common Δloss", "rare/common", "rare/random"}
    bars = ex.report["rare"]["bars"]
    if all(bars.values()):
        assert len(ex.bricks) == 1 and not ex.skipped
    else:
        assert not ex.bricks and "force=true" in ex.skipped["rare"]


def test_unknown_option_is_an_error(tiny_host):
    with pytest.raises(InvalidInputError, match="confirm_tpo"):
        get_extractor("rare_tokens").run(tiny_host, Corpus([Doc("a b", "x")]), name="r", confirm_tpo=3)
