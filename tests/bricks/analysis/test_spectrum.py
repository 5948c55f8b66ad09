"""Spectral statistics and random controls on inputs whose answer is known."""

import numpy as np
import pytest
import torch

from bricks.analysis.controls import random_sets
from bricks.analysis.spectrum import hill_alpha, participation_ratio, weight_spectrum_alpha
from bricks.errors import InvalidInputError


def test_hill_estimator_on_a_known_power_law():
    rng = np.random.default_rng(0)
    x = rng.pareto(2.0, 200_000) + 1.0  # density ~ x^-3
    assert hill_alpha(x, k=5_000) == pytest.approx(3.0, abs=0.1)


def test_participation_ratio_bounds():
    z = torch.randn(5000, 1)
    assert participation_ratio(z.repeat(1, 6) + 1e-4 * torch.randn(5000, 6)) == pytest.approx(1.0, abs=0.01)
    assert participation_ratio(torch.randn(20000, 6)) == pytest.approx(6.0, abs=0.1)


def test_hill_needs_more_values_than_k():
    with pytest.raises(InvalidInputError, match="more than k"):
        hill_alpha(np.array([3.0, 2.0, 1.0]), k=3)


def test_weight_spectrum_alpha_is_finite_for_a_random_group():
    w = torch.randn(64, 32)
    assert np.isfinite(weight_spectrum_alpha(w, torch.arange(16)))


def test_random_sets_are_sorted_same_size_disjoint_and_seeded():
    exclude = torch.tensor([0, 1, 2])
    sets = random_sets(50, 5, 3, exclude, seed=7)
    assert len(sets) == 3 and all(s.numel() == 5 for s in sets)
    assert all(torch.equal(s, s.sort().values) and not set(s.tolist()) & {0, 1, 2} for s in sets)
    assert all(torch.equal(a, b) for a, b in zip(sets, random_sets(50, 5, 3, exclude, seed=7), strict=True))
