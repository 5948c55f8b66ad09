"""Encapsulated clusters (neuron encapsulation, arXiv 2502.07124): neurons that fire together, per layer.

The paper treats groups of neurons that co-activate as modules, each feeding the layer's output
through its own aggregation coefficient. Here, per chosen layer:

1. Co-activation graph: Pearson correlation of the neurons' firing strength |h| over a token sample,
   edge weight max(correlation, 0). |h|, not h: in a gated FFN the sign of h comes from the up
   projection and says which way the neuron writes, not whether it fires.
2. Spectral embedding of that graph (top-k eigenvectors of D^-1/2 W D^-1/2, rows normalised).
3. k-means in the embedding with a size cap: no cluster above `balance` x n/k neurons
   (balance=1 is strictly balanced k-means).

Why this choice: k-means on raw activation patterns clusters by activation *scale* (a few neurons
have a far larger variance than the median), giving one giant cluster and a few tiny ones: neither is
a module. The spectral embedding of the co-activation graph is scale-free and groups neurons connected
through chains of co-firing; the size cap (default 2x) only guards against one cluster absorbing the
layer.

FFN co-activation is weak at the scale of a whole layer, and tighter at smaller clusters: so the
default is k=32 per layer and only the `max_bricks` tightest clusters are published; a cluster with
quality <= 0 is never published unless `force` (the report lists every cluster).

Each published cluster becomes a `neurons` brick. Stored gain: `gain` (default 0.0: the module switched
off, the test of what it does); the paper's aggregation coefficient is reported, not stored, as
`aggregation_coefficient` = E[<y_c, y>] / E[|y|^2], the share of the layer's FFN output y that the
cluster's contribution y_c = W_down[:, c] h_c carries (the coefficients of a layer's clusters sum to 1;
an assembly that wants to rescale the module uses the brick with its own gain). The clusters' per-label
mean activations are kept as evidence, so a steering variant can be made from the brick.

Metrics per cluster: `intra` (mean co-activation between its neurons), `inter` (between its neurons
and the rest of the layer), `quality` = intra - inter (a random partition scores ~0), the effective
dimensionality of its activations (participation ratio of their correlation spectrum) against random
same-size groups, the aggregation coefficient, and each label's mean |h| relative to the sample's
(which label drives the cluster).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator
from tqdm.auto import tqdm

from bricks.analysis.spectrum import participation_ratio
from bricks.corpus import Corpus
from bricks.errors import InvalidInputError
from bricks.extract import Extraction, extractor
from bricks.extract.options import ExtractorOptions, comma_list
from bricks.extract.zones import (
    TokenActivations,
    attach_profile,
    brick_zone_profile,
    collect_activations,
    token_slices,
)
from bricks.format import Brick
from bricks.kinds.neurons import neuron_brick


# --- clustering ------------------------------------------------------------------------------------
def coactivation(acts: torch.Tensor) -> torch.Tensor:
    """Pearson correlation [n, n] of neuron activations acts [N, n] (constant neurons correlate 0)."""
    x = acts.double() - acts.double().mean(0)
    x = x / x.norm(dim=0).clamp(min=1e-12)
    return (x.T @ x).float()


def spectral_embedding(corr: torch.Tensor, k: int) -> np.ndarray:
    """Rows of the top-k eigenvectors of the normalised co-activation graph, normalised to unit length."""
    w = corr.double().clamp(min=0)
    w.fill_diagonal_(0)
    d = w.sum(1).clamp(min=1e-12).rsqrt()
    _, vec = torch.linalg.eigh(d[:, None] * w * d[None, :])
    emb = vec[:, -k:].numpy()
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _balanced_assign(dist: np.ndarray, cap: int) -> np.ndarray:
    """Each point to its nearest cluster with room; points with the most to lose choose first."""
    nearest = dist.argmin(1)
    if np.bincount(nearest, minlength=dist.shape[1]).max() <= cap:
        return nearest
    n, k = dist.shape
    srt = np.sort(dist, axis=1)
    order = np.argsort(srt[:, 0] - srt[:, min(1, k - 1)])  # most negative margin = clearest preference
    room = np.full(k, cap)
    out = np.empty(n, dtype=np.int64)
    for i in order:
        c = next(c for c in np.argsort(dist[i]) if room[c] > 0)
        out[i] = c
        room[c] -= 1
    return out


def _kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centers = [x[rng.integers(len(x))]]
    for _ in range(k - 1):
        d2 = np.min(((x[:, None, :] - np.array(centers)[None]) ** 2).sum(-1), axis=1)
        p = d2 / d2.sum() if d2.sum() > 0 else None  # all points on the centers: any will do
        centers.append(x[rng.choice(len(x), p=p)])
    return np.array(centers)


def balanced_kmeans(x: np.ndarray, k: int, balance: float | None = 2.0, seed: int = 0, n_init: int = 4,
                    max_iter: int = 50) -> np.ndarray:
    """k-means whose clusters hold at most ceil(balance * n / k) points (None: unconstrained)."""
    n = len(x)
    cap = n if balance is None else max(math.ceil(balance * n / k), math.ceil(n / k))
    rng = np.random.default_rng(seed)
    best, best_inertia = np.zeros(n, dtype=np.int64), math.inf
    for _ in range(n_init):
        centers, labels = _kmeanspp(x, k, rng), None
        for _ in range(max_iter):
            dist = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
            new = _balanced_assign(dist, cap)
            if labels is not None and np.array_equal(new, labels):
                break
            labels = new
            centers = np.array([x[labels == c].mean(0) if (labels == c).any() else centers[c] for c in range(k)])
        inertia = float(((x - centers[labels]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def cluster_neurons(corr: torch.Tensor, k: int, balance: float | None = 2.0, seed: int = 0) -> np.ndarray:
    """Cluster index per neuron from their co-activation matrix [n, n] (see the module docstring)."""
    if not 2 <= k <= corr.shape[0] // 2:
        raise InvalidInputError(f"k={k} clusters for {corr.shape[0]} neurons", "use 2 <= k <= half the layer width")
    labels = balanced_kmeans(spectral_embedding(corr, k), k, balance, seed)
    return np.unique(labels, return_inverse=True)[1].reshape(-1)  # renumber 0..k'-1 if a cluster emptied


# --- cluster statistics -----------------------------------------------------------------------------
def cluster_quality(corr: torch.Tensor, labels: np.ndarray) -> list[dict[str, float]]:
    """Per cluster: mean co-activation within it (off-diagonal) and with the rest of the layer."""
    c = corr.double().numpy()
    out = []
    for j in range(int(labels.max()) + 1):
        inside = labels == j
        m = int(inside.sum())
        block = c[np.ix_(inside, inside)]
        intra = (block.sum() - np.trace(block)) / max(m * (m - 1), 1)
        inter = c[np.ix_(inside, ~inside)].mean() if (~inside).any() else 0.0
        out.append({"size": m, "intra": round(float(intra), 4), "inter": round(float(inter), 4),
                    "quality": round(float(intra - inter), 4)})
    return out


def aggregation_coefficients(acts: torch.Tensor, w_down: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """E[<y_c, y>] / E[|y|^2] per cluster c (y = W_down h; the coefficients sum to 1)."""
    y = acts @ w_down.T
    total = float((y * y).sum())
    out = []
    for j in range(int(labels.max()) + 1):
        idx = torch.from_numpy(np.flatnonzero(labels == j))
        out.append(float((acts[:, idx] @ w_down[:, idx].T * y).sum()) / max(total, 1e-30))
    return np.array(out)


def label_drive(ta: TokenActivations, acts: torch.Tensor, idx: np.ndarray) -> dict[str, float]:
    """Per label, the cluster's mean |h| relative to its mean |h| over the whole sample."""
    a = acts[:, torch.from_numpy(idx)].abs().mean(1)
    overall = float(a.mean()) or 1e-30
    return {lab: round(float(a[ta.label_ids == i].mean()) / overall, 3)
            for i, lab in enumerate(ta.labels) if (ta.label_ids == i).any()}


def _random_pr(acts: torch.Tensor, size: int, n: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    return float(np.mean([participation_ratio(acts[:, torch.randperm(acts.shape[1], generator=gen)[:size]])
                          for _ in range(n)]))


@dataclass
class LayerClusters:
    layer: int
    labels: np.ndarray  # cluster per neuron
    stats: list[dict[str, Any]]  # per cluster
    quality_random: float  # intra - inter of a random partition with the same sizes (about 0)

    def summary(self) -> dict[str, Any]:
        q = [s["quality"] for s in self.stats]
        return {"k": len(self.stats), "mean_quality": round(float(np.mean(q)), 4),
                "mean_intra": round(float(np.mean([s["intra"] for s in self.stats])), 4),
                "mean_inter": round(float(np.mean([s["inter"] for s in self.stats])), 4),
                "random_partition_quality": round(self.quality_random, 4),
                "sizes": [s["size"] for s in self.stats]}


def analyse_layer(ta: TokenActivations, layer: int, w_down: torch.Tensor, k: int, balance: float | None,
                  seed: int = 0, n_random: int = 5) -> LayerClusters:
    """Cluster one layer's neurons and measure every cluster."""
    acts = ta.acts[layer]
    corr = coactivation(acts.abs())
    labels = cluster_neurons(corr, k, balance, seed)
    stats = cluster_quality(corr, labels)
    coef = aggregation_coefficients(acts, w_down, labels)
    for j, s in enumerate(stats):
        idx = np.flatnonzero(labels == j)
        s.update({"cluster": j, "aggregation_coefficient": round(float(coef[j]), 4),
                  "effective_dim": round(participation_ratio(acts[:, torch.from_numpy(idx)]), 3),
                  "effective_dim_random": round(_random_pr(acts, len(idx), n_random, seed + j), 3),
                  "label_drive": label_drive(ta, acts, idx)})
    shuffled = np.random.default_rng(seed).permutation(labels)
    q_rand = float(np.mean([s["quality"] for s in cluster_quality(corr, shuffled)]))
    return LayerClusters(layer, labels, stats, q_rand)


# --- the extractor ---------------------------------------------------------------------------------
def parse_layers(layers: Any, n_layers: int) -> list[int]:
    """Layers from a list, a '10,20' string, or None (two layers: a third and two thirds of the depth)."""
    if layers is None:
        return sorted({n_layers // 3, (2 * n_layers) // 3})
    items = layers.split(",") if isinstance(layers, str) else list(layers)
    try:
        out = sorted({int(x) for x in items if str(x).strip()})
    except ValueError:
        raise InvalidInputError(f"layers {layers!r} are not integers", "pass e.g. --layers 10,20") from None
    bad = [x for x in out if not 0 <= x < n_layers]
    if bad or not out:
        raise InvalidInputError(f"layers {bad or layers} do not exist (the host has {n_layers})",
                                f"use layers in 0..{n_layers - 1}")
    return out


class ClusterOptions(ExtractorOptions):
    """Options of `extract_clusters`."""

    layers: list[int] | None = Field(None, description="Layers to cluster, e.g. 10,20 (default: a third and "
                                                        "two thirds of the depth).")
    k: int = Field(32, description="Clusters per layer.")
    balance: float | None = Field(2.0, description="Cluster size cap as a multiple of n/k (1: strictly balanced; "
                                                   "none: no cap).")
    max_bricks: int | None = Field(8, description="Publish at most this many clusters, the highest-quality ones "
                                                  "(none: all).")
    gain: float = Field(0.0, description="The gain each brick stores (0: the module switched off).")
    max_tokens: int | None = Field(16_000, description="Tokens of the corpus sampled for co-activation (none: all).")
    n_random: int = Field(5, ge=0, description="Random same-size groups each cluster's effective dimension is "
                                               "compared with.")
    zones: bool = Field(False, description="Attach an activation-zone profile to each brick.")
    force: bool = Field(False, description="Also publish clusters that co-activate no more inside than outside.")
    seed: int = Field(0, description="Seed of the clustering and the random groups.")

    _layers = field_validator("layers", mode="before")(comma_list)


@extractor("clusters", reference_url="https://arxiv.org/abs/2502.07124", options=ClusterOptions)
def extract_clusters(host, corpus: Corpus, options: ClusterOptions | None = None, *, name: str,
                     out_dir: Path | None = None) -> Extraction:
    """Encapsulated clusters: co-activating neuron groups per layer, one brick per cluster (no plots)."""
    opt = options or ClusterOptions()
    layers = parse_layers(opt.layers, host.n_layers)
    sample = token_slices(corpus, host.tokenizer, opt.max_tokens, seed=opt.seed)
    ta = collect_activations(host, sample, dict.fromkeys(layers), progress=opt.progress)
    results = []
    for layer in tqdm(layers, desc="clustering", unit="layer", disable=not opt.progress):
        w_down = host.adapter.ffn_weights(host.model, layer)[2].detach().float()
        results.append(analyse_layer(ta, layer, w_down, int(opt.k), opt.balance, opt.seed, opt.n_random))
    ranked = sorted(((r, s) for r in results for s in r.stats), key=lambda rs: -rs[1]["quality"])
    cohesive = [rs for rs in ranked if rs[1]["quality"] > 0 or opt.force]
    keep = cohesive if opt.max_bricks is None else cohesive[: int(opt.max_bricks)]
    bricks = [_cluster_brick(host, name, r, s, ta, corpus, opt) for r, s in keep]
    if opt.zones:  # from the activations already collected: no second pass over the corpus
        bricks = [attach_profile(b, brick_zone_profile(ta, b, host.tokenizer)) for b in bricks]
    kept = {id(s) for _, s in keep}
    skipped = {_brick_name(name, r.layer, s["cluster"]): _why_skipped(s, len(keep)) for r, s in ranked
               if id(s) not in kept}
    report = {"layers": {r.layer: {**r.summary(), "clusters": r.stats} for r in results}, "tokens": ta.n_tokens}
    evidence = {_brick_name(name, r.layer, s["cluster"]): {"quality": s["quality"],
                                                           "output share": s["aggregation_coefficient"]}
                for r, s in ranked}
    return Extraction(bricks, report=report, skipped=skipped, evidence=evidence)


def _why_skipped(stats: dict, n_published: int) -> str:
    if stats["quality"] <= 0:
        return f"not a module: co-activates no more inside than outside (quality {stats['quality']})"
    return f"quality {stats['quality']}: only the {n_published} best clusters are published (max_bricks)"


def _brick_name(name: str, layer: int, cluster: int) -> str:
    return f"{name}.l{layer}.c{cluster}"


def _cluster_brick(host, name: str, res: LayerClusters, stats: dict, ta: TokenActivations, corpus: Corpus,
                   opt: ClusterOptions) -> Brick:
    idx = torch.from_numpy(np.flatnonzero(res.labels == stats["cluster"]))
    params = opt.params()
    params.update(layers=parse_layers(opt.layers, host.n_layers), corpus_digest=corpus.digest())
    brick = neuron_brick(
        _brick_name(name, res.layer, stats["cluster"]), host.ref, {res.layer: idx}, gain=float(opt.gain),
        method="clusters", params=params, metrics={**stats, "layer": res.layer, "layer_summary": res.summary()},
        labels=ta.labels,
        description=(f"encapsulated cluster {stats['cluster']} of layer {res.layer}: {idx.numel()} co-activating "
                     f"neurons (intra {stats['intra']:.3f} vs inter {stats['inter']:.3f}), carrying "
                     f"{stats['aggregation_coefficient']:.1%} of the layer's FFN output; stored gain {opt.gain}"))
    acts = ta.acts[res.layer][:, idx]
    brick.neurons[res.layer].label_means = torch.stack(
        [acts[ta.label_ids == i].mean(0) if (ta.label_ids == i).any() else torch.zeros(idx.numel())
         for i in range(len(ta.labels))])
    brick.validate()
    return brick
