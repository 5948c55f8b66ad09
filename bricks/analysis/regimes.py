"""Regimes of a ranked curve: a continuous piecewise-linear fit of log(value) against log(rank).

`fit_regimes` tries 0, 1 and 2 breakpoints and keeps the fit with the lowest BIC; its segments are named
by steepness (plateau, power-law, fast-decay). Extractors use it on influence curves to size a brick by
its plateau.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bricks.errors import InvalidInputError


@dataclass
class RegimeFit:
    breaks: list[float]  # breakpoints in rank (not log-rank)
    slopes: list[float]  # log-log slope of each segment
    intercept: float
    bic: dict[int, float]  # number of breakpoints -> BIC
    names: list[str]  # regime name per segment

    def predict(self, ranks: np.ndarray) -> np.ndarray:
        """log(influence) predicted at the given ranks."""
        x = np.log(ranks)
        y = self.intercept + self.slopes[0] * x
        for k, t in enumerate(np.log(self.breaks)):
            y = y + (self.slopes[k + 1] - self.slopes[k]) * np.maximum(0.0, x - t)
        return y

    @property
    def plateau_size(self) -> int:
        """Neurons in the plateau (0 when the first segment is not a plateau)."""
        return int(math.floor(self.breaks[0])) if self.names and self.names[0] == "plateau" else 0


def _hinge_fit(x: np.ndarray, y: np.ndarray, knots: tuple[float, ...]) -> tuple[float, np.ndarray]:
    cols = [np.ones_like(x), x] + [np.maximum(0.0, x - t) for t in knots]
    design = np.stack(cols, axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(((design @ coef - y) ** 2).sum()), coef


def _best_knots(x: np.ndarray, y: np.ndarray, n_breaks: int, min_pts: int) -> tuple[float, tuple, np.ndarray]:
    cands = x[min_pts: len(x) - min_pts]
    best = (math.inf, (), np.zeros(2))
    if n_breaks == 0:
        rss, coef = _hinge_fit(x, y, ())
        return rss, (), coef
    for i, t1 in enumerate(cands):
        if n_breaks == 1:
            rss, coef = _hinge_fit(x, y, (t1,))
            best = min(best, (rss, (t1,), coef), key=lambda b: b[0])
            continue
        for t2 in cands[i + min_pts:]:
            rss, coef = _hinge_fit(x, y, (t1, t2))
            best = min(best, (rss, (t1, t2), coef), key=lambda b: b[0])
    return best


def fit_regimes(influence: np.ndarray, max_breaks: int = 2, n_points: int = 80) -> RegimeFit:
    """Piecewise-linear fit of log(influence) vs log(rank) with 0..max_breaks breakpoints, chosen by BIC.

    `influence` is sorted in decreasing order; non-positive values end the curve (no logarithm). The
    curve is resampled at log-spaced ranks so the few top ranks weigh as much as the long tail.
    """
    vals = np.asarray(influence, dtype=np.float64)
    vals = vals[: int(np.argmax(vals <= 0)) if (vals <= 0).any() else len(vals)]
    if len(vals) < 8:
        raise InvalidInputError(f"only {len(vals)} neurons have a positive influence: too few to fit regimes",
                                "use a larger corpus (more rare-token positions)")
    ranks = np.unique(np.round(np.geomspace(1, len(vals), n_points)).astype(int))
    x, y = np.log(ranks), np.log(vals[ranks - 1])
    n, fits, bic = len(x), {}, {}
    for k in range(max_breaks + 1):
        rss, knots, coef = _best_knots(x, y, k, min_pts=2)
        fits[k] = (knots, coef)
        bic[k] = n * math.log(max(rss, 1e-300) / n) + (2 + 2 * k) * math.log(n)
    k = min(bic, key=bic.get)
    knots, coef = fits[k]
    slopes = list(np.cumsum(coef[1:]))
    return RegimeFit([float(np.exp(t)) for t in knots], [float(s) for s in slopes], float(coef[0]),
                     bic, _regime_names(slopes))


def _regime_names(slopes: list[float]) -> list[str]:
    """Name segments by steepness: a first segment flatter than the next is the plateau."""
    if len(slopes) == 1:
        return ["power-law"]
    if len(slopes) == 2:
        return ["plateau", "power-law"] if slopes[0] > slopes[1] else ["power-law", "fast-decay"]
    first = "plateau" if slopes[0] > slopes[1] else "power-law"
    return [first, "power-law" if first == "plateau" else "power-law-2", "fast-decay"]
