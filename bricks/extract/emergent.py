"""Emergent functional partitions: one ablation brick per corpus label (languages, code, math...).

Scores, all from one activation profile (`bricks.profile`) of the training split:
- FuncScore (Configurable Foundation Models, arXiv 2409.02877): average precision of a neuron's
  per-sequence mean |h| for "the sequence has label L";
- LAPE (Tang et al. 2024, arXiv 2402.16438): activation probability per label, normalised across
  labels, entropy; language-specific neurons are frequently active and low-entropy.
Selection is described in `select_neurons`. Each candidate is then ablated on a held-out slice of the
corpus: a brick that hurts other labels about as much as its own (typically the dominant language,
whose neurons every text needs) is reported as general in `Extraction.skipped`, not published,
unless `force`.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator
from tqdm.auto import tqdm

from bricks.compose import BrickUse
from bricks.corpus import BUILTIN, DATA_DIR, Corpus, load_labelled
from bricks.errors import InvalidInputError
from bricks.evaluate import delta_pct, label_perplexity
from bricks.extract import Extraction, extractor
from bricks.extract.options import ExtractorOptions, comma_list
from bricks.format import Brick
from bricks.kinds.neurons import neuron_brick
from bricks.profile import Profile, chunk_corpus, profile_corpus

METHODS = ("auto", "funcscore", "lape", "combined")
_AP_CHUNK = 8192  # neurons per sort when computing average precision


# --- scores ----------------------------------------------------------------------------------------
def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """AP of every column of `scores` [n_docs, n] for the boolean `positive` [n_docs] (ties by order)."""
    n_pos = int(positive.sum())
    if n_pos == 0:
        raise InvalidInputError("a label has no documents in the profile", "profile a corpus that has it")
    out = torch.empty(scores.shape[1], dtype=torch.float64)
    ranks = torch.arange(1, scores.shape[0] + 1, dtype=torch.float64)[:, None]
    for i in range(0, scores.shape[1], _AP_CHUNK):
        order = torch.argsort(scores[:, i: i + _AP_CHUNK].float(), dim=0, descending=True, stable=True)
        hit = positive[order].to(torch.float64)
        out[i: i + _AP_CHUNK] = ((hit.cumsum(0) / ranks) * hit).sum(0) / n_pos
    return out


def funcscore(profile: Profile, label: str) -> torch.Tensor:
    """[L, d_ff] average precision of per-sequence mean |h| for the label."""
    flat = profile.doc_mean_abs.reshape(profile.n_docs, -1)
    return average_precision(flat, profile.doc_is(label)).reshape(profile.n_layers, profile.d_ff)


def lape_entropy(profile: Profile) -> torch.Tensor:
    """[L, d_ff] entropy of the activation probabilities normalised across labels (low = specific)."""
    p = profile.act_prob()
    q = p / p.sum(0, keepdim=True).clamp(min=1e-12)
    return -(q * q.clamp(min=1e-12).log()).sum(0)


def energy(profile: Profile, w_down_norm: torch.Tensor) -> torch.Tensor:
    """[n_labels, L, d_ff] mean squared contribution E[h^2] * |W_down[:, n]|^2: what zeroing the neuron
    removes from the residual stream on each label's tokens, to first order."""
    return profile.mean_sq() * w_down_norm[None] ** 2


def down_norms(host) -> torch.Tensor:
    return torch.stack([host.adapter.ffn_weights(host.model, i)[2].detach().float().norm(dim=0)
                        for i in range(host.n_layers)]).double()


# --- selection -----------------------------------------------------------------------------------------
def _top(score: torch.Tensor, k: int, eligible: torch.Tensor | None = None) -> torch.Tensor:
    """Flat indices of the k best scores (among `eligible`), best first."""
    s = score.flatten().clone()
    if eligible is not None:
        s[~eligible.flatten()] = -math.inf
    k = min(k, int(torch.isfinite(s).sum()))
    return torch.topk(s, k).indices


def by_layer(flat: torch.Tensor, d_ff: int) -> dict[int, torch.Tensor]:
    """Flat neuron indices (layer * d_ff + i) as {layer: sorted indices}."""
    layers = flat // d_ff
    return {int(layer): torch.sort(flat[layers == layer] % d_ff).values for layer in layers.unique()}


def lape_eligible(profile: Profile, label: str, quantile: float = 0.95) -> torch.Tensor:
    """[L, d_ff] neurons whose activation probability on `label` is in the top (1 - quantile) of all
    (label, neuron) probabilities: LAPE's "frequently active" filter."""
    p = profile.act_prob()
    thr = torch.quantile(p.flatten().float()[:: max(1, p.numel() // 200_000)], quantile).item()
    return p[profile.label_index(label)] > thr


def select_neurons(profile: Profile, label: str, method: str = "funcscore", top_pct: float = 0.5,
                   w_down_norm: torch.Tensor | None = None) -> tuple[dict[int, torch.Tensor], dict]:
    """The brick's neurons ({layer: sorted indices}) and selection statistics.

    - funcscore: the top `top_pct`% of all neurons by average precision. Many neurons separate a
      language perfectly (AP = 1), so ties are broken by the neuron's energy on the label (E[h^2] times
      |W_down column|^2): of two equally specific neurons, the one that writes more is kept.
    - lape: among LAPE-frequent neurons for the label, the `top_pct`% with the lowest entropy.
    - combined: FuncScore order, restricted to neurons whose LAPE entropy is below the median.
    """
    if method not in METHODS[1:]:
        raise InvalidInputError(f"unknown emergent scoring {method!r}", f"use one of: {', '.join(METHODS)}")
    k = max(1, round(top_pct / 100 * profile.n_layers * profile.d_ff))
    ap = funcscore(profile, label)
    ent = lape_entropy(profile)
    i = profile.label_index(label)
    en = energy(profile, w_down_norm)[i] if w_down_norm is not None else profile.mean_abs()[i]
    tie = en / en.max().clamp(min=1e-12) * 1e-6  # only reorders (near-)ties of AP
    if method == "funcscore":
        flat = _top(ap + tie, k)
    elif method == "lape":
        flat = _top(-ent, k, lape_eligible(profile, label))
    else:
        flat = _top(ap + tie, k, ent <= ent.median())
    stats = {"k": int(flat.numel()), "mean_ap": float(ap.flatten()[flat].mean()),
             "mean_lape_entropy": float(ent.flatten()[flat].mean()),
             "ap_one": int((ap.flatten()[flat] >= 1.0 - 1e-9).sum())}
    return by_layer(flat, profile.d_ff), stats


# --- bricks --------------------------------------------------------------------------------------------
def brick_name(prefix: str, label: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", f"{prefix}-{label}".lower()).strip("-")[:64]
    if not name:
        raise InvalidInputError(f"cannot make a brick name from {prefix!r} and label {label!r}",
                                "pass --name with lowercase letters, digits, '.', '_' or '-'")
    return name


def make_brick(host, profile: Profile, label: str, layers: dict[int, torch.Tensor], name: str, texts: list[str],
               **meta) -> Brick:
    """An ablation brick (gain 0) carrying its neurons' mean h on every label, for steering variants."""
    from bricks.format import RoutingKeys

    brick = neuron_brick(name, host.ref, layers, gain=0.0, labels=list(profile.labels),
                         routing=RoutingKeys(texts=texts, label=label), **meta)
    means = profile.mean()
    for layer, s in brick.neurons.items():
        s.label_means = means[:, layer, s.indices].float().contiguous()
    brick.validate()
    return brick


ROUTING_KEYS = 64  # routing keys per brick: the router fits a centroid, classifier and threshold on them


ROUTING_REQUESTS = DATA_DIR / "routing" / "keys.jsonl"  # requests written as routing keys for the shipped labels
NO_REQUESTS = "none"


def routing_requests(source: str | None = BUILTIN) -> dict[str, list[str]]:
    """Label -> its requests, from a JSONL of labelled requests (`{"text", "label"}`; `builtin` = the shipped
    ROUTING_REQUESTS, `none`/None = no requests), read once. A brick's paragraphs are what its label's
    documents look like; requests are what people send: short questions and instructions, which for code
    and maths read like English about code or maths rather than like code or maths. The shipped requests
    were written for routing keys and never for evaluation: bricks/data/routing/prompts.jsonl (the
    evaluation prompts) shares none of their wordings."""
    if source is None or source == NO_REQUESTS:
        return {}
    path = ROUTING_REQUESTS if source == BUILTIN else Path(source)
    if not path.is_file():
        raise InvalidInputError(f"routing requests file {path} does not exist",
                                'pass a JSONL of {"text": ..., "label": ...}, builtin, or none')
    out: dict[str, list[str]] = {}
    for text, label in load_labelled(path):
        out.setdefault(label, []).append(text)
    return out


def example_texts(corpus: Corpus, label: str, n: int = ROUTING_KEYS, chars: int = 300) -> list[str]:
    """The brick's routing keys: `n` paragraphs of ~`chars` characters spread over all of the label's
    documents (not only their openings), deterministic by content hash, not file order."""
    paras = [p for d in corpus.by_label(label) for p in paragraphs(d.text, chars)]
    paras.sort(key=lambda p: hashlib.sha256(p.encode()).digest())
    return paras if len(paras) <= n else [paras[i * len(paras) // n] for i in range(n)]


def paragraphs(text: str, chars: int = 300) -> list[str]:
    """Consecutive pieces of ~`chars` characters cut at whitespace; a last piece under half of that
    is dropped unless it is the only one."""
    words, out, cur = text.split(" "), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > chars:
            out.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    if cur.strip() and (len(cur) >= chars // 2 or not out):
        out.append(cur)
    return [p.strip() for p in out if p.strip()]


# --- the extractor ---------------------------------------------------------------------------------------
def cap_tokens(corpus: Corpus, tokenizer, per_label: int | None) -> Corpus:
    """At most ~`per_label` tokens of each label (deterministic by content hash), to bound evaluation time."""
    if not per_label:
        return corpus
    out = Corpus()
    for lab in corpus.labels():
        n = 0
        for d in sorted(corpus.by_label(lab), key=lambda d: d.key()):
            if n >= per_label:
                break
            out.append(d)
            n += len(tokenizer(d.text, add_special_tokens=False).input_ids)
    return out


def held_out_check(own: str, delta: dict[str, float], min_selectivity: float, min_own: float) -> tuple[dict, str]:
    """Metrics of one candidate and, if it should not be published as a label brick, why."""
    others = {k: v for k, v in delta.items() if k != own}
    mean_other = sum(others.values()) / max(len(others), 1)
    m = {"own": delta[own], "mean_other": mean_other, "max_other": max(others.values(), default=0.0),
         "own_over_other": delta[own] / max(mean_other, 0.1), "delta_ppl_pct": delta}
    why = ""
    if delta[own] < min_own:
        why = f"ablating it barely changes {own} (ΔPPL {delta[own]:+.1f}% < {min_own:g}%)"
    elif delta[own] < min_selectivity * max(mean_other, 0.1):
        why = (f"general: it hurts other labels about as much as {own} (own {delta[own]:+.1f}% vs mean other "
               f"{mean_other:+.1f}%, need {min_selectivity:g}x)")
    return m, why


def _train_profile(host, train: Corpus, held: Corpus, profile: Profile | str | None,
                   opt: EmergentOptions) -> Profile:
    """The training split's profile: computed here, or given (a Profile or a path) and checked."""
    from bricks.profile import signed_key

    if isinstance(profile, (str, bytes)) or hasattr(profile, "__fspath__"):
        profile = Profile.load(profile)
    if profile is None:
        return profile_corpus(host, chunk_corpus(train, host.tokenizer, opt.max_len), batch_tokens=opt.batch_tokens,
                              max_len=opt.max_len, checkpoint=opt.checkpoint, save_every=10 if opt.checkpoint else 0,
                              progress=opt.progress)
    if profile.host_fingerprint != host.ref.fingerprint:
        raise InvalidInputError("the given profile was made on another host", "profile this host's corpus")
    if set(profile.doc_key.tolist()) & {signed_key(d.key()) for d in held}:
        raise InvalidInputError("the given profile counted held-out documents, so the held-out check would "
                                "be judged on text the selection saw", "profile only the training split")
    return profile


class EmergentOptions(ExtractorOptions):
    """Options of `extract_emergent`."""

    method: Literal["auto", "funcscore", "lape", "combined"] = Field(
        "auto", description="Neuron scoring: auto (= funcscore for every label), funcscore, lape or combined "
                            "(see `select_neurons`).")
    top_pct: float = Field(0.5, gt=0, le=100, description="Brick size, % of all FFN neurons.")
    labels: list[str] | None = Field(None, description="Labels to extract (default: every label of the corpus).")
    held_out: float = Field(0.2, ge=0, lt=1, description="Fraction of documents held out to check each "
                                                         "candidate (0: no check, publish everything).")
    seed: int = Field(0, description="Seed of the held-out document split.")
    force: bool = Field(False, description="Publish candidates the held-out check calls general.")
    min_selectivity: float = Field(3.0, description="A candidate's own ΔPPL must be >= this x the mean of the "
                                                    "other labels' ΔPPL.")
    min_own: float = Field(5.0, description="A candidate's own ΔPPL % must be at least this.")
    eval_tokens: int | None = Field(2000, description="Held-out tokens per label for the check (none: all).")
    dominant: str = Field("en", description="The dominant language (recorded for steering variants).")
    max_len: int = Field(256, gt=0, description="Tokens per profiled piece of text.")
    batch_tokens: int = Field(4096, gt=0, description="Tokens per forward batch.")
    profile: str | None = Field(None, description="A saved Profile of the training split, to skip profiling.")
    checkpoint: str | None = Field(None, description="File to save and resume profiling from.")
    routing_requests: str = Field(BUILTIN, description="Requests added to each brick's routing keys, the lines "
                                  "of its label (JSONL of {text, label}; builtin: bricks/data/routing/keys.jsonl, "
                                  "32 each for fr, de and en, 48 each for code and math; none: paragraphs only).")

    _labels = field_validator("labels", mode="before")(comma_list)

    @field_validator("routing_requests")
    @classmethod
    def _requests_exist(cls, v: str) -> str:
        if v not in (BUILTIN, NO_REQUESTS) and not Path(v).is_file():
            raise ValueError(f"routing requests file {v} does not exist: pass a JSONL of {{text, label}}, "
                             "builtin, or none")
        return v


@extractor("emergent", reference_url="https://arxiv.org/abs/2409.02877", options=EmergentOptions)
def extract_emergent(host, corpus: Corpus, options: EmergentOptions | None = None, *, name: str,
                     out_dir: Path | None = None, train_profile: Profile | None = None) -> Extraction:
    """Functional partitions per label (FuncScore, LAPE), each checked by held-out ablation.

    Each label's candidate is ablated on the held-out documents; it is rejected when its own ΔPPL is below
    min_own % or below min_selectivity x the mean of the other labels' ΔPPL (force publishes it anyway).
    `train_profile` (or the `profile` option, a path) is the training split's profile, to skip profiling.
    No plots: `out_dir` is unused.
    """
    opt = options or EmergentOptions()
    train, held = corpus.split(opt.held_out, seed=opt.seed) if opt.held_out > 0 else (corpus, Corpus())
    want = _labels(corpus, opt.labels)
    held_chunks = chunk_corpus(held, host.tokenizer, opt.max_len)
    prof = _train_profile(host, train, Corpus(list(held) + list(held_chunks)), train_profile or opt.profile, opt)
    held_chunks = cap_tokens(held_chunks, host.tokenizer, opt.eval_tokens)
    # the held-out check: a pass without bricks, then one per candidate with held-out text of its label
    passes = 1 + len(set(want) & set(held_chunks.labels()))
    bar = tqdm(total=len(held_chunks) * passes, desc="held-out check", unit="doc", disable=not opt.progress or not held)
    base = label_perplexity(host, held_chunks, batch_tokens=opt.batch_tokens, max_len=opt.max_len,
                            bar=bar) if held else {}
    w_norm = down_norms(host)
    common = {"method": opt.method, "top_pct": opt.top_pct, "held_out": opt.held_out, "split_seed": opt.seed,
              "max_len": opt.max_len, "corpus_digest": corpus.digest(), "dominant": opt.dominant,
              "min_selectivity": opt.min_selectivity,
              "profile_tokens": dict(zip(prof.labels, prof.tokens.tolist(), strict=True))}
    result = Extraction(bricks=[], report={"labels": {}, "baseline_ppl": base, "params": common})
    requests = routing_requests(opt.routing_requests)
    for lab in want:
        scorer = "funcscore" if opt.method == "auto" else opt.method
        layers, stats = select_neurons(prof, lab, scorer, opt.top_pct, w_norm)
        params = {**common, "label": lab, "scorer": scorer, "size": stats["k"], "layers": sorted(layers)}
        keys = example_texts(train, lab) + requests.get(lab, [])
        brick = make_brick(host, prof, lab, layers, brick_name(name, lab), keys,
                           method="emergent", params=params, metrics={"selection": stats},
                           description=f"{lab} neurons ({scorer}, top {opt.top_pct:g}% of FFN neurons); gain 0 ablates")
        verdict = _judge(host, brick, lab, held_chunks, base, opt, bar)
        result.report["labels"][lab] = {"size": stats["k"], "selection": stats, **verdict}
        if "held_out" in verdict:
            m = verdict["held_out"]
            result.evidence[brick.name] = {"own ΔPPL%": m["own"], "mean other ΔPPL%": m["mean_other"]}
        if verdict.get("rejected") and not opt.force:
            result.skipped[brick.name] = verdict["rejected"]
            continue
        result.bricks.append(brick)
    bar.close()
    return result


def _labels(corpus: Corpus, labels: list[str] | str | None) -> list[str]:
    have = corpus.labels()
    want = have if labels is None else ([labels] if isinstance(labels, str) else list(labels))
    missing = [lab for lab in want if lab not in have]
    if missing or len(have) < 2:
        raise InvalidInputError(f"labels {missing or want} cannot be extracted from a corpus with labels {have}",
                                "emergent extraction needs >= 2 labels; ask only for labels the corpus has")
    return want


def _judge(host, brick: Brick, lab: str, held: Corpus, base: dict, opt: EmergentOptions, bar: tqdm) -> dict:
    """Ablate the candidate on held-out text; record the metrics in the brick and return the verdict."""
    if not held:
        return {}
    if lab not in base:
        return {"rejected": f"no held-out {lab} text to check it on (add {lab} documents or raise held_out)"}
    ppl = label_perplexity(host, held, [BrickUse(brick)], batch_tokens=opt.batch_tokens, max_len=opt.max_len,
                           bar=bar)
    metrics, why = held_out_check(lab, delta_pct(ppl, base), opt.min_selectivity, opt.min_own)
    brick.meta.metrics["held_out"] = metrics
    return {"held_out": metrics, **({"rejected": why} if why else {})}
