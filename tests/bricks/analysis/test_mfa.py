"""NeuroMFA: lattices give their dimension and a zero-width spectrum; the tiny host's report is complete."""

import numpy as np
import pytest
import scipy.sparse as sp

from bricks.analysis.metrics import run_metric
from bricks.analysis.mfa import InitWeights, MFAOptions, Shape, graph_spectrum, sample_network
from bricks.compose import BrickUse
from bricks.errors import InvalidInputError
from tests.conftest import labelled_brick

TORCH_THREADS = 1
FAST = {"samplings": 4, "nodes_per_layer": 8, "centers": 64, "bootstrap": 200, "progress": False}


def torus(side: int, dims: int):
    """The periodic lattice Z_side^dims with unit edges (no boundary: every node sees the same ball)."""
    idx = np.arange(side**dims).reshape((side,) * dims)
    rows = np.concatenate([idx.ravel()] * dims)
    cols = np.concatenate([np.roll(idx, -1, axis=ax).ravel() for ax in range(dims)])
    return sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(side**dims,) * 2).tocsr()


@pytest.mark.parametrize(("side", "dims", "lo", "hi"), [(400, 1, 0.95, 1.05), (80, 2, 1.9, 2.1), (20, 3, 2.7, 3.1)])
def test_a_lattice_is_a_monofractal_of_its_dimension(side, dims, lo, hi):
    s = graph_spectrum(torus(side, dims), MFAOptions(), np.random.default_rng(0))
    assert lo < s.d_0 < hi and lo < s.alpha_0 < hi  # D_0 = -tau(0): the grid's dimension
    assert s.width < 1e-6 and np.allclose(s.f, s.d_0)  # tau(q) = (q - 1) D: one point, f = alpha = D


def test_the_sampled_network_has_the_layered_shape():
    s = Shape(n_layers=3, d_model=16, d_ff=32, n_heads=4, n_kv_heads=2, head_dim=4)
    g = sample_network(InitWeights(0.02, np.random.default_rng(1)), s, 6, np.random.default_rng(0))
    assert g.shape == ((4 * 3 + 1) * 6,) * 2 and (g.data > 0).all()
    assert sp.csgraph.connected_components(g, directed=False)[0] == 1  # a value node always links q/k/v to o


def test_tiny_host_report_has_intervals_emergence_and_a_plot(tiny_host, tmp_path):
    result = run_metric("mfa", tiny_host, plot=tmp_path / "mfa.png", **FAST)
    r = result.report
    for name in ("host", "random_init"):
        lo, hi = r[name]["alpha_0"]["ci95"]
        assert lo <= r[name]["alpha_0"]["mean"] <= hi and len(r[name]["per_sampling"]["width"]) == 4
    assert set(r["emergence"]) == {"mean", "ci95"} and np.isfinite(r["emergence"]["mean"])
    assert result.figures["mfa"].stat().st_size > 1000
    again = run_metric("mfa", tiny_host, **FAST).report
    assert again["host"]["per_sampling"] == r["host"]["per_sampling"]  # seeded


def test_neuron_gains_change_the_weights_it_reads(tiny_host):
    plain = run_metric("mfa", tiny_host, baseline=False, **FAST).report
    brick = labelled_brick(tiny_host, gain=1.0)
    assembly = run_metric("mfa", tiny_host, [BrickUse(brick, gain=50.0)], baseline=False, **FAST).report
    assert assembly["host"]["per_sampling"] != plain["host"]["per_sampling"] and "emergence" not in plain
    raw = run_metric("mfa", tiny_host, baseline=False, fold_norms=False, **FAST).report
    assert raw["host"]["per_sampling"] == plain["host"]["per_sampling"]  # a fresh host's norm scales are 1


def test_bad_options_are_one_error(tiny_host):
    with pytest.raises(InvalidInputError, match="q_min.*less than 0.*max_mass.*above min_mass"):
        run_metric("mfa", tiny_host, q_min=1, min_mass=0.6, max_mass=0.5)
