"""Activation-zone profiles (intra-neuronal attention, arXiv 2503.12992), and token-level sampling.

A neuron's activation range (signed h) is split into quantile zones (5 by default: q0-20 ... q80-100).
For each zone we record the tokens most concentrated in it and how homogeneous they are:
`homogeneity` is the share of the zone's tokens in its most common token category (its purity);
`excess_homogeneity` corrects that for chance, max over categories of (share - base rate) /
(1 - base rate), because lowercase word pieces are ~2/3 of all tokens and dominate raw purity. The
paper's finding is that the top zone (the strongest activations) is the most homogeneous: a neuron
"attends" to one kind of token when it fires hard and to a mix when it fires weakly.

Token categories are deliberately simple and language-agnostic, read from the token's text:
whitespace, digit, punctuation, code symbol, capitalised word piece, lowercase word piece, other.
Each zone also records its homogeneity over document labels (`label_homogeneity`).

The profile is JSON-able and lives in `BrickMeta.profile` (shape below); `brick show` prints its
`summary` and, per neuron, each zone and its top tokens::

    {"summary": str, "n_zones": int, "tokens": int,
     "neurons": [{"layer": int, "neuron": int,
                  "zones": [{"zone": "q80-100", "range": [lo, hi], "top_tokens": [str, ...],
                             "homogeneity": float, "top_category": str,
                             "excess_homogeneity": float, "excess_category": str,
                             "label_homogeneity": float, "top_label": str, "tokens": int}]}],
     "top_zone_most_homogeneous": float, "top_zone_most_excess_homogeneous": float,
     "category_base_rates": {category: share}}

This module also holds the token-level helpers the cluster and rare-token extractors share: sampling
a corpus, cut into pieces of at most `max_len` tokens, down to a token budget, and collecting per-token
activations.
"""

from __future__ import annotations

import hashlib
import string
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import torch

from bricks.corpus import Corpus, Doc
from bricks.errors import InvalidInputError
from bricks.format import Brick
from bricks.profile import chunk_corpus, iter_activations

CATEGORIES = ("whitespace", "digit", "punctuation", "code_symbol", "capitalized", "lowercase", "other")
_PUNCT = set(".,;:!?'\"-–—…«»“”‘’")
_CODE = set(string.punctuation) - _PUNCT
_TOP_TOKENS = 8


# --- token-level sampling (shared by the extractors) -----------------------------------------------
def token_slices(corpus: Corpus, tokenizer, max_tokens: int | None = None, max_len: int = 256,
                 seed: int = 0) -> Corpus:
    """The corpus cut into pieces of <= max_len tokens (`chunk_corpus`), sampled down to max_tokens.

    The sample is deterministic (ordered by a hash of the piece and `seed`), so it mixes labels in
    proportion to their size and the same call always returns the same pieces.
    """
    pieces = chunk_corpus(corpus, tokenizer, max_len)
    if max_tokens is None:
        return pieces
    out, total = Corpus(), 0
    for doc in sorted(pieces, key=lambda d: _seeded_key(d, seed)):
        if total >= max_tokens:
            break
        out.append(doc)
        total += len(tokenizer(doc.text, add_special_tokens=False)["input_ids"])
    return out


def _seeded_key(doc: Doc, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}\0{doc.label}\0{doc.text}".encode()).digest()


@dataclass
class TokenActivations:
    """Activations of chosen neurons on every (non-padding) token of a sample."""

    acts: dict[int, torch.Tensor]  # layer -> float32 [N, r] (r = the layer's chosen neurons)
    neurons: dict[int, torch.Tensor]  # layer -> int64 [r]
    token_ids: torch.Tensor  # int64 [N]
    label_ids: torch.Tensor  # int64 [N], index into `labels`
    labels: list[str]

    @property
    def n_tokens(self) -> int:
        return int(self.token_ids.numel())


def collect_activations(host, corpus: Corpus, neurons: dict[int, torch.Tensor | None], batch_tokens: int = 4096,
                        progress: bool = False) -> TokenActivations:
    """Per-token h of the given neurons ({layer: indices}, None = the whole layer) over `corpus`.

    `corpus` should already be cut to <= 256-token pieces (`token_slices`): nothing is truncated here.
    """
    sel = {layer: torch.arange(host.d_ff) if idx is None else torch.as_tensor(idx, dtype=torch.int64)
           for layer, idx in neurons.items()}
    labels = corpus.labels()
    rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in sel}
    ids, labs = [], []
    for batch, acts in iter_activations(host, corpus, layers=list(sel), batch_tokens=batch_tokens,
                                        max_len=1 << 20, progress=progress):
        mask = batch.attention_mask.bool()
        for layer, idx in sel.items():
            rows[layer].append(acts[layer][mask][:, idx].float().clone())
        ids.append(batch.input_ids[mask])
        lab = torch.tensor([labels.index(x) for x in batch.labels])
        labs.append(lab[:, None].expand_as(mask)[mask])
    if not ids:
        raise InvalidInputError("the corpus gave no tokens to profile", "pass a corpus with text in it")
    return TokenActivations({layer: torch.cat(r) for layer, r in rows.items()}, sel, torch.cat(ids),
                            torch.cat(labs), labels)


# --- token categories ------------------------------------------------------------------------------
def token_category(text: str) -> str:
    """One of CATEGORIES for a token's text (a leading space marks a word start and is ignored)."""
    core = text.strip()
    if not core:
        return "whitespace"
    if all(c.isdigit() for c in core):
        return "digit"
    if all(c in _PUNCT for c in core):
        return "punctuation"
    if all(c in _CODE or c in _PUNCT for c in core):
        return "code_symbol"
    if core[0].isalpha():
        return "capitalized" if core[0].isupper() else "lowercase"
    return "other"


@dataclass
class _Sample:
    """What every zone record reads: token texts and categories, and the sample's base rates."""

    texts: dict[int, str]  # token id -> text
    cats: dict[int, str]  # token id -> category
    totals: Counter  # token id -> occurrences in the sample
    base: dict[str, float]  # category -> share of the sample's tokens


def _sample_info(tokenizer, token_ids: torch.Tensor) -> _Sample:
    totals = Counter(token_ids.tolist())
    texts = {i: tokenizer.decode([i]) for i in sorted(totals)}
    cats = {i: token_category(t) for i, t in texts.items()}
    base: Counter = Counter()
    for i, n in totals.items():
        base[cats[i]] += n
    n_all = sum(totals.values())
    return _Sample(texts, cats, totals, {c: n / n_all for c, n in base.items()})


# --- zones -----------------------------------------------------------------------------------------
def zone_edges(values: torch.Tensor, n_zones: int) -> np.ndarray:
    """Quantile edges [n_zones + 1] of a neuron's activations (first = min, last = max)."""
    return np.quantile(values.double().numpy(), np.linspace(0.0, 1.0, n_zones + 1))


def assign_zones(values: torch.Tensor, edges: np.ndarray) -> np.ndarray:
    """Zone index per token; ties at an edge go to the lower zone, the maximum to the top zone."""
    z = np.searchsorted(edges[1:-1], values.double().numpy(), side="left")
    return z.astype(np.int64)


def _purity(items: list) -> tuple[float, str]:
    if not items:
        return 0.0, ""
    top, n = Counter(items).most_common(1)[0]
    return n / len(items), top


def _excess(cats: list[str], base: dict[str, float]) -> tuple[float, str]:
    """Chance-corrected homogeneity: max over categories of (share here - base) / (1 - base).

    0 when the zone mixes categories as the whole sample does, 1 when it holds one category only.
    Purity alone mostly measures the base rate of lowercase word pieces (~2/3 of tokens).
    """
    if not cats:
        return 0.0, ""
    shares = {c: n / len(cats) for c, n in Counter(cats).items()}
    score = {c: (p - base[c]) / max(1.0 - base[c], 1e-12) for c, p in shares.items()}
    top = max(score, key=lambda c: (score[c], c))
    return max(score[top], 0.0), top


def _zone_name(z: int, n_zones: int) -> str:
    step = 100 // n_zones
    return f"q{z * step}-{100 if z == n_zones - 1 else (z + 1) * step}"


def _zone_record(name: str, vals: np.ndarray, ids: list[int], labs: list[str], info: _Sample) -> dict:
    cats = [info.cats[i] for i in ids]
    homog, top_cat = _purity(cats)
    excess, excess_cat = _excess(cats, info.base)
    lab_homog, top_lab = _purity(labs)
    # Rank by count x the share of the token's occurrences that land here: raw counts would put ',' and
    # ' the' at the top of every zone.
    counts = Counter(ids)
    top = sorted(counts, key=lambda t: (-counts[t] ** 2 / info.totals[t], t))[:_TOP_TOKENS]
    rng = [float(vals.min()), float(vals.max())] if len(vals) else [0.0, 0.0]
    return {"zone": name, "range": rng, "top_tokens": [info.texts[t] for t in top],
            "homogeneity": round(homog, 4), "top_category": top_cat,
            "excess_homogeneity": round(excess, 4), "excess_category": excess_cat,
            "label_homogeneity": round(lab_homog, 4), "top_label": top_lab, "tokens": len(ids)}


def neuron_zones(values: torch.Tensor, token_ids: torch.Tensor, label_names: list[str], info: _Sample,
                 n_zones: int = 5) -> list[dict]:
    """Zone records (lowest zone first) for one neuron's activations over tokens."""
    zones = assign_zones(values, zone_edges(values, n_zones))
    v, ids = values.numpy(), token_ids.tolist()
    out = []
    for z in range(n_zones):
        pos = np.flatnonzero(zones == z)
        out.append(_zone_record(_zone_name(z, n_zones), v[pos], [ids[p] for p in pos],
                                [label_names[p] for p in pos], info))
    return out


def profile_from_activations(ta: TokenActivations, tokenizer, n_zones: int = 5) -> dict:
    """The zone profile of every neuron held in `ta` (see the module docstring for the shape)."""
    info = _sample_info(tokenizer, ta.token_ids)
    label_names = [ta.labels[i] for i in ta.label_ids.tolist()]
    neurons = []
    for layer in sorted(ta.acts):
        for col, neuron in enumerate(ta.neurons[layer].tolist()):
            zones = neuron_zones(ta.acts[layer][:, col], ta.token_ids, label_names, info, n_zones)
            neurons.append({"layer": layer, "neuron": neuron, "zones": zones})
    return {"summary": _summary(neurons, ta.n_tokens, n_zones), "n_zones": n_zones, "tokens": ta.n_tokens,
            "top_zone_most_homogeneous": top_zone_share(neurons),
            "top_zone_most_excess_homogeneous": top_zone_share(neurons, "excess_homogeneity"),
            "category_base_rates": {c: round(p, 4) for c, p in sorted(info.base.items())}, "neurons": neurons}


def top_zone_share(neurons: list[dict], key: str = "homogeneity") -> float:
    """Fraction of neurons whose top zone is (one of) their most homogeneous zones by `key`."""
    if not neurons:
        return 0.0
    hits = [n["zones"][-1][key] >= max(z[key] for z in n["zones"]) for n in neurons]
    return sum(hits) / len(hits)


def zone_means(neurons: list[dict], key: str = "homogeneity") -> list[float]:
    """Mean of `key` per zone position (lowest zone first) over the neurons."""
    return [round(float(np.mean([n["zones"][z][key] for n in neurons])), 3) for z in range(len(neurons[0]["zones"]))]


def _summary(neurons: list[dict], n_tokens: int, n_zones: int) -> str:
    if not neurons:
        return "no neurons profiled"
    cats = Counter(n["zones"][-1]["top_category"] for n in neurons).most_common(3)
    return (f"{len(neurons)} neurons over {n_tokens} tokens, {n_zones} quantile zones: the top zone is the most "
            f"homogeneous for {top_zone_share(neurons):.0%} of them by token-category purity, "
            f"{top_zone_share(neurons, 'excess_homogeneity'):.0%} by chance-corrected purity; "
            f"means per zone, low to high: purity {zone_means(neurons)}, chance-corrected "
            f"{zone_means(neurons, 'excess_homogeneity')}, label purity {zone_means(neurons, 'label_homogeneity')}; "
            "top-zone categories: " + ", ".join(f"{c} ({k})" for c, k in cats))


def _brick_neurons(brick: Brick, max_neurons: int) -> dict[int, torch.Tensor]:
    """Up to max_neurons of the brick's neurons, spread over its layers in order."""
    if brick.kind != "neurons":
        raise InvalidInputError(f"brick {brick.name!r} is a {brick.kind} brick; zone profiles need neuron bricks",
                                "profile a neurons brick")
    out, left = {}, max_neurons
    for layer in brick.layers():
        idx = brick.neurons[layer].indices[:left]
        if idx.numel():
            out[layer] = idx
            left -= idx.numel()
    return out


def select_neurons(ta: TokenActivations, neurons: dict[int, torch.Tensor]) -> TokenActivations:
    """The activations of a subset of the neurons `ta` holds (no new forward pass)."""
    acts, sel = {}, {}
    for layer, idx in neurons.items():
        pos = {int(n): i for i, n in enumerate(ta.neurons[layer].tolist())}
        cols = torch.tensor([pos[int(n)] for n in idx])
        acts[layer], sel[layer] = ta.acts[layer][:, cols], torch.as_tensor(idx, dtype=torch.int64)
    return TokenActivations(acts, sel, ta.token_ids, ta.label_ids, ta.labels)


def brick_zone_profile(ta: TokenActivations, brick: Brick, tokenizer, n_zones: int = 5,
                       max_neurons: int = 32) -> dict:
    """The zone profile of a brick from activations already collected (they must cover its neurons)."""
    return profile_from_activations(select_neurons(ta, _brick_neurons(brick, max_neurons)), tokenizer, n_zones)


def zone_profile(host, brick: Brick, corpus: Corpus, n_zones: int = 5, max_neurons: int = 32,
                 max_tokens: int | None = 8_000, progress: bool = False) -> dict:
    """The activation-zone profile of (up to max_neurons of) a neurons brick over `corpus`."""
    if n_zones < 2 or 100 % n_zones:
        raise InvalidInputError(f"n_zones={n_zones} must divide 100 and be >= 2", "use 2, 4, 5 or 10")
    sample = token_slices(corpus, host.tokenizer, max_tokens=max_tokens)
    ta = collect_activations(host, sample, _brick_neurons(brick, max_neurons), progress=progress)
    return profile_from_activations(ta, host.tokenizer, n_zones)


def attach_profile(brick: Brick, profile: dict) -> Brick:
    """A copy of the brick whose metadata carries `profile` (the tensors are shared, not copied)."""
    return replace(brick, meta=brick.meta.model_copy(update={"profile": profile}))
