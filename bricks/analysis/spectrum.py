"""Spectral statistics of a neuron group: how many directions its activations span, how heavy its tails are."""

from __future__ import annotations

import numpy as np
import torch

from bricks.errors import InvalidInputError


def participation_ratio(acts: torch.Tensor, standardize: bool = True) -> float:
    """Effective dimensionality (sum lambda)^2 / sum lambda^2 of acts [N, r].

    With `standardize` the spectrum is the correlation matrix's: a neuron with a huge variance (some
    hosts have a few) would otherwise make any group containing it look one-dimensional.
    """
    x = acts.double() - acts.double().mean(0)
    if standardize:
        x = x / x.std(0).clamp(min=1e-12)
    lam = torch.linalg.eigvalsh(x.T @ x / max(x.shape[0] - 1, 1)).clamp(min=0)
    return float(lam.sum() ** 2 / (lam.pow(2).sum() + 1e-300))


def hill_alpha(values: np.ndarray, k: int | None = None) -> float:
    """Hill estimate of alpha for a density p(x) ~ x^-alpha from the k largest values (default: half)."""
    v = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    v = v[v > 0]
    k = max(2, len(v) // 2) if k is None else k
    if len(v) <= k:
        raise InvalidInputError(f"Hill estimator needs more than k={k} positive values, got {len(v)}",
                                "use a smaller k or a larger group")
    xi = np.mean(np.log(v[:k] / v[k]))
    return float(1.0 + 1.0 / xi)


def weight_spectrum_alpha(w_down: torch.Tensor, idx: torch.Tensor) -> float:
    """Hill alpha of the eigenvalues of the correlation matrix of the group's down_proj columns
    (alpha of p(lambda) ~ lambda^-alpha, the heavy-tailed self-regularisation convention)."""
    corr = torch.corrcoef(w_down[:, idx].double().T)
    return hill_alpha(torch.linalg.eigvalsh(corr).numpy())
