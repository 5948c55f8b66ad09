"""The emergent-brick audit: selectivity, stability and the general check, on text the extractor never saw.

`audit_emergent(host, corpus)` is the protocol behind the selectivity bars, callable on any host and labelled
corpus (the slow test and `bench/bench_bars.py` run it on SmolLM2 and the shipped corpora):

1. a test split (`test_frac` of the documents, by content hash) is set aside; nothing below selects
   neurons or judges candidates on it;
2. one profiling pass over the whole corpus, in four cells (extractor-train / not x half A / half B),
   gives the extractor's training profile and the profiles of two disjoint corpus halves: profiling
   is the expensive part, so it runs once;
3. `extract_emergent` on the rest (its own held-out check decides published vs general, `force` keeps
   every candidate so all are measured);
4. selectivity on the test split: ΔPPL% per label for every brick and `random_sets` random same-shape
   sets (`bricks.evaluate.selectivity_report`);
5. stability: each label's brick selected on half A and on half B, Jaccard overlap;
6. controls for the general check: bricks that should be caught as general (the neurons with the largest
   mean |h| over all text, and the LAPE brick of the dominant language), judged by the same check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bricks.compose import BrickUse
from bricks.corpus import Corpus
from bricks.errors import InvalidInputError
from bricks.evaluate import SelectivityReport, delta_pct, jaccard, label_perplexity, selectivity_report
from bricks.extract import Extraction
from bricks.extract.emergent import (
    EmergentOptions,
    by_layer,
    cap_tokens,
    down_norms,
    extract_emergent,
    held_out_check,
    make_brick,
    select_neurons,
)
from bricks.kinds.neurons import neuron_brick
from bricks.profile import Profile, chunk_corpus, profile_corpus


@dataclass
class EmergentAudit:
    extraction: Extraction
    report: SelectivityReport  # on the test split
    stability: dict[str, float]  # label -> Jaccard of the bricks selected on the two halves
    half_tokens: dict[str, list[int]]  # label -> [tokens in half A, tokens in half B]
    controls: dict[str, dict]  # name -> {"size", "delta_ppl_pct", "verdict"} of the general-check controls
    profiles: dict[str, Profile] = field(repr=False, default_factory=dict)
    test: Corpus = field(repr=False, default_factory=Corpus)

    def verdicts(self) -> dict[str, str]:
        """label -> "published" or why the extractor's held-out check would not publish its brick."""
        return {lab: v.get("rejected", "published") for lab, v in self.extraction.report.get("labels", {}).items()}

    def to_dict(self) -> dict:
        return {"selectivity": self.report.to_dict(), "stability_jaccard": self.stability,
                "half_tokens": self.half_tokens, "general_check_controls": self.controls,
                "extractor_verdicts": self.verdicts(), "params": self.extraction.report.get("params", {})}


def _four_cells(host, corpus: Corpus, train_keys: set[int], half_a: set[int], progress: bool) -> dict:
    cells = {}
    for in_train in (True, False):
        for in_a in (True, False):
            docs = Corpus(d for d in corpus if (d.key() in train_keys) == in_train and (d.key() in half_a) == in_a)
            cells[in_train, in_a] = profile_corpus(host, chunk_corpus(docs, host.tokenizer), progress=progress)
    return {"train": cells[True, True].merge(cells[True, False]),
            "half_a": cells[True, True].merge(cells[False, True]),
            "half_b": cells[True, False].merge(cells[False, False])}


def _stability(host, a: Profile, b: Profile, top_pct: float) -> dict[str, float]:
    norms = down_norms(host)

    def pick(profile: Profile, label: str):
        return neuron_brick("stability", host.ref, select_neurons(profile, label, "funcscore", top_pct, norms)[0])

    return {label: jaccard(pick(a, label), pick(b, label)) for label in a.labels}


def _controls(host, train: Profile, test: Corpus, base: dict, top_pct: float, dominant: str,
              thresholds: dict[str, float]) -> dict[str, dict]:
    """Bricks a general check must catch, judged on the test split like any candidate (as bricks of the
    dominant language: without its text there is nothing to judge them as)."""
    if dominant not in base or dominant not in train.labels:
        return {}
    k = round(top_pct / 100 * train.n_layers * train.d_ff)
    busiest = by_layer(train.mean_abs().mean(0).flatten().topk(k).indices, train.d_ff)
    candidates = {"top_mean_abs": busiest, f"lape_{dominant}": select_neurons(train, dominant, "lape", top_pct)[0]}
    out = {}
    for name, layers in candidates.items():
        brick = make_brick(host, train, dominant, layers, f"control-{name.replace('_', '-')}", [])
        delta = delta_pct(label_perplexity(host, test, [BrickUse(brick)]), base)
        _, why = held_out_check(dominant, delta, **thresholds)
        out[name] = {"size": brick.size(), "delta_ppl_pct": delta, "verdict": why or "published"}
    return out


def audit_emergent(host, corpus: Corpus, *, top_pct: float = 0.5, test_frac: float = 0.2, test_seed: int = 2024,
                   eval_tokens: int = 1000, check_tokens: int = 600, random_sets: int = 5, dominant: str = "en",
                   min_selectivity: float = 3.0, min_own: float = 5.0, progress: bool = False) -> EmergentAudit:
    """Run the protocol above. eval_tokens / check_tokens cap the test split / the extractor's own
    held-out check per label (time; 0 = no cap); halves come from `Corpus.halves(seed=1)` of the whole
    corpus; min_selectivity / min_own are the general check's thresholds (`extract_emergent`'s)."""
    thresholds = {"min_selectivity": min_selectivity, "min_own": min_own}
    if random_sets < 0 or eval_tokens < 0:
        raise InvalidInputError(f"random_sets={random_sets} and eval_tokens={eval_tokens} must be >= 0",
                                "use e.g. --random-sets 5 --eval-tokens 1000")
    if not 0 < test_frac < 1:
        raise InvalidInputError(f"test_frac={test_frac} is not a fraction in (0, 1)", "use e.g. 0.2")
    rest, test = corpus.split(test_frac, seed=test_seed)
    missing = [lab for lab in corpus.labels() if not test.by_label(lab) or not rest.by_label(lab)]
    if missing:
        raise InvalidInputError(f"labels {missing} have too few documents to split off a test set "
                                f"({test_frac:g} of the documents)", "add documents of those labels or drop them")
    train, _ = rest.split(0.2, seed=0)  # the extractor's own split of `rest` (held_out=0.2, seed=0)
    half_a = {d.key() for d in corpus.halves(seed=1)[0]}
    profiles = _four_cells(host, corpus, {d.key() for d in train}, half_a, progress)
    options = EmergentOptions(top_pct=top_pct, held_out=0.2, seed=0, force=True, eval_tokens=check_tokens,
                              dominant=dominant, progress=progress, **thresholds)
    ex = extract_emergent(host, rest, options, name="lang", train_profile=profiles["train"])
    test_chunks = cap_tokens(chunk_corpus(test, host.tokenizer), host.tokenizer, eval_tokens)
    report = selectivity_report(host, test_chunks, ex.bricks, random_sets=random_sets, random_labels="own",
                                progress=progress)
    a, b = profiles["half_a"], profiles["half_b"]
    return EmergentAudit(
        extraction=ex, report=report, stability=_stability(host, a, b, top_pct),
        half_tokens={lab: [int(a.tokens[i]), int(b.tokens[i])] for i, lab in enumerate(a.labels)},
        controls=_controls(host, profiles["train"], test_chunks, report.baseline, top_pct, dominant, thresholds),
        profiles=profiles, test=test_chunks)

