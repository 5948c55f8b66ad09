"""Encapsulated clusters: planted co-activating groups are recovered; bricks and metrics on the tiny host."""

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from bricks.corpus import Corpus, Doc
from bricks.errors import InvalidInputError
from bricks.extract import get_extractor
from bricks.extract.clusters import (
    aggregation_coefficients,
    balanced_kmeans,
    cluster_neurons,
    cluster_quality,
    coactivation,
    parse_layers,
)
from tests.conftest import TINY_TEXT


def _planted(n_tokens=3000, groups=4, per_group=16, seed=0):
    """Neurons in a group fire together (a shared sparse driver); scales differ 100x across neurons,
    as in real FFN layers, so only a scale-free method finds the groups."""
    gen = torch.Generator().manual_seed(seed)
    drivers = torch.relu(torch.randn(n_tokens, groups, generator=gen) - 0.5)
    truth = np.repeat(np.arange(groups), per_group)
    scale = 10 ** (2 * torch.rand(groups * per_group, generator=gen))
    sign = torch.where(torch.rand(groups * per_group, generator=gen) < 0.5, -1.0, 1.0)
    acts = drivers[:, truth] * scale * sign + 0.3 * scale * torch.randn(n_tokens, groups * per_group, generator=gen)
    return acts, truth


def test_planted_groups_are_recovered():
    acts, truth = _planted()
    labels = cluster_neurons(coactivation(acts.abs()), k=4, seed=0)
    assert adjusted_rand_score(truth, labels) > 0.95
    q = cluster_quality(coactivation(acts.abs()), labels)
    assert all(c["intra"] > 0.2 > c["inter"] for c in q)


def test_balanced_kmeans_respects_the_cap():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (90, 2)), rng.normal(5, 0.1, (10, 2))])  # one dominant blob
    sizes = np.bincount(balanced_kmeans(x, 4, balance=1.0), minlength=4)
    assert sizes.tolist() == [25, 25, 25, 25]
    assert np.bincount(balanced_kmeans(x, 2, balance=None), minlength=2).tolist() in ([90, 10], [10, 90])


def test_aggregation_coefficients_sum_to_one():
    acts, truth = _planted(500)
    w = torch.randn(8, acts.shape[1])
    coef = aggregation_coefficients(acts, w, truth)
    assert coef.sum() == pytest.approx(1.0, abs=1e-5)


def test_parse_layers():
    assert parse_layers("10, 20", 30) == [10, 20] and parse_layers([3], 30) == [3]
    assert parse_layers(None, 30) == [10, 20]
    with pytest.raises(InvalidInputError, match="do not exist"):
        parse_layers("31", 30)
    with pytest.raises(InvalidInputError, match="not integers"):
        parse_layers("ten", 30)


def test_extractor_on_tiny_host(tiny_host):
    docs = [Doc(f"{t} {i}", lab) for i in range(6)
            for t, lab in zip(TINY_TEXT, ["en", "fr", "code", "math", "de"], strict=True)]
    ex = get_extractor("clusters").run(tiny_host, Corpus(docs), name="cl", layers="1,2", k=4, max_bricks=3,
                                       zones=True, force=True, progress=False)
    assert len(ex.bricks) == 3 and len(ex.skipped) == 5
    assert all("only the 3 best" in why for why in ex.skipped.values())
    assert set(ex.report["layers"]) == {1, 2} and len(ex.report["layers"][1]["clusters"]) == 4
    qualities = [b.meta.metrics["quality"] for b in ex.bricks]
    assert qualities == sorted(qualities, reverse=True)
    for b in ex.bricks:
        (layer,) = b.layers()
        s = b.neurons[layer]
        assert b.name.startswith(f"cl.l{layer}.c") and s.gain.eq(0).all()
        assert s.label_means.shape == (5, s.indices.numel()) and b.meta.profile["neurons"]
    sizes = [c["size"] for c in ex.report["layers"][2]["clusters"]]
    assert sum(sizes) == tiny_host.d_ff and max(sizes) <= 2 * tiny_host.d_ff // 4


@pytest.mark.parametrize("progress", [True, False])
def test_clustering_shows_progress(tiny_host, capsys, progress):
    docs = [Doc(f"{t} {i}", "en") for i in range(4) for t in TINY_TEXT]
    get_extractor("clusters").run(tiny_host, Corpus(docs), name="cl", layers="1,2", k=4, progress=progress)
    assert ("clustering: 100%" in capsys.readouterr().err) == progress
