"""Sparse-probe bricks (H-Neurons, arXiv 2512.01797): the few FFN neurons whose contributions predict a label.

Input: a corpus with a binary property: two labels (one of them `positive`), or a positive label against
all the others; a record may name the characters that carry the property (`"span": [start, end]`,
read by `bricks.corpus`), else every token counts.

- Feature of neuron j on a text: its normalised contribution to its layer's FFN output, averaged over
  the span's tokens: CETT_j = |z_j| * ||W_down[:, j]|| / ||W_down z||, z = the down_proj input. Streamed
  with forward hooks on every down_proj, one [n_texts, layers x d_ff] matrix, nothing per token kept.
- Probe: an L1-regularised logistic regression over all layers x d_ff features (scikit-learn), each
  feature standardised on the fitting split. C runs over a path from the smallest C that selects any
  neuron upwards, refined by bisection where the probe outgrows the budget; the chosen C has the best
  accuracy on a validation split among those whose probe reads at most `budget` x all neurons (ties:
  validation AUROC, then log-loss; see `choose`).
- Three splits, all by document (before long documents are cut into snippets): the probe is fitted on
  one, C chosen on another, and everything reported (accuracy, AUROC, the ablation check) is measured
  on the held-out documents neither saw.
- The brick is the neurons with positive weight (their CETT rises with the property), stored as an
  ablation (gain 0), with every non-zero weight kept in its metrics. It is checked against random
  neuron sets of the same size twice: a probe restricted to them (accuracy), and their ablation
  (positive- vs negative-class perplexity, `bricks.evaluate.selectivity_report`).

Where it departs from the paper: the paper's property is hallucination (correct vs incorrect TriviaQA
answers, CETT on the answer tokens) and its causal test scales the neurons' activations; here any
labelled property, the span the user marks, standardised features, C chosen by held-out accuracy at a
budget, and the causal test is ablation by perplexity per class.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from tqdm.auto import tqdm

from bricks.corpus import Corpus, Doc, batches
from bricks.errors import InvalidInputError
from bricks.extract import Extraction, extractor
from bricks.extract.options import ExtractorOptions, comma_list
from bricks.format import Brick, RoutingKeys
from bricks.kinds.neurons import neuron_brick
from bricks.profile import chunk_corpus, decoder

POSITIVE_WORDS = ("1", "true", "yes", "positive", "pos")  # a label read as the positive class by default
REFINE = 4  # bisections of C at the budget's edge
PAST_BUDGET = 4  # the C path stops once a probe reads more than this x the budget
RANDOM_C = tuple(10.0 ** np.arange(-3.0, 2.5, 0.5))  # C grid of the (L2) probes on random neuron sets


# --- the feature ---------------------------------------------------------------------------------------
def cett(z: torch.Tensor, out: torch.Tensor, col_norm: torch.Tensor) -> torch.Tensor:
    """CETT of every neuron at every position: |z_j| * ||W_down[:, j]|| / ||W_down z||.

    `z` [..., d_ff] is down_proj's input, `out` [..., d_model] its output W_down z, `col_norm` [d_ff] the
    column norms of W_down. ||W_down (z_j e_j)|| = |z_j| ||W_down[:, j]||: the norm of what neuron j alone
    writes, as a share of the norm of what the whole layer writes."""
    return z.abs() * col_norm / out.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def span_token_mask(tokenizer, doc: Doc, mode: str, max_len: int) -> torch.Tensor:
    """[n_tokens] bool: the tokens a text's feature averages over, tokenised as `bricks.corpus.batches` does.

    mode auto: the tokens overlapping the doc's span (all tokens when it has none); all: every token;
    last: the last of those `auto` picks."""
    enc = tokenizer(doc.text, add_special_tokens=False, truncation=True, max_length=max_len,
                    return_offsets_mapping=True)
    n = len(enc["input_ids"])
    if mode == "all" or doc.span is None:
        mask = torch.ones(n, dtype=torch.bool)
    else:
        start, end = doc.span
        mask = torch.tensor([a < end and b > start for a, b in enc["offset_mapping"]], dtype=torch.bool)
    if mode == "last" and mask.any():
        last = int(torch.nonzero(mask).max())
        mask = torch.zeros(n, dtype=torch.bool)
        mask[last] = True
    return mask


@dataclass
class Features:
    """CETT features of a corpus: one row per text, one column per (layer, neuron)."""

    x: np.ndarray  # float32 [n_texts, n_layers * d_ff]
    y: np.ndarray  # int64 [n_texts], 1 = positive
    label_means: torch.Tensor  # float32 [2, n_layers, d_ff]: mean h over span tokens of the negative, positive texts


def _col_norms(host) -> list[torch.Tensor]:
    return [host.adapter.ffn_weights(host.model, i)[2].detach().float().norm(dim=0) for i in range(host.n_layers)]


@contextmanager
def _cett_hooks(host, state: dict):
    """Hooks filling state["feat"][:, layer] with each row's span-mean CETT and state["h"] with its span-sum h."""
    norms = _col_norms(host)
    handles = []

    def hook(layer: int):
        def on_down(module, args, out):
            z = args[0].float()
            w = state["weights"]  # [B, 1, T]: the span mask divided by its token count
            state["feat"][:, layer] = torch.bmm(w, cett(z, out.float(), norms[layer])).squeeze(1)
            state["h"][:, layer] = torch.bmm(state["mask"], z).squeeze(1)

        return on_down

    try:
        for layer in range(host.n_layers):
            handles.append(host.adapter.down_proj(host.model, layer).register_forward_hook(hook(layer)))
        yield
    finally:
        for h in handles:
            h.remove()


def cett_features(host, corpus: Corpus, positive: str, span: str = "auto", batch_tokens: int = 4096,
                  max_len: int = 256, progress: bool = False, desc: str = "CETT features") -> Features:
    """Stream `corpus` through the host: each text's span-mean CETT of every neuron (texts whose span has no
    token within `max_len` must be dropped before: see `drop_spanless`)."""
    masks = [span_token_mask(host.tokenizer, d, span, max_len) for d in corpus]
    x = np.zeros((len(corpus), host.n_layers * host.d_ff), dtype=np.float32)
    h_sum = torch.zeros(2, host.n_layers, host.d_ff, dtype=torch.float64)
    tokens = torch.zeros(2, dtype=torch.float64)
    y = np.array([int(d.label == positive) for d in corpus], dtype=np.int64)
    state: dict = {}
    bar = tqdm(total=len(corpus), desc=desc, unit="text", disable=not progress)
    with torch.inference_mode(), _cett_hooks(host, state):
        for b in batches(corpus, host.tokenizer, batch_tokens=batch_tokens, max_len=max_len):
            mask = torch.zeros(b.input_ids.shape, dtype=torch.float32)
            for r, i in enumerate(b.doc_index):
                mask[r, : masks[i].numel()] = masks[i].float()
            count = mask.sum(1).clamp(min=1)
            state.update(mask=mask[:, None], weights=(mask / count[:, None])[:, None],
                         feat=torch.zeros(len(b.doc_index), host.n_layers, host.d_ff),
                         h=torch.zeros(len(b.doc_index), host.n_layers, host.d_ff))
            decoder(host.model)(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
            x[b.doc_index] = state["feat"].reshape(len(b.doc_index), -1).numpy()
            cls = torch.as_tensor(y[b.doc_index])
            h_sum.index_add_(0, cls, state["h"].double())
            tokens.index_add_(0, cls, mask.sum(1).double())
            bar.update(len(b.doc_index))
    bar.close()
    return Features(x, y, (h_sum / tokens.clamp(min=1)[:, None, None]).float())


def drop_spanless(corpus: Corpus, tokenizer, span: str, max_len: int) -> tuple[Corpus, int]:
    """The texts with at least one token to average over, and how many had none (a span past max_len)."""
    kept = Corpus(d for d in corpus if span_token_mask(tokenizer, d, span, max_len).any())
    return kept, len(corpus) - len(kept)


# --- the probe -----------------------------------------------------------------------------------------
@dataclass
class ProbeFit:
    """One L1 probe of the path, scored on the validation and the held-out split."""

    c: float
    coef: np.ndarray  # [n_features] in standardised units
    intercept: float
    val_acc: float
    val_auroc: float
    test_acc: float
    test_auroc: float
    val_nll: float = float("nan")  # mean log-loss on the validation split

    @property
    def n_neurons(self) -> int:
        return int(np.count_nonzero(self.coef))

    @property
    def n_positive(self) -> int:
        return int((self.coef > 0).sum())


def _scores(model, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score

    acc = float((model.predict(x) == y).mean())
    auroc = float(roc_auc_score(y, model.decision_function(x))) if len(set(y.tolist())) == 2 else float("nan")
    return acc, auroc


def standardise(fit: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Every matrix scaled by the fitting split's mean and std (features constant there get std 1)."""
    mean = fit.mean(0)
    std = fit.std(0)
    std[std < 1e-12] = 1.0
    return [(m - mean) / std for m in (fit, *others)]


def l1_path(splits: dict[str, Features], c_grid: list[float] | None, solver: str, seed: int, max_neurons: int,
            progress: bool = False) -> list[ProbeFit]:
    """L1 logistic regressions fitted on splits["fit"], scored on "val" and "test", sorted by C.

    C runs over `c_grid` (default: 16 values from the smallest C that selects a neuron to 300x it) until a
    probe reads more than `PAST_BUDGET` x `max_neurons`, then `REFINE` bisections (geometric) between the
    largest C within `max_neurons` and the next C past it: the probe at the budget's edge usually reads
    more neurons than any grid point within it, and does better."""
    from sklearn.metrics import log_loss
    from sklearn.svm import l1_min_c

    fit, val, test = standardise(splits["fit"].x, splits["val"].x, splits["test"].x)
    y_fit = splits["fit"].y
    c_min = float(l1_min_c(fit, y_fit, loss="log"))
    grid = c_grid or list(c_min * np.logspace(0.02, 2.5, 16))
    bar = tqdm(total=len(grid), desc="L1 path", unit="C", disable=not progress)

    def probe(c: float) -> ProbeFit:
        model = l1_logistic(c, solver, seed)
        model.fit(fit, y_fit)
        bar.update()
        nll = log_loss(splits["val"].y, model.predict_proba(val)[:, 1], labels=[0, 1])
        return ProbeFit(c, model.coef_[0].copy(), float(model.intercept_[0]), *_scores(model, val, splits["val"].y),
                        *_scores(model, test, splits["test"].y), val_nll=float(nll))

    path = []
    for c in sorted(grid):
        path.append(probe(float(c)))
        if path[-1].n_neurons > PAST_BUDGET * max_neurons:  # larger C only grows the probe further (and slows it)
            break
    low = max((p.c for p in path if p.n_neurons <= max_neurons), default=c_min)
    high = min((p.c for p in path if p.n_neurons > max_neurons), default=None)
    for _ in range(REFINE if high is not None else 0):
        mid = probe(math.sqrt(low * high))
        path.append(mid)
        low, high = (mid.c, high) if mid.n_neurons <= max_neurons else (low, mid.c)
    bar.close()
    return sorted(path, key=lambda p: p.c)


def l1_logistic(c: float, solver: str, seed: int):
    """An L1 logistic regression; scikit-learn 1.8 moved the penalty into l1_ratio (`penalty` goes in 1.10)."""
    import sklearn
    from sklearn.linear_model import LogisticRegression

    major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
    penalty = {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}
    return LogisticRegression(C=c, solver=solver, max_iter=2000, random_state=seed, **penalty)


def choose(path: list[ProbeFit], max_neurons: int) -> ProbeFit:
    """The best validation accuracy among probes reading at most `max_neurons` and giving some neuron a positive
    weight; ties (common when the property is easy) go to the better validation AUROC, then the lower validation
    log-loss (which usually means the probe at the budget's edge), then the fewer neurons."""
    ok = [p for p in path if 0 < p.n_neurons <= max_neurons and p.n_positive > 0]
    if not ok:
        sizes = sorted({p.n_neurons for p in path})
        raise InvalidInputError(f"no probe on the C path reads between 1 and {max_neurons} neurons with a positive "
                                f"weight (sizes on the path: {sizes})",
                                "raise budget, or pass a c_grid of smaller C values")
    return max(ok, key=lambda p: (p.val_acc, np.nan_to_num(p.val_auroc), -np.nan_to_num(p.val_nll, nan=np.inf),
                                  -p.n_neurons))


def restricted_probe(splits: dict[str, Features], columns: np.ndarray, seed: int = 0) -> dict[str, float]:
    """An L2 logistic regression on the given feature columns only, C chosen on the validation split; its
    held-out accuracy and AUROC."""
    from sklearn.linear_model import LogisticRegression

    fit, val, test = standardise(*(splits[k].x[:, columns] for k in ("fit", "val", "test")))
    best = None
    for c in RANDOM_C:
        model = LogisticRegression(C=c, solver="liblinear", max_iter=1000, random_state=seed)
        model.fit(fit, splits["fit"].y)
        val_acc = _scores(model, val, splits["val"].y)[0]
        if best is None or val_acc > best[0]:
            best = (val_acc, c, model)
    test_acc, test_auroc = _scores(best[2], test, splits["test"].y)
    return {"c": best[1], "val_acc": best[0], "test_acc": test_acc, "test_auroc": test_auroc}


def random_columns(n_features: int, k: int, n_sets: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n_features, size=k, replace=False)) for _ in range(n_sets)]


def random_control(splits: dict[str, Features], k: int, n_sets: int, seed: int) -> dict[str, float | list]:
    """Restricted probes on `n_sets` random sets of `k` neurons (from all layers): held-out accuracy."""
    runs = [restricted_probe(splits, cols, seed) for cols in random_columns(splits["fit"].x.shape[1], k, n_sets, seed)]
    accs = [r["test_acc"] for r in runs]
    return {"size": k, "test_acc": accs, "test_acc_mean": float(np.mean(accs)), "test_acc_max": float(np.max(accs)),
            "test_auroc_mean": float(np.nanmean([r["test_auroc"] for r in runs]))}


# --- data ------------------------------------------------------------------------------------------
def binary_corpus(corpus: Corpus, positive: str | None) -> tuple[Corpus, str, str]:
    """The corpus relabelled to two classes, the positive label and the negative class's name (the other label,
    or 'not-POSITIVE' when several labels are negative)."""
    labels = corpus.labels()
    if positive is None:
        found = [lab for lab in labels if lab.lower() in POSITIVE_WORDS]
        if len(labels) != 2 or len(found) != 1:
            raise InvalidInputError(f"sparse-probe does not know which label is the positive class (labels: "
                                    f"{', '.join(labels)})", "pass --opt positive=LABEL, or label the texts 1 / 0")
        positive = found[0]
    if positive not in labels or len(labels) < 2:
        raise InvalidInputError(f"sparse-probe needs texts with and without the positive label {positive!r} "
                                f"(labels: {', '.join(labels)})",
                                "label every text, e.g. {\"text\": ..., \"label\": 1} or 0, or pass --opt "
                                "positive= one of the labels")
    negatives = [lab for lab in labels if lab != positive]
    negative = negatives[0] if len(negatives) == 1 else f"not-{positive}"
    relabelled = Corpus(Doc(d.text, positive if d.label == positive else negative, d.span) for d in corpus)
    return relabelled, positive, negative


def snippets(corpus: Corpus, tokenizer, snippet_tokens: int | None) -> Corpus:
    """Texts cut into pieces of at most `snippet_tokens` tokens (`chunk_corpus`); a text with a span stays whole."""
    if not snippet_tokens:
        return corpus
    whole = Corpus(d for d in corpus if d.span is not None)
    return Corpus(list(chunk_corpus(Corpus(d for d in corpus if d.span is None), tokenizer, snippet_tokens)) + whole)


def validation_split(train: Corpus, fraction: float, seed: int) -> tuple[Corpus, Corpus]:
    """(fit, val) by a hash of seed and text of its own: `Corpus.split` with another seed would be nearly the same
    cut as the held-out one (its seed is XORed into the low bits of the same hash)."""
    fit, val = Corpus(), Corpus()
    for d in train:
        h = int.from_bytes(hashlib.sha256(f"validation\0{seed}\0{d.text}".encode()).digest()[:8], "little")
        (val if h % 10_000 < int(fraction * 10_000) else fit).append(d)
    return fit, val


def three_splits(corpus: Corpus, opt: SparseProbeOptions, tokenizer) -> dict[str, Corpus]:
    """fit / val / test by document (content hash), each then cut into snippets. The test split is the one
    `brick eval` re-derives from the brick's held_out and split_seed."""
    train, test = corpus.split(opt.held_out, seed=opt.seed)
    fit, val = validation_split(train, opt.val_fraction, opt.seed)
    out = {"fit": fit, "val": val, "test": test}
    for key, part in out.items():
        part = snippets(part, tokenizer, opt.snippet_tokens)
        if len(set(d.label for d in part)) < 2:
            raise InvalidInputError(f"the {key} split has texts of only one class ({len(part)} texts)",
                                    "pass more documents of both classes, or change held_out / val_fraction / seed")
        out[key] = part
    return out


# --- the extractor ---------------------------------------------------------------------------------------
class SparseProbeOptions(ExtractorOptions):
    """Options of `extract_sparse_probe`."""

    positive: str | None = Field(None, description="The positive label (default: the label 1 / true of a "
                                                   "two-label corpus); every other label is negative.")
    budget: float = Field(0.001, gt=0, le=1, description="Most neurons the probe may read, as a fraction of all "
                                                         "FFN neurons (0.001 = 0.1%).")
    c_grid: list[float] | None = Field(None, description="Inverse L1 strengths to try (default: 16 from the "
                                                         "smallest C that selects any neuron to 300x it); 4 "
                                                         "more are bisected at the budget's edge.")
    held_out: float = Field(0.2, gt=0, lt=1, description="Fraction of documents held out for the reported figures.")
    val_fraction: float = Field(0.25, gt=0, lt=1, description="Fraction of the other documents that chooses C.")
    span: Literal["auto", "all", "last"] = Field("auto", description="Tokens a text's feature averages over: "
                                                 "auto (its span, else all), all, last (last span token).")
    snippet_tokens: int | None = Field(None, gt=0, description="Cut documents into snippets of at most this many "
                                                               "tokens after splitting (none: whole texts).")
    solver: Literal["liblinear", "saga"] = Field("liblinear", description="scikit-learn solver of the L1 probe.")
    n_random: int = Field(5, ge=0, description="Random same-size neuron sets for the controls.")
    ablation: bool = Field(True, description="Check the brick by ablation: per-class perplexity on held-out text.")
    eval_tokens: int | None = Field(4000, description="Held-out tokens per class for the ablation check "
                                                      "(none: all).")
    min_selectivity: float = Field(3.0, description="Positive-class ΔPPL must be >= this x negative-class ΔPPL.")
    force: bool = Field(False, description="Publish the brick even when the ablation check fails.")
    max_len: int = Field(256, gt=0, description="Tokens per text (longer texts are truncated).")
    batch_tokens: int = Field(4096, gt=0, description="Tokens per forward batch.")
    seed: int = Field(0, description="Seed of the splits, the solver and the random sets.")

    _c_grid = field_validator("c_grid", mode="before")(comma_list)


@extractor("sparse_probe", reference_url="https://arxiv.org/abs/2512.01797", options=SparseProbeOptions)
def extract_sparse_probe(host, corpus: Corpus, options: SparseProbeOptions | None = None, *, name: str,
                         out_dir: Path | None = None) -> Extraction:
    """A tiny neuron set predicting a labelled property: L1 logistic regression over CETT contributions.

    The held-out accuracy-vs-neurons plot (the C path and random same-size probes) goes to `out_dir`.
    """
    opt = options or SparseProbeOptions()
    binary, positive, negative = binary_corpus(corpus, opt.positive)
    texts = three_splits(binary, opt, host.tokenizer)
    dropped = {}
    for key in texts:
        texts[key], dropped[key] = drop_spanless(texts[key], host.tokenizer, opt.span, opt.max_len)
    feats = {key: cett_features(host, part, positive, opt.span, opt.batch_tokens, opt.max_len, opt.progress,
                                f"CETT features ({key})") for key, part in texts.items()}
    n_all = host.n_layers * host.d_ff
    max_neurons = max(1, math.floor(opt.budget * n_all))
    path = l1_path(feats, opt.c_grid, opt.solver, opt.seed, max_neurons, opt.progress)
    best = choose(path, max_neurons)
    positive_cols = np.flatnonzero(best.coef > 0)
    metrics = {
        "positive": positive, "negative": negative, "chosen_c": best.c, "budget_neurons": max_neurons,
        "probe_neurons": best.n_neurons, "brick_neurons": int(positive_cols.size),
        "brick_fraction": positive_cols.size / n_all,
        "val_accuracy": best.val_acc, "held_out_accuracy": best.test_acc, "held_out_auroc": best.test_auroc,
        "texts": {k: {positive: int(f.y.sum()), negative: int((1 - f.y).sum())} for k, f in feats.items()},
        "dropped_without_span_tokens": dropped,
        "random_probe": random_control(feats, best.n_neurons, opt.n_random, opt.seed) if opt.n_random else None,
        "brick_only_probe": restricted_probe(feats, positive_cols, opt.seed),
        "random_brick_size_probe": (random_control(feats, positive_cols.size, opt.n_random, opt.seed + 1)
                                    if opt.n_random else None),
        "path": [_path_row(p) for p in path],
        "weights": _weight_rows(best, feats, host.d_ff),
    }
    brick = _make_brick(host, name, best, feats, texts["fit"], binary, metrics, opt)
    if opt.ablation:
        metrics["ablation"] = ablation_check(host, brick, texts["test"], opt)
    result = Extraction([], report={name: metrics}, evidence={name: _evidence(metrics)})
    if out_dir is not None:
        metrics["random_curve"] = random_curve(feats, sorted({p.n_neurons for p in path if p.n_neurons}),
                                               opt.n_random, opt.seed)
        result.artifacts["accuracy_vs_neurons"] = plot_path(path, best, metrics["random_curve"], max_neurons,
                                                            out_dir / f"{name}-accuracy.png")
    brick.meta.metrics = metrics  # the checks above ran on the brick, so their figures join its metadata last
    why = _rejected(metrics, opt)
    if why and not opt.force:
        result.skipped[name] = why
    else:
        result.bricks.append(brick)
    return result


def _path_row(p: ProbeFit) -> dict[str, float]:
    return {"c": p.c, "neurons": p.n_neurons, "positive": p.n_positive, "val_acc": p.val_acc, "val_nll": p.val_nll,
            "held_out_acc": p.test_acc, "held_out_auroc": p.test_auroc}


def _weight_rows(best: ProbeFit, feats: dict[str, Features], d_ff: int) -> list[dict[str, float]]:
    """Every neuron the probe reads: layer, index, weight (standardised units), mean CETT per class (fit split)."""
    x, y = feats["fit"].x, feats["fit"].y
    rows = []
    for col in np.flatnonzero(best.coef):
        rows.append({"layer": int(col // d_ff), "neuron": int(col % d_ff), "weight": float(best.coef[col]),
                     "cett_positive": float(x[y == 1, col].mean()), "cett_negative": float(x[y == 0, col].mean())})
    return sorted(rows, key=lambda r: -abs(r["weight"]))


def _make_brick(host, name: str, best: ProbeFit, feats: dict[str, Features], fit_texts: Corpus, binary: Corpus,
                metrics: dict, opt: SparseProbeOptions) -> Brick:
    from bricks.extract.emergent import example_texts

    cols = np.flatnonzero(best.coef > 0)
    layers = {int(layer): torch.as_tensor(cols[cols // host.d_ff == layer] % host.d_ff)
              for layer in np.unique(cols // host.d_ff)}
    positive, negative = metrics["positive"], metrics["negative"]
    labels = sorted([positive, negative])
    params = opt.params()
    # `brick eval` re-derives the held-out documents from held_out and split_seed
    params.update(split_seed=opt.seed, corpus_digest=binary.digest(), label=positive, layers=sorted(layers))
    brick = neuron_brick(
        name, host.ref, layers, gain=0.0, method="sparse_probe", params=params, metrics=metrics, labels=labels,
        routing=RoutingKeys(texts=example_texts(fit_texts, positive), label=positive),
        description=(f"{cols.size} FFN neurons whose CETT predicts {positive} vs {negative} (L1 probe at C="
                     f"{best.c:.3g}, held-out accuracy {best.test_acc:.3f}, AUROC {best.test_auroc:.3f}); gain 0 "
                     "ablates"))
    # rows of label_means follow meta.labels; Features.label_means is [negative, positive]
    means = feats["fit"].label_means[[int(lab == positive) for lab in labels]]
    for layer, s in brick.neurons.items():
        s.label_means = means[:, layer, s.indices].contiguous()
    brick.validate()
    return brick


def ablation_check(host, brick: Brick, test: Corpus, opt: SparseProbeOptions) -> dict:
    """ΔPPL% per class on held-out text with the brick ablated, and with random same-shape sets
    (`bricks.evaluate.selectivity_report`)."""
    from bricks.evaluate import selectivity_report
    from bricks.extract.emergent import cap_tokens

    text = cap_tokens(Corpus(Doc(d.text, d.label) for d in test), host.tokenizer, opt.eval_tokens)
    report = selectivity_report(host, text, [brick], random_sets=opt.n_random, seed=opt.seed, progress=opt.progress,
                                batch_tokens=opt.batch_tokens, max_len=opt.max_len)
    rep = report.bricks[0]
    own, other = brick.meta.params["label"], next(lab for lab in rep.delta if lab != rep.own)
    randoms = [{"own": r[own], "other": r[other], "own_over_other": r[own] / max(r[other], 0.1)} for r in rep.random]
    return {"own": rep.delta[own], "other": rep.delta[other],
            "own_over_other": rep.delta[own] / max(rep.delta[other], 0.1), "random": randoms,
            "random_own_over_other_max": max((r["own_over_other"] for r in randoms), default=None),
            "baseline_ppl": report.baseline, "tokens": report.tokens}


def _evidence(metrics: dict) -> dict[str, float]:
    """The held-out figures the summary table shows."""
    row = {"held-out acc": metrics["held_out_accuracy"], "AUROC": metrics["held_out_auroc"]}
    if metrics["random_probe"]:
        row["random-set acc"] = metrics["random_probe"]["test_acc_mean"]
    if "ablation" in metrics:
        row["own ΔPPL%"] = metrics["ablation"]["own"]
        row["other ΔPPL%"] = metrics["ablation"]["other"]
    return row


def _rejected(metrics: dict, opt: SparseProbeOptions) -> str:
    ab = metrics.get("ablation")
    if ab is None or ab["own_over_other"] >= opt.min_selectivity:
        return ""
    return (f"ablating it is not selective on held-out text: {metrics['positive']} ΔPPL {ab['own']:+.1f}% vs "
            f"{metrics['negative']} {ab['other']:+.1f}% (need {opt.min_selectivity:g}x; force=true publishes it)")


# --- the plot --------------------------------------------------------------------------------------------
def random_curve(feats: dict[str, Features], sizes: list[int], n_sets: int, seed: int) -> list[dict[str, float]]:
    """Held-out accuracy of restricted probes on random sets of each size (mean and spread over `n_sets`)."""
    rows = []
    for k in sizes:
        accs = [restricted_probe(feats, cols, seed)["test_acc"]
                for cols in random_columns(feats["fit"].x.shape[1], k, max(n_sets, 1), seed + k)]
        rows.append({"neurons": k, "mean": float(np.mean(accs)), "min": float(np.min(accs)),
                     "max": float(np.max(accs))})
    return rows


def plot_path(path: list[ProbeFit], best: ProbeFit, curve: list[dict[str, float]], max_neurons: int,
              out: Path) -> Path:
    """Held-out (and validation) accuracy of the L1 path against neurons read, random probes of the same sizes,
    the budget and the chosen C."""
    from bricks.analysis.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    pts = sorted((p for p in path if p.n_neurons), key=lambda p: p.n_neurons)
    ax.plot([p.n_neurons for p in pts], [p.test_acc for p in pts], "o-", label="L1 probe, held-out")
    ax.plot([p.n_neurons for p in pts], [p.val_acc for p in pts], ".--", alpha=0.6, label="L1 probe, validation")
    if curve:
        ks = [r["neurons"] for r in curve]
        ax.plot(ks, [r["mean"] for r in curve], "s-", color="grey", label="random same-size sets, held-out")
        ax.fill_between(ks, [r["min"] for r in curve], [r["max"] for r in curve], color="grey", alpha=0.2)
    ax.axvline(max_neurons, color="red", ls=":", label=f"budget ({max_neurons} neurons)")
    ax.plot([best.n_neurons], [best.test_acc], "*", ms=14, color="gold", mec="k", label=f"chosen C={best.c:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("neurons the probe reads")
    ax.set_ylabel("accuracy")
    ax.set_title("Sparse probe: accuracy against neurons over the C path")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)
