"""Figures of the analysis metrics. Every function writes to the path its caller gives and returns it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bricks.analysis.regimes import RegimeFit


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Write `fig` as a PNG at `path` (its folder is created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def plot_regimes(influence: np.ndarray, fit: RegimeFit, brick_size: int, path: str | Path,
                 confirmed: np.ndarray | None = None) -> Path:
    """The log-log rank curve of influence with the fitted regimes and the brick's extent (PNG)."""
    plt = pyplot()
    pos = influence[influence > 0]
    ranks = np.arange(1, len(pos) + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.loglog(ranks, pos, ".", ms=3, color="0.5", label="linearised influence (rare tokens)")
    if confirmed is not None and (confirmed > 0).any():
        c = confirmed[confirmed > 0]
        ax.loglog(np.arange(1, len(c) + 1), c, "o", ms=3, mfc="none", color="C3", label="true ablation (re-ranked)")
    edges = [1.0] + fit.breaks + [float(len(pos))]
    for i, name in enumerate(fit.names):
        r = np.geomspace(edges[i], edges[i + 1], 50)
        ax.loglog(r, np.exp(fit.predict(r)), lw=2, label=f"{name} (slope {fit.slopes[i]:.2f})")
    ax.axvspan(0.8, brick_size + 0.2, color="C2", alpha=0.12, label=f"brick ({brick_size} neurons)")
    ax.set_xlabel("rank")
    ax.set_ylabel("loss increase on rare tokens (nats)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
