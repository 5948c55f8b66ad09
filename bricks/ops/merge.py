"""Merge bricks of one kind into one new brick: methods registered by name, each with its paper and options.

    brick = merge_bricks([a, b], "ties", {"density": 0.2, "weights": [1, 0.5]}, name="fr-code")

Every method is a small function registered with `@merge_method(name, reference_url, kinds, params)`;
`params` is a pydantic model (unknown options are errors) validated, with the parents, before any tensor
is touched. The result is a new `Brick` whose metadata records `method="merge-NAME"`, the validated
parameters plus the parents' names, and metrics (reconstruction errors, seed). The caller publishes it
with its parents (registry lineage); nothing here reads or writes a registry.

LoRA bricks (ΔW = scaling · B A per target module, scaling = alpha / r folded in, so parents of different
ranks and alphas merge without being refused; a module a parent lacks has ΔW = 0):

- `cat` and `linear` are exact: Σ wᵢ ΔWᵢ is stored as the concatenation of the parents' ranks, wᵢ · scalingᵢ
  folded into each Bᵢ, because [w₁B₁ … wₙBₙ] · [A₁; …; Aₙ] = Σ wᵢ BᵢAᵢ term by term. PEFT's and LoRAX's
  `linear` instead combines A and B separately (PEFT scales each by √cᵢ, cᵢ = wᵢ · scalingᵢ) and multiplies
  the results: (Σ √cᵢ Bᵢ)(Σ √cⱼ Aⱼ) = Σ cᵢ BᵢAᵢ + Σ_{i≠j} √(cᵢcⱼ) BᵢAⱼ, the wanted sum plus cross terms
  that pair one adapter's B with another's A. Independently trained adapters have unrelated rank bases, so
  those terms are noise of the same size as the signal, and they do not cancel.
  `linear` with a `target_rank` re-factors the exact sum by SVD (QR of the stacked factors, SVD of the
  small core, as `bricks.lora.truncate`) and reports the relative Frobenius error.
- `svd` is that re-factoring with a default target rank: Σ wᵢ ΔWᵢ, truncated.
- `ties`, `dare_linear`, `dare_ties`, `magnitude_prune` work on the dense ΔWᵢ of each module (pruning is
  per module and per parent, as in PEFT and mergekit), then re-factor the result by SVD.
  The default `target_rank` of every truncating method is, per module, the largest rank any parent has
  there: the merged brick is never larger than its largest parent and fits the same serving max rank.
  A sparse or sign-filtered delta is generally full rank, so the error of that default is reported, not
  hidden; raise `target_rank` to lower it. A target rank is capped per module at min(d_in, d_out) (and at
  the summed rank for `linear`/`svd`, beyond which the sum has no more directions).
  The stored result has alpha == rank (scaling 1) in every module.
  Conventions of the sign methods (the TIES paper's when every weight is 1): the parents
  are trimmed (top `density` of |ΔWᵢ|) or dropped at random (DARE, kept entries rescaled by 1/density),
  weighted, the sign is elected on the weighted values (`total`: sign of their sum; `frequency`: the
  sign most parents have), and the entries agreeing with it are summed and divided by how many parents
  agree (PEFT's disjoint merge). A parent with weight 0 has no vote. DARE's mask is seeded per
  (seed, module, parent), so a merge is reproducible and does not depend on the order modules are visited.

Neuron bricks (per-neuron affine maps h[S] <- g h[S] + v):

- `union`: every neuron of any parent; where parents overlap, their maps compose in the given order,
  (g₁, v₁) then (g₂, v₂) = (g₁g₂, g₂v₁ + v₂), the serving rule, so the merged brick serves exactly as the
  parents served together in that order (offsets do not commute: the order is the meaning).
- `intersection`: only the neurons every parent touches (per layer), composed the same way.
- `weighted`: every neuron of any parent; gain and offset are the weighted means of the parents' (a
  parent without the neuron counts as the identity, g = 1, v = 0). That is exactly the weighted mean of
  the parents' outputs on each neuron: Σ wᵢ(gᵢh + vᵢ) / Σ wᵢ.
Offsets are kept as the rules above give them (stored where any parent sets one on that layer) and
recorded in `params.has_offset`. The parents' `label_means` are dropped: they are evidence measured for
each parent's own neuron set and label list, rows that no longer line up with the merged set; profile the
merged brick again to get evidence of its own. `labels` is the union of the parents' labels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, Field, field_validator
from tqdm.auto import tqdm

from bricks.constants import LORA_RANKS
from bricks.errors import InvalidInputError
from bricks.extract.options import ExtractorOptions, MethodRegistry, MethodSpec, OptionWording, comma_list
from bricks.format import Brick, BrickMeta, RoutingKeys
from bricks.kinds.base import BrickUse, LowRank
from bricks.kinds.lora import LoraModule, lora_module_shape
from bricks.kinds.neurons import NeuronMap, NeuronSet, compose_neurons
from bricks.lora import truncate
from bricks.refs import check_name

ROUTING_CAP = 32  # a merged brick's routing keys: at most this many of its parents' texts
MAX_RANK = LORA_RANKS[-1]  # vLLM's largest LoRA rank: a larger target could not be served


# --- parameters ------------------------------------------------------------------------------------------
class MergeParams(ExtractorOptions):
    """What every merge method's parameters share; `progress` is how a run is shown, not recorded."""


class WeightedParams(MergeParams):
    weights: list[float] | None = Field(None, description="One weight per parent, in the parents' order "
                                                          "(default: 1 each).")

    @field_validator("weights", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return comma_list(v)

    @field_validator("weights")
    @classmethod
    def _usable(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if not all(torch.isfinite(torch.tensor(w)) for w in v):
            raise ValueError(f"weights must be finite numbers, got {v}")
        if not any(w != 0 for w in v):
            raise ValueError("at least one weight must be non-zero (all zero would merge nothing)")
        return v

    def weights_for(self, n: int) -> list[float]:
        return list(self.weights) if self.weights is not None else [1.0] * n


class CatParams(WeightedParams):
    """Concatenate the parents' ranks per module: Σ wᵢ ΔWᵢ, exact."""


class LinearParams(WeightedParams):
    target_rank: int | None = Field(None, ge=1, le=MAX_RANK, description="Re-factor Σ wᵢ ΔWᵢ to this rank "
                                    "by SVD (default: none, store it exactly at the summed rank).")


class SvdParams(WeightedParams):
    target_rank: int | None = Field(None, ge=1, le=MAX_RANK, description="Rank of the result per module "
                                    "(default: the largest parent rank of that module).")


class MagnitudeParams(SvdParams):
    density: float = Field(0.2, gt=0, le=1, description="Fraction of each parent's delta entries kept, the "
                           "largest by magnitude (default 0.2: the TIES paper's top-20%).")


SignMethod = Literal["total", "frequency"]
SIGN_METHOD_HELP = ("Elect each entry's sign by the sum of the parents' weighted values (total) or by how many "
                    "parents have it (frequency).")


class TiesParams(MagnitudeParams):
    majority_sign_method: SignMethod = Field("total", description=SIGN_METHOD_HELP)


class DareParams(SvdParams):
    density: float = Field(0.1, gt=0, le=1, description="Probability that a delta entry is kept (kept "
                           "entries are scaled by 1/density; default 0.1: the DARE paper's drop rate 0.9).")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of the random drop masks.")


class DareTiesParams(DareParams):
    majority_sign_method: SignMethod = Field("total", description=SIGN_METHOD_HELP)


class NeuronMergeParams(MergeParams):
    """union and intersection take no options: the parents' order is the composition order."""


class NeuronWeightedParams(WeightedParams):
    weights: list[float] | None = Field(None, description="One non-negative weight per parent, in the "
                                        "parents' order (default: equal); normalised to sum 1.")

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(w < 0 for w in v):
            raise ValueError(f"weights of a weighted mean must be >= 0, got {v}")
        return v


# --- the registry ------------------------------------------------------------------------------------------
@dataclass
class Merged:
    """What a method returns: the merged brick's parts and its metrics."""

    parts: dict[Any, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # what the method adds to the recorded params


@dataclass(frozen=True)
class MergeSpec(MethodSpec):
    """A registered merge method: `fn(parents, params) -> Merged` for bricks of `kinds`."""

    kinds: tuple[str, ...] = ()

    wording: ClassVar[OptionWording] = OptionWording(unknown="merge method {name} has no option {key!r}{suggestion}",
                                                     invalid="merge {name} option {where}: {reason}",
                                                     fix="{key}= takes {takes}")

    @property
    def heading(self) -> str:
        return f"{self.name} [{'/'.join(self.kinds)}]"


MERGE_METHODS = MethodRegistry("merge method", MergeSpec)


def merge_method(name: str, reference_url: str, kinds: tuple[str, ...], params: type[MergeParams]) -> Callable:
    """Register a merge function `fn(parents, params) -> Merged` under `name`."""
    return MERGE_METHODS.register(name, reference_url, params, kinds=kinds)


def methods_for_kind(kind: str) -> list[str]:
    return [name for name, spec in MERGE_METHODS.items() if kind in spec.kinds]


def get_merge_method(name: str) -> MergeSpec:
    """The method registered as `name` ('-' reads as '_': `dare-ties`), or an error suggesting the closest."""
    return MERGE_METHODS.lookup(name)


def parse_merge_params(method: str, raw: dict[str, Any] | BaseModel | None = None) -> MergeParams:
    return get_merge_method(method).parse(raw)


# --- the entry point --------------------------------------------------------------------------------------
def merge_bricks(bricks: list[Brick], method: str, params: dict[str, Any] | BaseModel | None, name: str,
                 description: str = "") -> Brick:
    """A new brick merging `bricks` (in order) with `method`; everything is checked before any work."""
    spec = get_merge_method(method)
    opts = spec.parse(params)
    check_name(name)  # the one brick-name rule, in the registry's words
    _check_parents(bricks, spec)
    weights = getattr(opts, "weights", None)
    if weights is not None and len(weights) != len(bricks):
        raise InvalidInputError(f"merge {spec.name}: {len(weights)} weights for {len(bricks)} bricks "
                                f"({', '.join(b.name for b in bricks)})",
                                "give one weight per brick, in the same order, or none (1 each)")
    merged = spec.fn(bricks, opts)
    if not merged.parts:
        raise InvalidInputError(f"merge {spec.name} of {_names(bricks)} leaves nothing",
                                "check the weights, or use union instead of intersection")
    meta = BrickMeta(
        name=name, kind=bricks[0].kind, host=bricks[0].meta.host, method=f"merge-{spec.name}",
        params={**opts.params(), **merged.params, "parents": [b.name for b in bricks]},
        metrics=merged.metrics, labels=_union(b.meta.labels for b in bricks),
        routing=_routing(bricks), description=description or f"{spec.name} merge of {_names(bricks)}")
    brick = Brick(meta, merged.parts)
    brick.validate()
    return brick


def _check_parents(bricks: list[Brick], spec: MergeSpec) -> None:
    if len(bricks) < 2:
        raise InvalidInputError(f"merge {spec.name} needs at least 2 bricks, got {len(bricks)}",
                                "name two or more bricks to merge")
    first = bricks[0]
    for b in bricks[1:]:
        if b.kind != first.kind:
            raise InvalidInputError(f"cannot merge brick {first.name!r} ({first.kind}) with brick {b.name!r} "
                                    f"({b.kind}): a merge combines bricks of one kind",
                                    "merge bricks of the same kind, or serve them together in one assembly")
        if b.meta.host.fingerprint != first.meta.host.fingerprint:
            raise InvalidInputError(f"cannot merge brick {first.name!r} (host {first.meta.host.short()}) with "
                                    f"brick {b.name!r} (host {b.meta.host.short()}): they were built for "
                                    "different host models", "merge bricks built for the same host")
    if first.kind not in spec.kinds:
        others = methods_for_kind(first.kind)
        fix = (f"for {first.kind} bricks use one of: {', '.join(others)}" if others
               else f"no merge method handles {first.kind} bricks")
        raise InvalidInputError(f"merge method {spec.name} merges {', '.join(spec.kinds)} bricks, but "
                                f"{_names(bricks)} are {first.kind} bricks", fix)
    for b in bricks:
        b.validate()  # a malformed parent fails here, named, not halfway through the merge


def _names(bricks: list[Brick]) -> str:
    return ", ".join(repr(b.name) for b in bricks)


def _union(lists) -> list[str]:
    return list(dict.fromkeys(x for items in lists for x in items))


def _routing(bricks: list[Brick]) -> RoutingKeys:
    texts = _union(b.meta.routing.texts for b in bricks)[:ROUTING_CAP]
    labels = {b.meta.routing.label for b in bricks}
    return RoutingKeys(texts=texts, label=labels.pop() if len(labels) == 1 else None)


# --- LoRA: shared pieces ---------------------------------------------------------------------------------
def _modules(bricks: list[Brick], weights: list[float]) -> list[str]:
    """Every target module of a parent with a non-zero weight, in first-seen order (a weight of 0 drops the
    parent, so a module only it has would be a zero delta: it is left out rather than stored empty)."""
    return list(dict.fromkeys(mod for b, w in zip(bricks, weights, strict=True) if w != 0 for mod in b.lora))


def _weighted_low_rank(m: LoraModule, w: float) -> LowRank:
    return LowRank(m.A.float(), m.B.float() * (m.scaling * w))


def _stored(lr: LowRank) -> LoraModule:
    return LoraModule(lr.A.float().contiguous(), lr.B.float().contiguous(), alpha=float(lr.rank))


def _concatenated(bricks: list[Brick], weights: list[float], mod: str) -> LowRank:
    """Σ wᵢ ΔWᵢ of one module as one low-rank factor pair: exact, since [w₁B₁ … wₙBₙ][A₁; …; Aₙ] = Σ wᵢBᵢAᵢ."""
    lrs = [_weighted_low_rank(b.lora[mod], w) for b, w in zip(bricks, weights, strict=True)
           if mod in b.lora and w != 0]
    return LowRank(torch.cat([lr.A for lr in lrs]), torch.cat([lr.B for lr in lrs], 1))


def _default_rank(bricks: list[Brick], mod: str) -> int:
    return max(b.lora[mod].rank for b in bricks if mod in b.lora)


def _rank_for(bricks: list[Brick], mod: str, target: int | None) -> int:
    d_in, d_out = lora_module_shape(mod, bricks[0].meta.host)
    return min(target or _default_rank(bricks, mod), d_in, d_out)


def _error_metrics(errors: dict[str, float], ranks: dict[str, int]) -> dict[str, Any]:
    return {"errors": errors, "max_error": max(errors.values(), default=0.0),
            "mean_error": sum(errors.values()) / max(len(errors), 1), "ranks": ranks,
            "rank": max(ranks.values(), default=0)}


def _progress(items: list[str], params: MergeParams, what: str):
    return tqdm(items, desc=what, unit="module", disable=not params.progress or len(items) < 8)


# --- LoRA: exact and SVD methods ---------------------------------------------------------------------------
@merge_method("cat", reference_url="https://arxiv.org/abs/2106.09685", kinds=("lora",), params=CatParams)
def merge_cat(bricks: list[Brick], params: CatParams) -> Merged:
    """Concatenate the parents' ranks per module: Σ wᵢ ΔWᵢ exactly, at the summed rank."""
    weights = params.weights_for(len(bricks))
    parts = {mod: _stored(_concatenated(bricks, weights, mod)) for mod in _modules(bricks, weights)}
    return Merged(parts, {"exact": True, "rank": max((m.rank for m in parts.values()), default=0)})


def _refactored_sum(bricks: list[Brick], params: SvdParams) -> Merged:
    """Σ wᵢ ΔWᵢ per module, truncated by SVD of its factors (never forming the d_out x d_in matrix)."""
    weights = params.weights_for(len(bricks))
    parts, errors, ranks = {}, {}, {}
    for mod in _progress(_modules(bricks, weights), params, "svd"):
        lr = _concatenated(bricks, weights, mod)
        rank = min(_rank_for(bricks, mod, params.target_rank), lr.rank)
        cut, errors[mod] = truncate(lr, rank)
        parts[mod] = _stored(cut)
        ranks[mod] = rank
    return Merged(parts, {"exact": False, **_error_metrics(errors, ranks)})


@merge_method("linear", reference_url="https://arxiv.org/abs/2212.04089", kinds=("lora",), params=LinearParams)
def merge_linear(bricks: list[Brick], params: LinearParams) -> Merged:
    """Task arithmetic on the deltas, Σ wᵢ ΔWᵢ: exact (as cat), or re-factored to target_rank by SVD."""
    if params.target_rank is None:
        return merge_cat(bricks, CatParams(weights=params.weights, progress=params.progress))
    return _refactored_sum(bricks, params)


@merge_method("svd", reference_url="https://huggingface.co/docs/peft/developer_guides/model_merging",
              kinds=("lora",), params=SvdParams)
def merge_svd(bricks: list[Brick], params: SvdParams) -> Merged:
    """Σ wᵢ ΔWᵢ re-factored by SVD to target_rank (default: the largest parent rank of each module)."""
    return _refactored_sum(bricks, params)


# --- LoRA: delta-space methods (dense ΔW per module) -----------------------------------------------------------
def _dense_deltas(bricks: list[Brick], mod: str) -> list[torch.Tensor]:
    """Each parent's effective ΔW = scaling · B A of `mod` (float64), zero where the parent lacks it."""
    d_in, d_out = lora_module_shape(mod, bricks[0].meta.host)
    out = []
    for b in bricks:
        m = b.lora.get(mod)
        out.append(torch.zeros(d_out, d_in, dtype=torch.float64) if m is None
                   else (m.B.double() * m.scaling) @ m.A.double())
    return out


def _keep_largest(delta: torch.Tensor, density: float) -> torch.Tensor:
    """The top `density` fraction of entries by magnitude (TIES' trim), the rest zero."""
    if density >= 1:
        return delta
    k = max(1, round(density * delta.numel()))
    keep = torch.zeros(delta.numel(), dtype=torch.bool)
    keep[delta.abs().flatten().topk(k).indices] = True
    return delta * keep.view_as(delta)


def _drop_random(delta: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    """DARE: keep each entry with probability `density`, rescaled by 1/density (expectation unchanged)."""
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(delta.shape, generator=gen, dtype=torch.float64) < density  # rand < 1 always: density 1 keeps all
    return delta * keep / density


def _mask_seed(seed: int, mod: str, parent: int) -> int:
    """A seed per (seed, module, parent) that does not depend on Python's hash salt or on visiting order."""
    digest = hashlib.blake2b(f"{seed}:{mod}:{parent}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _elect_and_merge(taus: torch.Tensor, method: str) -> torch.Tensor:
    """TIES' sign election and disjoint merge over stacked weighted deltas [n, d_out, d_in]."""
    signs = taus.sign()
    votes = taus.sum(0) if method == "total" else signs.sum(0)
    elected = torch.where(votes >= 0, 1.0, -1.0).to(taus.dtype)
    agree = signs == elected  # zero entries (trimmed, dropped, weight 0) have sign 0: they never agree
    count = agree.sum(0).clamp(min=1)
    return (taus * agree).sum(0) / count


def _svd_factor(delta: torch.Tensor, rank: int) -> tuple[LowRank, float]:
    """Best rank-`rank` factors of a dense delta and the relative Frobenius error of dropping the rest."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    total = float(s.square().sum())
    err = float(s[rank:].square().sum() / total) ** 0.5 if total > 0 else 0.0
    return LowRank(vh[:rank].float(), (u[:, :rank] * s[:rank]).float()), err


def _delta_space(bricks: list[Brick], params: SvdParams, combine: Callable[[str, list[torch.Tensor]], torch.Tensor],
                 what: str) -> Merged:
    """Per module: combine the parents' dense deltas, then re-factor to the target rank."""
    parts, errors, ranks = {}, {}, {}
    for mod in _progress(_modules(bricks, params.weights_for(len(bricks))), params, what):
        rank = _rank_for(bricks, mod, params.target_rank)
        lr, errors[mod] = _svd_factor(combine(mod, _dense_deltas(bricks, mod)), rank)
        parts[mod] = _stored(lr)
        ranks[mod] = rank
    return Merged(parts, _error_metrics(errors, ranks))


def _weighted(deltas: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    return torch.stack([d * w for d, w in zip(deltas, weights, strict=True)])


@merge_method("magnitude_prune", reference_url="https://arxiv.org/abs/2306.01708", kinds=("lora",),
              params=MagnitudeParams)
def merge_magnitude_prune(bricks: list[Brick], params: MagnitudeParams) -> Merged:
    """Keep each parent's largest-magnitude delta entries (density), then Σ wᵢ; re-factored by SVD."""
    weights = params.weights_for(len(bricks))

    def combine(mod: str, deltas: list[torch.Tensor]) -> torch.Tensor:
        return _weighted([_keep_largest(d, params.density) for d in deltas], weights).sum(0)

    return _delta_space(bricks, params, combine, "magnitude_prune")


@merge_method("ties", reference_url="https://arxiv.org/abs/2306.01708", kinds=("lora",), params=TiesParams)
def merge_ties(bricks: list[Brick], params: TiesParams) -> Merged:
    """TIES-Merging: trim to the largest entries, elect a sign per entry, average those that agree."""
    weights = params.weights_for(len(bricks))

    def combine(mod: str, deltas: list[torch.Tensor]) -> torch.Tensor:
        taus = _weighted([_keep_largest(d, params.density) for d in deltas], weights)
        return _elect_and_merge(taus, params.majority_sign_method)

    return _delta_space(bricks, params, combine, "ties")


def _dare_dropped(mod: str, deltas: list[torch.Tensor], params: DareParams) -> list[torch.Tensor]:
    return [_drop_random(d, params.density, _mask_seed(params.seed, mod, i)) for i, d in enumerate(deltas)]


@merge_method("dare_linear", reference_url="https://arxiv.org/abs/2311.03099", kinds=("lora",), params=DareParams)
def merge_dare_linear(bricks: list[Brick], params: DareParams) -> Merged:
    """DARE: drop delta entries at random, rescale the rest by 1/density, then Σ wᵢ; re-factored by SVD."""
    weights = params.weights_for(len(bricks))

    def combine(mod: str, deltas: list[torch.Tensor]) -> torch.Tensor:
        return _weighted(_dare_dropped(mod, deltas, params), weights).sum(0)

    merged = _delta_space(bricks, params, combine, "dare_linear")
    merged.metrics["seed"] = params.seed
    return merged


@merge_method("dare_ties", reference_url="https://arxiv.org/abs/2311.03099", kinds=("lora",),
              params=DareTiesParams)
def merge_dare_ties(bricks: list[Brick], params: DareTiesParams) -> Merged:
    """DARE's random drop and rescale, then TIES' sign election and disjoint merge; re-factored by SVD."""
    weights = params.weights_for(len(bricks))

    def combine(mod: str, deltas: list[torch.Tensor]) -> torch.Tensor:
        taus = _weighted(_dare_dropped(mod, deltas, params), weights)
        return _elect_and_merge(taus, params.majority_sign_method)

    merged = _delta_space(bricks, params, combine, "dare_ties")
    merged.metrics["seed"] = params.seed
    return merged


# --- neuron bricks ---------------------------------------------------------------------------------------------
def _neuron_layers(bricks: list[Brick]) -> list[int]:
    return sorted({layer for b in bricks for layer in b.neurons})


def _has_offset(bricks: list[Brick], layer: int) -> bool:
    return any(layer in b.neurons and b.neurons[layer].offset is not None for b in bricks)


def _sets_from_map(nmap: NeuronMap, chosen: dict[int, torch.Tensor], bricks: list[Brick]) -> dict[int, NeuronSet]:
    """The composed map restricted to the chosen neurons of each layer (offset kept where a parent had one)."""
    sets = {}
    for layer, idx in chosen.items():
        offset = nmap.offset[layer, idx].clone() if _has_offset(bricks, layer) else None
        sets[layer] = NeuronSet(idx, nmap.gain[layer, idx].clone(), offset)
    return sets


def _neuron_merged(sets: dict[int, NeuronSet], bricks: list[Brick]) -> Merged:
    has_offset = any(s.offset is not None and bool((s.offset != 0).any()) for s in sets.values())
    metrics = {"neurons": sum(int(s.indices.numel()) for s in sets.values()),
               "parent_neurons": {b.name: b.size() for b in bricks}}
    return Merged(sets, metrics, {"has_offset": has_offset})


def _composed(bricks: list[Brick]) -> NeuronMap:
    host = bricks[0].meta.host
    return compose_neurons([BrickUse(b) for b in bricks], host.n_layers, host.d_ff)


@merge_method("union", reference_url="https://arxiv.org/abs/2409.02877", kinds=("neurons",),
              params=NeuronMergeParams)
def merge_union(bricks: list[Brick], params: NeuronMergeParams) -> Merged:
    """Every neuron of any parent, overlapping maps composed in order: serves as the parents together."""
    chosen = {}
    for layer in _neuron_layers(bricks):
        held = [b.neurons[layer].indices for b in bricks if layer in b.neurons]
        chosen[layer] = torch.cat(held).unique()  # sorted, as a neuron set must be
    return _neuron_merged(_sets_from_map(_composed(bricks), chosen, bricks), bricks)


@merge_method("intersection", reference_url="https://arxiv.org/abs/2409.02877", kinds=("neurons",),
              params=NeuronMergeParams)
def merge_intersection(bricks: list[Brick], params: NeuronMergeParams) -> Merged:
    """Only the neurons every parent touches, their maps composed in order."""
    chosen = {}
    for layer in _neuron_layers(bricks):
        if not all(layer in b.neurons for b in bricks):
            continue
        common = set(bricks[0].neurons[layer].indices.tolist())
        for b in bricks[1:]:
            common &= set(b.neurons[layer].indices.tolist())
        if common:
            chosen[layer] = torch.tensor(sorted(common), dtype=torch.int64)
    return _neuron_merged(_sets_from_map(_composed(bricks), chosen, bricks), bricks)


@merge_method("weighted", reference_url="https://arxiv.org/abs/2203.05482", kinds=("neurons",),
              params=NeuronWeightedParams)
def merge_weighted(bricks: list[Brick], params: NeuronWeightedParams) -> Merged:
    """Per neuron, the weighted mean of the parents' gains and offsets (a parent without it: g=1, v=0)."""
    weights = params.weights_for(len(bricks))
    total = sum(weights)
    d_ff = bricks[0].meta.host.d_ff
    sets = {}
    for layer in _neuron_layers(bricks):
        gain = torch.zeros(d_ff, dtype=torch.float64)
        offset = torch.zeros(d_ff, dtype=torch.float64)
        for b, w in zip(bricks, weights, strict=True):
            g, v = torch.ones(d_ff, dtype=torch.float64), torch.zeros(d_ff, dtype=torch.float64)
            s = b.neurons.get(layer)
            if s is not None:
                g[s.indices] = s.gain.double()
                if s.offset is not None:
                    v[s.indices] = s.offset.double()
            gain += w * g
            offset += w * v
        idx = torch.cat([b.neurons[layer].indices for b in bricks if layer in b.neurons]).unique()
        v_out = (offset[idx] / total).float() if _has_offset(bricks, layer) else None
        sets[layer] = NeuronSet(idx, (gain[idx] / total).float(), v_out)
    return _neuron_merged(sets, bricks)
