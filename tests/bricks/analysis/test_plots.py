"""Plots land exactly where the caller says."""

import numpy as np

from bricks.analysis.plots import plot_regimes
from bricks.analysis.regimes import fit_regimes


def test_plot_regimes_writes_a_png_at_the_given_path(tmp_path):
    ranks = np.arange(1, 200)
    curve = np.exp(-1.0 - 1.2 * np.log(ranks))
    path = plot_regimes(curve, fit_regimes(curve), 5, tmp_path / "sub" / "curve.png", confirmed=curve[:20])
    assert path == tmp_path / "sub" / "curve.png" and path.stat().st_size > 1000
