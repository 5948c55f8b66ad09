"""How well retrieval routing picks bricks: top-1 accuracy per label, the confusion table, the no-brick rate.

An example is a text and the label of the brick it should reach, or `none` when no brick should run.
A brick's label is its routing label (`meta.routing.label`), else its first label, else its manifest key.
The prediction is the best routable brick the router chose (after its threshold), or `none`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bricks.corpus import NONE, Corpus, load_labelled
from bricks.extract.emergent import paragraphs
from router.policy import Router

__all__ = ["NONE", "RouteEval", "evaluate", "held_out_paragraphs", "load_labelled"]


@dataclass
class RouteEval:
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)  # true label -> predicted -> count
    extra: int = 0  # examples that got more than one routable brick
    route_ms: list[float] = field(default_factory=list)

    def add(self, truth: str, predicted: str, n_routed: int, route_ms: float) -> None:
        row = self.confusion.setdefault(truth, {})
        row[predicted] = row.get(predicted, 0) + 1
        self.extra += n_routed > 1
        self.route_ms.append(route_ms)

    @property
    def total(self) -> int:
        return sum(sum(row.values()) for row in self.confusion.values())

    def accuracy(self, label: str) -> float:
        row = self.confusion.get(label, {})
        return row.get(label, 0) / max(sum(row.values()), 1)

    def no_brick_rate(self, in_domain: bool = True) -> float:
        rows = [r for lab, r in self.confusion.items() if (lab != NONE) == in_domain]
        n = sum(sum(r.values()) for r in rows)
        return sum(r.get(NONE, 0) for r in rows) / max(n, 1)

    def summary(self) -> dict:
        labels = sorted(self.confusion)
        in_domain = [lab for lab in labels if lab != NONE]
        out = {"examples": self.total,
               "accuracy": {lab: round(self.accuracy(lab), 4) for lab in labels},
               "min_accuracy": round(min((self.accuracy(lab) for lab in in_domain), default=0.0), 4),
               "no_brick_rate": round(self.no_brick_rate(), 4),
               "extra_brick_rate": round(self.extra / max(self.total, 1), 4),
               "confusion": {lab: dict(sorted(self.confusion[lab].items())) for lab in labels}}
        if NONE in self.confusion:
            out["none_rejected"] = round(self.accuracy(NONE), 4)
        return out


def evaluate(router: Router, examples: list[tuple[str, str]], label_of: dict[str, str]) -> RouteEval:
    """Route every (text, label) example; `label_of` maps a manifest brick key to the label it serves."""
    result = RouteEval()
    for text, truth in examples:
        d = router.route(text)
        predicted = label_of.get(d.routed[0], d.routed[0]) if d.routed else NONE
        result.add(truth, predicted, len(d.routed), d.route_ms)
    return result


def held_out_paragraphs(held_out: Corpus, chars: int = 300, per_label: int | None = None) -> list[tuple[str, str]]:
    """~`chars`-character paragraphs of held-out documents, at most `per_label` per label (spread evenly)."""
    out = []
    for lab in held_out.labels():
        paras = [p for d in held_out.by_label(lab) for p in paragraphs(d.text, chars)]
        if per_label and len(paras) > per_label:
            paras = [paras[i * len(paras) // per_label] for i in range(per_label)]
        out.extend((p, lab) for p in paras)
    return out
