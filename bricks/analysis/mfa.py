"""`mfa`: the multifractal spectrum of a host's neuron interaction network (NeuroMFA, arXiv 2402.09099).

The neuron interaction network (NIN) is read from the weights. Per decoder layer, four layers of nodes in the
order a token's residual stream meets them:

    residual (d) -> q/k/v outputs (n_heads*hd + 2*n_kv*hd) -> attention output into the residual (d)
      -> gate/up neurons (2*d_ff) -> the next layer's residual (down_proj)

with an edge per weight (the RMSNorm scale folded into the matrix that reads the normed input) and edge
distance 1/|w|. A sampling draws `nodes_per_layer` nodes of every node layer (the q/k/v layer stratified so
values are always drawn: only they reach o_proj) and keeps the edges among them: the "sampled NIN".

Sandbox multifractal analysis on it: from `centers` random nodes, shortest-path distances (scipy Dijkstra);
N_i(r) = nodes within distance r of centre i; Z_q(r) = mean_i (N_i(r)/N)^(q-1) ~ (r/d)^tau(q) with d the
largest distance, tau(q) the slope of ln Z_q against ln(r/d) over the radii whose mean mass N_i/N lies in
[min_mass, max_mass]; alpha(q) = dtau/dq and f(alpha) = q*alpha - tau(q) (Legendre transform). For a
monofractal of dimension D (a lattice) tau(q) = (q-1)D, so alpha = f = D for every q and the width is 0.
Reported: alpha_0 (alpha at q = 0, where f peaks), the width alpha_max - alpha_min, and the degree of
emergence against a randomly initialised model of the same config,
E = (w / w_init) * log(alpha_0_init / alpha_0) (wider spectrum and lower alpha_0 than at initialisation:
more heterogeneous and more regular), each with a bootstrap interval over samplings.

Where brickwork departs from the paper (its method read from the paper's text as far as we could, some of it
from memory): the paper builds the NIN from consecutive linear layers; brickwork's transformer path is the one
above, with the attention read as its value path only (q/k nodes are leaves: they act through attention
scores, not a weight to o_proj; a value neuron's weight to an o_proj row is the sum of |W_o| over the query
heads sharing that kv head), gate and up as separate nodes that both feed down_proj (the gating product has
no weight of its own), the identity skip connections left out (they are not weights), RMSNorm scales folded
in. The random model is not built: its sampled blocks are drawn from the same init distribution HF uses
(normal(0, initializer_range), norm scales 1), which is the same in distribution and needs no 135M-parameter
model. The graph is undirected, the centres a random sample (sandbox) rather than every node, the radii
geometric between the distances at which the mean mass is min_mass and max_mass (the scaling range is chosen
by mass, not by eye), and the emergence formula is as we read it — compare
brickwork's own numbers with each other.

Measured on SmolLM2-135M (bench/bench_metrics.py): with the norm scales folded in (the default), alpha_0 is
bimodal over samplings (near 2 or near 0.2): a few residual dimensions have RMSNorm scales ~2e-4, their edges
are 1000x longer, and a sampling that draws them keeps isolated nodes over the scaling range. With
`fold_norms=false` the same samplings gave alpha_0 between 1.96 and 2.77.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from tqdm.auto import tqdm

from bricks.analysis.metrics import MetricOptions, MetricResult, metric
from bricks.analysis.plots import pyplot, save_figure
from bricks.errors import InvalidInputError

NOTE = ("NeuroMFA (arXiv 2402.09099) as brickwork reads it: the transformer's network path, the random-init "
        "baseline drawn from HF's init distribution and the emergence formula are brickwork's choices (see "
        "bricks/analysis/mfa.py); compare runs of this metric with each other")


class MFAOptions(MetricOptions):
    samplings: int = Field(10, ge=1, description="Sampled networks per model (the bootstrap resamples them).")
    nodes_per_layer: int = Field(32, ge=2, description="Nodes drawn from every node layer of a sampling.")
    centers: int = Field(256, ge=1, description="Sandbox centres per sampling (shortest paths run from these).")
    q_min: float = Field(-5.0, lt=0, description="Smallest moment order q (below 0: alpha_0 is at q = 0).")
    q_max: float = Field(5.0, gt=0, description="Largest moment order q.")
    q_step: float = Field(0.5, gt=0, description="Step between moment orders (q = 0 is always one of them).")
    radii: int = Field(24, ge=4, description="Radii, geometric over the scaling range.")
    min_mass: float = Field(0.01, gt=0, lt=1, description="Scaling range: smallest mean mass N_i(r)/N fitted.")
    max_mass: float = Field(0.5, gt=0, le=1, description="Scaling range: largest mean mass N_i(r)/N fitted.")
    min_weight: float = Field(0.0, ge=0, description="Edges with |w| at or below this are left out.")
    fold_norms: bool = Field(True, description="Fold the RMSNorm scales into the matrices that read the normed "
                             "input (false: the raw projection weights).")
    baseline: bool = Field(True, description="Also measure a randomly initialised model of the same config "
                           "(the degree of emergence needs it).")
    bootstrap: int = Field(1000, ge=10, description="Bootstrap resamples of the samplings (95% intervals).")
    seed: int = Field(0, description="Seed of the samplings, centres and the random model.")

    # A field validator, not a model validator: the one-message error names the option.
    @field_validator("max_mass")
    @classmethod
    def _mass_range(cls, v: float, info: ValidationInfo) -> float:
        if "min_mass" in info.data and not info.data["min_mass"] < v:
            raise ValueError(f"max_mass ({v}) must be above min_mass ({info.data['min_mass']})")
        return v

    def qs(self) -> np.ndarray:
        neg = -np.arange(0, -self.q_min + 1e-9, self.q_step)[::-1]
        pos = np.arange(self.q_step, self.q_max + 1e-9, self.q_step)
        return np.concatenate([neg, pos])


@dataclass
class Spectrum:
    """One network's multifractal spectrum."""

    q: np.ndarray
    tau: np.ndarray
    alpha: np.ndarray
    f: np.ndarray
    fitted_radii: int

    @property
    def alpha_0(self) -> float:
        return float(self.alpha[np.argmin(np.abs(self.q))])

    @property
    def width(self) -> float:
        return float(self.alpha.max() - self.alpha.min())

    @property
    def d_0(self) -> float:
        """The box-counting-like dimension -tau(0) = f(alpha_0)."""
        return float(-self.tau[np.argmin(np.abs(self.q))])


# --- the multifractal spectrum of a weighted graph --------------------------------------------------------
def graph_spectrum(graph, options: MFAOptions, rng: np.random.Generator) -> Spectrum:
    """Sandbox multifractal spectrum of a sparse undirected graph whose entries are edge distances."""
    n = graph.shape[0]
    centres = rng.choice(n, size=min(options.centers, n), replace=False)
    dist = dijkstra(graph, directed=False, indices=centres)
    reached = dist[np.isfinite(dist)]
    if not (reached > 0).any():
        raise InvalidInputError("mfa: the sampled network has no edges", "lower --opt min_weight")
    # The mean mass at radius r is the share of all centre-node distances <= r (self included), so the radii
    # whose mean mass spans [min_mass, max_mass] lie between those quantiles of the distances.
    lo, hi = np.quantile(reached, [options.min_mass, options.max_mass])
    lo = max(lo, reached[reached > 0].min())
    radii = np.unique(np.geomspace(lo, max(hi, lo), options.radii))
    mass = np.stack([(dist <= r).sum(axis=1) for r in radii], axis=1) / n  # [centres, radii]
    if len(radii) < 3 or np.ptp(np.log(mass.mean(axis=0))) == 0:
        raise InvalidInputError(f"mfa: the network has no scaling range between mass {options.min_mass} and "
                                f"{options.max_mass}", "widen --opt min_mass / max_mass, or sample more nodes")
    q = options.qs()
    log_r = np.log(radii / reached.max())
    log_z = np.log(np.mean(mass[None] ** (q[:, None, None] - 1), axis=1))  # [q, radii]
    x = log_r - log_r.mean()
    tau = (log_z - log_z.mean(axis=1, keepdims=True)) @ x / (x @ x)
    alpha = np.gradient(tau, q)
    return Spectrum(q=q, tau=tau, alpha=alpha, f=q * alpha - tau, fitted_radii=len(radii))


# --- the sampled neuron interaction network ---------------------------------------------------------------
class HostWeights:
    """Sub-blocks of the host's weights (fp32 numpy), with an assembly's neuron gains on down_proj columns."""

    def __init__(self, host, gains: torch.Tensor | None = None, fold_norms: bool = True):
        self.layers = host.adapter.layers(host.model)
        self.gains = gains
        self.fold_norms = fold_norms

    def block(self, layer: int, name: str, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        mod = self.layers[layer]
        if name == "qkv":
            att = mod.self_attn
            w = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight])
        else:
            w = {"o": mod.self_attn.o_proj.weight, "down": mod.mlp.down_proj.weight,
                 "gate_up": torch.cat([mod.mlp.gate_proj.weight, mod.mlp.up_proj.weight])}[name]
        out = w.detach()[torch.as_tensor(rows)][:, torch.as_tensor(cols)].float()
        if name == "down" and self.gains is not None:
            out = out * self.gains[layer, torch.as_tensor(cols)]
        return out.numpy()

    def norm(self, layer: int, which: str, idx: np.ndarray) -> np.ndarray:
        if not self.fold_norms:
            return np.ones(len(idx), dtype=np.float32)
        mod = self.layers[layer]
        ln = mod.input_layernorm if which == "attn" else mod.post_attention_layernorm
        return ln.weight.detach()[torch.as_tensor(idx)].float().numpy()


class InitWeights:
    """Sub-blocks of a randomly initialised model of the same config, drawn directly from HF's init
    distribution (normal(0, initializer_range) weights, norm scales 1)."""

    def __init__(self, std: float, rng: np.random.Generator):
        self.std = std
        self.rng = rng

    def block(self, layer: int, name: str, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.rng.normal(0.0, self.std, size=(len(rows), len(cols))).astype(np.float32)

    def norm(self, layer: int, which: str, idx: np.ndarray) -> np.ndarray:
        return np.ones(len(idx), dtype=np.float32)


@dataclass(frozen=True)
class Shape:
    n_layers: int
    d_model: int
    d_ff: int
    n_heads: int
    n_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, ref) -> Shape:
        return cls(ref.n_layers, ref.d_model, ref.d_ff, ref.n_heads, ref.n_kv_heads, ref.head_dim)

    @property
    def q_size(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_kv_heads * self.head_dim


def _draw(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    return np.sort(rng.choice(size, size=min(n, size), replace=False))


def _draw_qkv(rng: np.random.Generator, s: Shape, n: int) -> np.ndarray:
    """q/k/v output nodes in proportion to their sizes, at least one value node (the only path to o_proj)."""
    n_v = max(1, round(n * s.kv_size / (s.q_size + 2 * s.kv_size)))
    n_k = max(0, round(n * s.kv_size / (s.q_size + 2 * s.kv_size)))
    n_q = max(0, n - n_v - n_k)
    q = _draw(rng, s.q_size, n_q)
    k = s.q_size + _draw(rng, s.kv_size, n_k)
    v = s.q_size + s.kv_size + _draw(rng, s.kv_size, n_v)
    return np.concatenate([q, k, v])


def sample_network(weights, s: Shape, n: int, rng: np.random.Generator, min_weight: float = 0.0):
    """One sampled NIN as a sparse matrix of edge distances 1/|w| (node layers as in the module docstring)."""
    node_layers = []  # sampled indices of each node layer, in order
    blocks = []  # (from node layer, to node layer, |w| [to, from])
    resid = _draw(rng, s.d_model, n)
    for layer in range(s.n_layers):
        qkv, o_rows = _draw_qkv(rng, s, n), _draw(rng, s.d_model, n)
        ffn, nxt = _draw(rng, 2 * s.d_ff, n), _draw(rng, s.d_model, n)
        base = len(node_layers)
        node_layers += [resid, qkv, o_rows, ffn]
        w_in = weights.block(layer, "qkv", qkv, resid) * weights.norm(layer, "attn", resid)
        blocks.append((base, base + 1, np.abs(w_in)))
        blocks.append((base + 1, base + 2, _value_to_o(weights, layer, s, qkv, o_rows)))
        w_ffn = weights.block(layer, "gate_up", ffn, o_rows) * weights.norm(layer, "ffn", o_rows)
        blocks.append((base + 2, base + 3, np.abs(w_ffn)))
        blocks.append((base + 3, base + 4, np.abs(weights.block(layer, "down", nxt, ffn % s.d_ff))))
        resid = nxt
    node_layers.append(resid)
    offsets = np.cumsum([0] + [len(x) for x in node_layers])
    rows, cols, data = [], [], []
    for src, dst, w in blocks:
        to, frm = np.nonzero(w > min_weight)
        rows.append(offsets[src] + frm)
        cols.append(offsets[dst] + to)
        data.append(1.0 / w[to, frm])
    n_nodes = int(offsets[-1])
    return coo_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n_nodes, n_nodes)).tocsr()


def _value_to_o(weights, layer: int, s: Shape, qkv: np.ndarray, o_rows: np.ndarray) -> np.ndarray:
    """|w| from each sampled q/k/v node to each sampled o_proj output: zero for q and k, and for a value neuron
    the sum of |W_o| over the o_proj columns of the query heads that read its kv head."""
    out = np.zeros((len(o_rows), len(qkv)), dtype=np.float32)
    is_v = qkv >= s.q_size + s.kv_size
    v = qkv[is_v] - s.q_size - s.kv_size
    group = s.n_heads // s.n_kv_heads
    heads = (v // s.head_dim)[:, None] * group + np.arange(group)[None]  # [n_v, group] query heads
    cols = (heads * s.head_dim + (v % s.head_dim)[:, None]).reshape(-1)
    w = np.abs(weights.block(layer, "o", o_rows, cols)).reshape(len(o_rows), len(v), group)
    out[:, is_v] = w.sum(axis=2)
    return out


# --- the metric -------------------------------------------------------------------------------------------
@metric("mfa", reference_url="https://arxiv.org/abs/2402.09099", options=MFAOptions)
def measure_mfa(host, uses: list, options: MFAOptions, plot: Path | None = None) -> MetricResult:
    """Multifractal spectrum of the weights' neuron interaction network (NeuroMFA): alpha_0, width, emergence."""
    shape = Shape.of(host.ref)
    models = {"host": HostWeights(host, _assembly_gains(host, uses), options.fold_norms)}
    if options.baseline:
        std = float(getattr(host.model.config, "initializer_range", 0.02))
        models["random_init"] = InitWeights(std, np.random.default_rng(options.seed + 1))
    bar = tqdm(total=options.samplings * len(models), desc="mfa", unit="sampling", disable=not options.progress)
    spectra, seconds = {}, {}
    for name, weights in models.items():
        rng = np.random.default_rng(options.seed)  # the same node draws for both models
        start = time.perf_counter()
        spectra[name] = []
        for _ in range(options.samplings):
            graph = sample_network(weights, shape, options.nodes_per_layer, rng, options.min_weight)
            spectra[name].append(graph_spectrum(graph, options, rng))
            bar.update()
        seconds[name] = time.perf_counter() - start
    bar.close()
    report = mfa_report(host, uses, options, spectra, seconds)
    figures = {} if plot is None else {"mfa": plot_spectra(report, spectra, plot)}
    return MetricResult(report, figures)


def _assembly_gains(host, uses: list) -> torch.Tensor | None:
    """The assembly's neuron gains [n_layers, d_ff] (they scale down_proj columns: a change of weights);
    other kinds change the network in ways this metric does not read, so they are refused."""
    if not uses:
        return None
    from bricks.compose import assemble

    assembly = assemble(host.ref, uses)
    other = sorted(set(assembly.present()) - {"neurons"})
    if other:
        raise InvalidInputError(f"mfa reads neuron bricks' gains only; this assembly also has {', '.join(other)} "
                                "bricks", "measure neuron bricks, or the host alone")
    return assembly.neuron_map.gain


def mfa_report(host, uses: list, options: MFAOptions, spectra: dict[str, list[Spectrum]],
               seconds: dict[str, float]) -> dict[str, Any]:
    rng = np.random.default_rng(options.seed + 2)
    report: dict[str, Any] = {"metric": "mfa", "host_name": host.ref.name, "fingerprint": host.ref.fingerprint,
                              "samplings": options.samplings, "nodes_per_layer": options.nodes_per_layer,
                              "nodes": (4 * host.n_layers + 1) * options.nodes_per_layer,
                              "centers": options.centers, "fold_norms": options.fold_norms,
                              "q": [float(x) for x in options.qs()], "note": NOTE}
    if uses:
        report["bricks"] = [{"brick": u.brick.name, "gain": u.gain} for u in uses]
    draws = {name: rng.integers(0, len(s), size=(options.bootstrap, len(s))) for name, s in spectra.items()}
    boot = {}
    for name, specs in spectra.items():
        a0 = np.array([s.alpha_0 for s in specs])
        w = np.array([s.width for s in specs])
        d0 = np.array([s.d_0 for s in specs])
        boot[name] = (a0[draws[name]].mean(axis=1), w[draws[name]].mean(axis=1))
        report[name] = {"alpha_0": _interval(a0.mean(), boot[name][0]), "width": _interval(w.mean(), boot[name][1]),
                        "d_0": float(d0.mean()), "per_sampling": {"alpha_0": a0.round(4).tolist(),
                                                                  "width": w.round(4).tolist()},
                        "fitted_radii": [s.fitted_radii for s in specs], "seconds": round(seconds[name], 2)}
    if "random_init" in spectra:
        h, r = report["host"], report["random_init"]
        point = emergence(h["alpha_0"]["mean"], h["width"]["mean"], r["alpha_0"]["mean"], r["width"]["mean"])
        resampled = emergence(boot["host"][0], boot["host"][1], boot["random_init"][0], boot["random_init"][1])
        report["emergence"] = _interval(point, resampled)
    return report


def emergence(alpha_0, width, alpha_0_init, width_init):
    """Degree of emergence against the random initialisation: (w / w_init) * log(alpha_0_init / alpha_0)."""
    return (np.asarray(width) / np.asarray(width_init)) * np.log(np.asarray(alpha_0_init) / np.asarray(alpha_0))


def _interval(point: float, resampled: np.ndarray) -> dict[str, float]:
    lo, hi = np.percentile(resampled, [2.5, 97.5])
    return {"mean": float(point), "ci95": [float(lo), float(hi)]}


def plot_spectra(report: dict[str, Any], spectra: dict[str, list[Spectrum]], path: str | Path) -> Path:
    """f(alpha) per model: every sampling thin, their mean bold (PNG)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (name, specs), colour in zip(spectra.items(), ("C0", "C1"), strict=False):
        for s in specs:
            ax.plot(s.alpha, s.f, color=colour, lw=0.5, alpha=0.35)
        alpha, f = np.mean([s.alpha for s in specs], axis=0), np.mean([s.f for s in specs], axis=0)
        r = report[name]
        ax.plot(alpha, f, "o-", ms=2.5, color=colour,
                label=f"{name}: alpha_0 {r['alpha_0']['mean']:.3f}, width {r['width']['mean']:.3f}")
    title = f"f(alpha) of {report['host_name']}'s neuron interaction network ({report['samplings']} samplings)"
    if "emergence" in report:
        e = report["emergence"]
        title += f"\nemergence {e['mean']:.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("alpha")
    ax.set_ylabel("f(alpha)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
