"""Rare-token subnetworks (arXiv 2509.21163 and its "Emergent Specialization" precursor).

Which last-layer FFN neurons does the host need to predict *rare* tokens? For each neuron we measure
its influence: mean-ablate it (h_j <- its dataset mean) and take the loss increase over positions whose
next token is rare, and over positions whose next token is common.

- Rare and common are defined by occurrence mass in the extraction corpus, not by type counts: the
  rarest types that together make `rare_mass` (15%) of all occurrences are rare (types never seen
  there are rarer still, so rare too); the most frequent types making `common_mass` (50%) are common.
- Ranking: a first-order estimate, grad(loss) . (mean - h), for every neuron from one backward pass
  through the final norm and LM head per chunk. The top `confirm_top` neurons are then re-measured by
  true mean-ablation and re-ranked; the published brick rests on the true numbers only.
- True ablation is cheap for the last layer: its FFN output reaches the loss only through the final
  norm and the head, so we cache the layer's output y and its h once, and for a neuron set S replay
  y' = y + W_down[:, S] (mean_S - h_S). With A = W_head diag(w_norm), the logits are
  (rms(y) * z + (A W_down[:, S]) d) / rms(y'): one rank-|S| update of cached logits per set, never a
  second forward. `bricks.apply` with the brick gives the same losses (tested).
- Regimes (`bricks.analysis.regimes`): a piecewise-linear fit of log(influence) against log(rank) with 0, 1 or 2
  breakpoints, chosen by BIC, names the plateau / power-law / fast-decay segments. It is fitted on the
  linearised curve of the whole layer (the only curve measured the same way for every neuron). The
  brick's size is the plateau's (the ranks before the first breakpoint when that segment is flatter
  than the next); when the plateau is a single neuron or there is none, the top 1% of the layer, and
  the report says so. Its members are the best neurons by *true* ablation, skipping "general" ones
  whose own ablation raises common-token loss by more than `max_common_ratio` (0.25) x their
  rare-token loss (listed in `skipped_general`; `max_common_ratio=None` keeps them).
- The brick mean-ablates by default (gain 0, offset = dataset mean): exactly the intervention that
  was measured. To amplify instead, use it with a gain > 1 and its offset scaled to 0
  (`BrickUse(brick, gain=2.0, offset_scale=0.0)`); per-label means of the neurons are kept as evidence.
- Coordination (`bricks.analysis.spectrum`): effective dimensionality (participation ratio of the
  activation covariance) of the group vs random same-size groups, and the Hill heavy-tail alpha of the
  eigenvalue spectrum of the correlation matrix of the group's down_proj columns.
- Evidence: rare vs common loss change of the brick and of `n_random` random same-size sets of the same
  layer, on a held-out slice of the corpus the extractor did not see. A brick below the bars
  (rare >= 10x |common| and >= 10x random) is reported in `skipped`, not published, unless `force`.

Only the last layer has the cheap replay; other layers are refused rather than silently slow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from tqdm.auto import tqdm

from bricks.analysis.controls import random_sets
from bricks.analysis.plots import plot_regimes
from bricks.analysis.regimes import RegimeFit, fit_regimes
from bricks.analysis.spectrum import participation_ratio, weight_spectrum_alpha
from bricks.corpus import Corpus, batches
from bricks.errors import InvalidInputError
from bricks.extract import Extraction, extractor
from bricks.extract.options import ExtractorOptions
from bricks.extract.zones import attach_profile, token_slices, zone_profile
from bricks.format import Brick
from bricks.kinds.neurons import neuron_brick
from bricks.profile import decoder, ffn_capture

RARE, COMMON, OTHER = 0, 1, -1


# --- rare and common token types -------------------------------------------------------------------
def token_counts(corpus: Corpus, tokenizer, vocab_size: int) -> torch.Tensor:
    """Occurrences of every token type in the corpus (int64 [vocab_size])."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for doc in corpus:
        ids = torch.tensor(tokenizer(doc.text, add_special_tokens=False)["input_ids"], dtype=torch.int64)
        counts += torch.bincount(ids, minlength=vocab_size)[:vocab_size]
    return counts


@dataclass
class TokenSplit:
    """Which token types are rare and which are common (bool [vocab_size] each)."""

    rare: torch.Tensor
    common: torch.Tensor

    def classify(self, targets: torch.Tensor) -> torch.Tensor:
        """RARE / COMMON / OTHER for each target token id."""
        out = torch.full_like(targets, OTHER)
        out[self.rare[targets]] = RARE
        out[self.common[targets]] = COMMON
        return out


def split_by_mass(counts: torch.Tensor, rare_mass: float = 0.15, common_mass: float = 0.5) -> TokenSplit:
    """Rare = the rarest seen types making `rare_mass` of occurrences, plus every unseen type;
    common = the most frequent types making `common_mass`. Ties break by token id (deterministic)."""
    if not (0 < rare_mass < 1 and 0 < common_mass < 1 and rare_mass + common_mass <= 1):
        raise InvalidInputError(f"rare_mass={rare_mass}, common_mass={common_mass} must be in (0, 1) and sum <= 1",
                                "use e.g. rare_mass=0.15 common_mass=0.5")
    total = int(counts.sum())
    if total == 0:
        raise InvalidInputError("the corpus has no tokens", "pass a corpus with text in it")
    seen = torch.nonzero(counts > 0).squeeze(1)
    asc = seen[torch.argsort(counts[seen] * (len(counts) + 1) + seen)]  # by count, then by id
    cum = torch.cumsum(counts[asc], 0)
    rare = counts == 0
    rare[asc[cum <= rare_mass * total]] = True
    desc = asc.flip(0)
    common = torch.zeros_like(rare)
    n_common = int((torch.cumsum(counts[desc], 0) < common_mass * total).sum()) + 1  # reach the mass
    common[desc[:n_common]] = True
    common &= ~rare
    return TokenSplit(rare, common)


# --- one pass: cache the layer's output and h at rare and common positions -------------------------
@dataclass
class LayerCache:
    """What the replay needs at every rare or common position of a sample."""

    out: torch.Tensor  # float32 [P, d_model]: the layer's output (residual stream before the final norm)
    h: torch.Tensor  # float32 [P, d_ff]
    target: torch.Tensor  # int64 [P]: the next token
    cls: torch.Tensor  # int64 [P]: RARE or COMMON
    h_sum: torch.Tensor  # float64 [n_labels, d_ff]: sum of h over every token (not only cached ones)
    tokens: torch.Tensor  # int64 [n_labels]
    labels: list[str]

    def mean(self) -> torch.Tensor:
        """Dataset mean of h over every token: what mean-ablation writes."""
        return (self.h_sum.sum(0) / max(int(self.tokens.sum()), 1)).float()

    def label_means(self) -> torch.Tensor:
        return (self.h_sum / self.tokens.clamp(min=1)[:, None].double()).float()

    def count(self, cls: int) -> int:
        return int((self.cls == cls).sum())

    def subset(self, per_class: int, seed: int = 0) -> LayerCache:
        """At most `per_class` random positions of each class (the per-token statistics are kept whole)."""
        gen = torch.Generator().manual_seed(seed)
        keep = []
        for c in (RARE, COMMON):
            pos = torch.nonzero(self.cls == c).squeeze(1)
            keep.append(pos[torch.randperm(len(pos), generator=gen)[:per_class]])
        idx = torch.cat(keep).sort().values
        return LayerCache(self.out[idx], self.h[idx], self.target[idx], self.cls[idx], self.h_sum, self.tokens,
                          self.labels)


def _layer_output_hook(store: dict):
    def hook(module, args, output):
        store["out"] = output[0] if isinstance(output, tuple) else output

    return hook


class _CacheBuilder:
    """Collects one batch at a time: rare/common positions kept, every token counted for the mean."""

    def __init__(self, split: TokenSplit, labels: list[str], d_ff: int):
        self.split, self.labels = split, labels
        self.parts: dict[str, list[torch.Tensor]] = {"out": [], "h": [], "target": [], "cls": []}
        self.h_sum = torch.zeros(len(labels), d_ff, dtype=torch.float64)
        self.tokens = torch.zeros(len(labels), dtype=torch.int64)

    def add(self, batch, h: torch.Tensor, out: torch.Tensor) -> None:
        mask = batch.attention_mask.bool()
        lab = torch.tensor([self.labels.index(x) for x in batch.labels])
        self.h_sum.index_add_(0, lab, (h * mask[..., None]).sum(1).double())
        self.tokens.index_add_(0, lab, mask.sum(1))
        # position t predicts token t + 1; both must be real tokens
        cls = self.split.classify(batch.input_ids[:, 1:])
        keep = mask[:, :-1] & mask[:, 1:] & (cls != OTHER)
        for key, t in (("out", out[:, :-1]), ("h", h[:, :-1]), ("target", batch.input_ids[:, 1:]), ("cls", cls)):
            self.parts[key].append(t[keep].clone())

    def build(self) -> LayerCache:
        cat = {k: torch.cat(v) for k, v in self.parts.items()}
        return LayerCache(cat["out"], cat["h"], cat["target"], cat["cls"], self.h_sum, self.tokens, self.labels)


def cache_layer(host, corpus: Corpus, split: TokenSplit, layer: int, batch_tokens: int = 4096,
                progress: bool = False) -> LayerCache:
    """Run `corpus` (pieces of <= 256 tokens, see `token_slices`) once and cache what the replay needs."""
    builder = _CacheBuilder(split, corpus.labels(), host.d_ff)
    store: dict = {}
    base = decoder(host.model)
    handle = host.adapter.layers(host.model)[layer].register_forward_hook(_layer_output_hook(store))
    bar = tqdm(total=len(corpus), desc=f"caching layer {layer}", unit="piece", disable=not progress)
    try:
        with torch.inference_mode(), ffn_capture(host, [layer]) as acts:
            for batch in batches(corpus, host.tokenizer, batch_tokens=batch_tokens, max_len=1 << 20):
                base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
                builder.add(batch, acts[layer].float(), store["out"].float())
                bar.update(len(batch.labels))
    finally:
        handle.remove()
        bar.close()
    return builder.build()


def check_layer(host, layer: int) -> None:
    """Only the last layer has the exact cheap replay; refuse others before any work is done."""
    if layer != host.n_layers - 1:
        raise InvalidInputError(
            f"rare-token extraction replays only the last layer (layer {host.n_layers - 1}), not layer {layer}",
            f"use layer={host.n_layers - 1} (the default)")


# --- exact replay of the final norm + head -----------------------------------------------------------
class HeadReplay:
    """Losses at cached positions with neuron sets of the last layer mean-ablated, without a forward."""

    def __init__(self, host, layer: int, mean: torch.Tensor, chunk: int = 512):
        check_layer(host, layer)
        self.norm = decoder(host.model).norm
        self.head = host.model.get_output_embeddings()
        self.w_down = host.adapter.ffn_weights(host.model, layer)[2].detach().float()
        self.eps = float(getattr(self.norm, "variance_epsilon", getattr(self.norm, "eps", 1e-6)))
        self.a = (self.head.weight.detach().float() * self.norm.weight.detach().float()[None, :])
        self.mean = mean
        self.chunk = chunk
        self._self_test()

    def _rms(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def _self_test(self) -> None:
        """The replay assumes an RMSNorm (w * x / rms(x)) and a bias-free head; refuse hosts that differ."""
        x = torch.randn(3, self.w_down.shape[0])
        with torch.no_grad():
            want = self.head(self.norm(x)).float()
        got = (x @ self.a.T) / self._rms(x)
        if not torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max())):
            raise InvalidInputError("this host's final norm or LM head is not an RMSNorm + linear head",
                                    "rare-token extraction supports Llama-style hosts only")

    def chunks(self, cache: LayerCache, progress: bool = False, desc: str = "replay"):
        n = cache.target.numel()
        for s in tqdm(range(0, n, self.chunk), desc=desc, unit="chunk", disable=not progress):
            yield slice(s, min(s + self.chunk, n))

    def linearised(self, cache: LayerCache, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(base loss [P], first-order loss change of mean-ablating each neuron, per class [2, d_ff])."""
        base, infl = [], torch.zeros(2, self.w_down.shape[1], dtype=torch.float64)
        for sl in self.chunks(cache, progress, "linearised influence"):
            out = cache.out[sl].clone().requires_grad_(True)
            with torch.enable_grad():
                ce = F.cross_entropy(self.head(self.norm(out)).float(), cache.target[sl], reduction="none")
                (g_out,) = torch.autograd.grad(ce.sum(), out)
            contrib = (g_out @ self.w_down) * (self.mean - cache.h[sl])  # [p, d_ff]
            infl.index_add_(0, cache.cls[sl], contrib.double())
            base.append(ce.detach())
        counts = torch.tensor([cache.count(RARE), cache.count(COMMON)]).clamp(min=1)
        return torch.cat(base), (infl / counts[:, None]).float()

    def ablated(self, cache: LayerCache, sets: list[torch.Tensor], progress: bool = False,
                desc: str = "true ablation") -> torch.Tensor:
        """Loss change at every cached position [n_sets, P] with each set mean-ablated (one at a time)."""
        mats = [(idx, self.w_down[:, idx], self.a @ self.w_down[:, idx]) for idx in sets]
        rows = []
        with torch.no_grad():
            for sl in self.chunks(cache, progress, desc):
                rows.append(self._ablated_chunk(cache.out[sl], cache.h[sl], cache.target[sl], mats))
        return torch.cat(rows, dim=1)

    def _ablated_chunk(self, out, h, y, mats) -> torch.Tensor:
        scaled = out @ self.a.T  # rms(out) * logits
        base = _ce(scaled / self._rms(out), y)
        rows = []
        for idx, w_s, m_s in mats:
            d = self.mean[idx] - h[:, idx]
            z = torch.addmm(scaled, d, m_s.T).div_(self._rms(out + d @ w_s.T))
            rows.append(_ce(z, y) - base)
        return torch.stack(rows)


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy; written out because F.cross_entropy copies the [p, vocab] logits once more."""
    return torch.logsumexp(logits, 1) - logits.gather(1, y[:, None]).squeeze(1)


def class_means(delta: torch.Tensor, cls: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss change over rare and over common positions, per set ([n_sets] each)."""
    rare, common = cls == RARE, cls == COMMON
    return delta[:, rare].mean(1).double().numpy(), delta[:, common].mean(1).double().numpy()


# --- group statistics -------------------------------------------------------------------------------
def group_coordination(cache: LayerCache, w_down: torch.Tensor, idx: torch.Tensor,
                       randoms: list[torch.Tensor]) -> dict[str, Any]:
    """Effective dim and Hill alpha of the group vs random same-size groups (needs >= 3 neurons)."""
    if idx.numel() < 3:
        return {"note": "group too small (< 3 neurons) for effective dimension or a spectrum"}
    out: dict[str, Any] = {"group_size": int(idx.numel())}
    for key, fn in (("effective_dim", lambda s: participation_ratio(cache.h[:, s])),
                    ("effective_dim_cov", lambda s: participation_ratio(cache.h[:, s], standardize=False)),
                    ("hill_alpha", lambda s: weight_spectrum_alpha(w_down, s))):
        rand = [fn(r) for r in randoms]
        out.update({key: round(fn(idx), 4), f"{key}_random_mean": round(float(np.mean(rand)), 4),
                    f"{key}_random": [round(v, 4) for v in rand]})
    return out


# --- the extractor ----------------------------------------------------------------------------------
def brick_size(fit: RegimeFit, d_ff: int, top_fraction: float = 0.01) -> tuple[int, str]:
    """How many top-ranked neurons make the brick, and why."""
    top = max(1, round(top_fraction * d_ff))
    if fit.plateau_size > 1:
        return fit.plateau_size, f"plateau: ranks 1-{fit.plateau_size} of the influence curve"
    if fit.names and fit.names[0] == "plateau":
        return top, f"top {top_fraction:.0%} ({top} neurons): the plateau is a single neuron"
    return top, f"top {top_fraction:.0%} ({top} neurons): the influence curve has no plateau"


def confirm_top_neurons(replay: HeadReplay, cache: LayerCache, lin_rare: torch.Tensor, top: int, per_class: int,
                        seed: int = 0, progress: bool = False) -> dict[str, np.ndarray]:
    """True single-neuron mean-ablation of the top of the linearised ranking, re-ranked by rare-token loss."""
    cand = torch.argsort(lin_rare, descending=True)[:top]
    sub = cache.subset(per_class, seed)
    rare, common = class_means(replay.ablated(sub, [i.reshape(1) for i in cand], progress), sub.cls)
    order = np.argsort(-rare, kind="stable")
    return {"neurons": cand.numpy()[order], "rare": rare[order], "common": common[order],
            "linearised": lin_rare.numpy()[cand.numpy()[order]]}


def select_brick(confirmed: dict[str, np.ndarray], size: int, max_common_ratio: float | None
                 ) -> tuple[torch.Tensor, list[int]]:
    """The `size` best confirmed neurons, skipping general ones (common loss > ratio x rare loss)."""
    keep, general = [], []
    for n, r, c in zip(confirmed["neurons"], confirmed["rare"], confirmed["common"]):
        if len(keep) == size or r <= 0:
            break
        (general if max_common_ratio is not None and c > max_common_ratio * r else keep).append(int(n))
    if not keep:
        raise InvalidInputError("no confirmed neuron raises rare-token loss more than common-token loss",
                                "raise max_common_ratio (or pass max_common_ratio=None), or use a larger corpus")
    return torch.tensor(sorted(keep), dtype=torch.int64), general


def evaluate_sets(replay: HeadReplay, cache: LayerCache, brick_idx: torch.Tensor, randoms: list[torch.Tensor],
                  progress: bool = False) -> dict[str, Any]:
    """Rare / common loss change of the brick and of each random set (true ablation) on `cache`."""
    delta = replay.ablated(cache, [brick_idx, *randoms], progress, "evaluation")
    rare, common = class_means(delta, cache.cls)
    rand_rare = float(np.mean(rare[1:]))
    return {
        "rare_positions": cache.count(RARE), "common_positions": cache.count(COMMON),
        "brick": {"rare_dloss": float(rare[0]), "common_dloss": float(common[0])},
        "random": [{"rare_dloss": float(r), "common_dloss": float(c)} for r, c in zip(rare[1:], common[1:])],
        "random_rare_dloss_mean": rand_rare,
        "rare_over_common": float(rare[0] / max(abs(common[0]), 1e-9)),
        "rare_over_random": float(rare[0] / max(abs(rand_rare), 1e-9)),
    }


def _fit_dict(fit: RegimeFit | None) -> dict[str, Any] | None:
    if fit is None:
        return None
    return {"names": fit.names, "breaks": [round(b, 2) for b in fit.breaks],
            "slopes": [round(s, 4) for s in fit.slopes], "bic": {str(k): round(v, 2) for k, v in fit.bic.items()},
            "plateau_size": fit.plateau_size}


def _safe_fit(values: np.ndarray) -> RegimeFit | None:
    try:
        return fit_regimes(np.sort(values)[::-1])
    except InvalidInputError:
        return None


class RareTokenOptions(ExtractorOptions):
    """Options of `extract_rare_tokens`."""

    layer: int | None = Field(None, description="FFN layer (default: the last, the only one with the exact "
                                                 "cheap replay).")
    rare_mass: float = Field(0.15, gt=0, lt=1, description="Rare tokens: the rarest types making this share of "
                                                           "all occurrences.")
    common_mass: float = Field(0.5, gt=0, lt=1, description="Common tokens: the most frequent types making this "
                                                            "share of all occurrences.")
    confirm_top: int = Field(100, gt=0, description="Top neurons re-measured by true ablation.")
    confirm_positions: int = Field(1024, gt=0, description="Positions per class for the single-neuron "
                                                           "confirmations.")
    max_common_ratio: float | None = Field(0.25, description="Skip neurons whose common-token loss is above this "
                                                             "x their rare-token loss (none: keep them).")
    top_fraction: float = Field(0.01, gt=0, le=1, description="Brick size, as a fraction of the layer, when the "
                                                              "influence curve has no plateau.")
    n_random: int = Field(5, gt=0, description="Random same-size sets the brick is compared with.")
    max_tokens: int | None = Field(24_000, description="Training tokens sampled for the forward pass (none: all).")
    eval_tokens: int | None = Field(8_000, description="Held-out tokens sampled for the evidence (none: all).")
    held_out: float = Field(0.2, gt=0, lt=1, description="Fraction of documents held out for the evidence.")
    zones: bool = Field(False, description="Attach an activation-zone profile to the brick.")
    force: bool = Field(False, description="Publish the brick even when it misses the held-out bars.")
    seed: int = Field(0, description="Seed of the held-out split, the samples and the random sets.")


@dataclass
class Ranking:
    """The layer's influence curve, its regimes, and the true-ablation confirmation of its top."""

    curve: np.ndarray  # linearised rare-token influence of every neuron, decreasing
    fit: RegimeFit
    size: int  # neurons in the brick
    rule: str  # why that many
    confirmed: dict[str, np.ndarray]  # see confirm_top_neurons


def rank_neurons(replay: HeadReplay, cache: LayerCache, opt: RareTokenOptions) -> Ranking:
    lin_rare = replay.linearised(cache, opt.progress)[1][RARE]
    curve = np.sort(lin_rare.numpy())[::-1]
    fit = fit_regimes(curve)
    size, rule = brick_size(fit, replay.w_down.shape[1], opt.top_fraction)
    confirmed = confirm_top_neurons(replay, cache, lin_rare, max(opt.confirm_top, 2 * size), opt.confirm_positions,
                                    opt.seed, opt.progress)
    return Ranking(curve, fit, size, rule, confirmed)


def _train_and_held(corpus: Corpus, opt: RareTokenOptions) -> tuple[Corpus, Corpus]:
    train, held = corpus.split(opt.held_out, seed=opt.seed)
    if not train or not held:
        raise InvalidInputError("the corpus is too small to hold out a slice for evaluation",
                                "pass more documents (the held-out slice is chosen by content hash)")
    return train, held


@extractor("rare_tokens", reference_url="https://arxiv.org/abs/2509.21163", options=RareTokenOptions,
           aliases=("rare_token",))
def extract_rare_tokens(host, corpus: Corpus, options: RareTokenOptions | None = None, *, name: str,
                        out_dir: Path | None = None) -> Extraction:
    """Last-layer neurons whose mean-ablation hurts rare-token prediction (plateau of the influence curve).

    The influence-curve plot goes to `out_dir` (none when it is None).
    """
    opt = options or RareTokenOptions()
    layer = host.n_layers - 1 if opt.layer is None else int(opt.layer)
    check_layer(host, layer)
    train, held = _train_and_held(corpus, opt)
    # Rarity comes from the whole training split; the forward passes only see a sample of it.
    counts = token_counts(token_slices(train, host.tokenizer), host.tokenizer,
                          host.model.get_output_embeddings().weight.shape[0])
    split = split_by_mass(counts, opt.rare_mass, opt.common_mass)
    cache = cache_layer(host, token_slices(train, host.tokenizer, opt.max_tokens, seed=opt.seed), split, layer,
                        progress=opt.progress)
    replay = HeadReplay(host, layer, cache.mean())
    ranking = rank_neurons(replay, cache, opt)
    idx, general = select_brick(ranking.confirmed, ranking.size, opt.max_common_ratio)
    randoms = random_sets(host.d_ff, idx.numel(), opt.n_random, idx, opt.seed)
    held_cache = cache_layer(host, token_slices(held, host.tokenizer, opt.eval_tokens, seed=opt.seed), split, layer,
                             progress=opt.progress)
    metrics = {
        "layer": layer, "rare_types": int((split.rare & (counts > 0)).sum()), "common_types": int(split.common.sum()),
        "train_tokens": int(cache.tokens.sum()), "train_rare_positions": cache.count(RARE),
        "train_common_positions": cache.count(COMMON), **_ranking_metrics(ranking, idx, general),
        "evaluation": evaluate_sets(replay, held_cache, idx, randoms, opt.progress),
        "coordination": group_coordination(cache, replay.w_down, idx, randoms),
    }
    ev = metrics["evaluation"]
    metrics["bars"] = {"rare_over_common_ge_10": ev["rare_over_common"] >= 10,
                       "rare_over_random_ge_10": ev["rare_over_random"] >= 10}
    brick = _make_brick(host, name, layer, idx, cache, metrics, corpus, opt)
    if opt.zones:
        brick = attach_profile(brick, zone_profile(host, brick, held, progress=opt.progress))
    result = Extraction([], report={name: metrics}, evidence={name: _evidence(ev)})
    if out_dir is not None:
        result.artifacts["influence_curve"] = plot_regimes(ranking.curve, ranking.fit, idx.numel(),
                                                           out_dir / f"{name}-influence.png", ranking.confirmed["rare"])
    if all(metrics["bars"].values()) or opt.force:
        result.bricks.append(brick)
    else:
        result.skipped[name] = (f"not selective on held-out text: rare/common {ev['rare_over_common']:.1f}x, "
                                f"rare/random {ev['rare_over_random']:.1f}x (both must be >= 10; force=true "
                                "publishes it anyway)")
    return result


def _evidence(ev: dict[str, Any]) -> dict[str, float]:
    """The held-out figures the bars judge, as the summary table shows them."""
    return {"rare Δloss": ev["brick"]["rare_dloss"], "common Δloss": ev["brick"]["common_dloss"],
            "rare/common": ev["rare_over_common"], "rare/random": ev["rare_over_random"]}


def _ranking_metrics(ranking: Ranking, idx: torch.Tensor, general: list[int]) -> dict[str, Any]:
    return {"brick_rule": ranking.rule, "brick_size": int(idx.numel()), "skipped_general": general,
            "regimes": _fit_dict(ranking.fit), "regimes_true_top": _fit_dict(_safe_fit(ranking.confirmed["rare"])),
            "confirmed_top": _confirmed_rows(ranking.confirmed, max(2 * ranking.size, 20))}


def _confirmed_rows(confirmed: dict[str, np.ndarray], n: int) -> list[dict[str, float]]:
    rows = zip(confirmed["neurons"][:n], confirmed["rare"], confirmed["common"], confirmed["linearised"])
    return [{"neuron": int(k), "rare_dloss": round(float(r), 5), "common_dloss": round(float(c), 5),
             "linearised_rare": round(float(lin), 5)} for k, r, c, lin in rows]


def _make_brick(host, name: str, layer: int, idx: torch.Tensor, cache: LayerCache, metrics: dict, corpus: Corpus,
                opt: RareTokenOptions) -> Brick:
    ev = metrics["evaluation"]["brick"]
    params = opt.params()
    # `brick eval` re-derives the held-out documents from held_out and split_seed
    params.update(layer=layer, split_seed=opt.seed, corpus_digest=corpus.digest())
    brick = neuron_brick(
        name, host.ref, {layer: idx}, gain=0.0, offset={layer: cache.mean()[idx]}, method="rare_tokens",
        params=params, metrics=metrics, labels=cache.labels,
        description=(f"{idx.numel()} layer-{layer} FFN neurons whose mean-ablation raises held-out rare-token loss by "
                     f"{ev['rare_dloss']:.3f} nats vs {ev['common_dloss']:+.3f} on common tokens; "
                     f"{metrics['brick_rule']}. Stored as mean-ablation (gain 0, offset = dataset mean)."))
    brick.neurons[layer].label_means = cache.label_means()[:, idx]
    brick.validate()
    return brick
