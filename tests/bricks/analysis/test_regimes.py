"""Regime fits of ranked curves: BIC picks the number of breakpoints, segments are named by steepness."""

import numpy as np
import pytest

from bricks.analysis.regimes import fit_regimes
from bricks.errors import InvalidInputError


def _piecewise(ranks, breaks, slopes, c0=-2.0):
    x, y = np.log(ranks), c0 + slopes[0] * np.log(ranks)
    for k, t in enumerate(np.log(breaks)):
        y = y + (slopes[k + 1] - slopes[k]) * np.maximum(0.0, x - t)
    return y


def test_regime_fit_recovers_three_regimes_by_bic():
    ranks = np.arange(1, 1537)
    rng = np.random.default_rng(0)
    vals = np.exp(_piecewise(ranks, [20, 400], [-0.2, -1.0, -5.0]) + rng.normal(0, 0.03, len(ranks)))
    fit = fit_regimes(np.sort(vals)[::-1])
    assert min(fit.bic, key=fit.bic.get) == 2
    assert fit.names == ["plateau", "power-law", "fast-decay"]
    assert 15 <= fit.breaks[0] <= 27 and 300 <= fit.breaks[1] <= 530
    assert fit.slopes[0] == pytest.approx(-0.2, abs=0.1) and fit.slopes[1] == pytest.approx(-1.0, abs=0.15)
    assert fit.plateau_size == int(fit.breaks[0])


def test_pure_power_law_has_no_plateau():
    ranks = np.arange(1, 1537)
    rng = np.random.default_rng(1)
    vals = np.exp(-1.0 - 1.1 * np.log(ranks) + rng.normal(0, 0.03, len(ranks)))
    fit = fit_regimes(vals)
    assert min(fit.bic, key=fit.bic.get) == 0 and fit.names == ["power-law"] and fit.plateau_size == 0


def test_too_short_a_curve_is_refused():
    with pytest.raises(InvalidInputError, match="too few"):
        fit_regimes(np.array([3.0, 2.0, 1.0, 0.0]))
