"""Routing: which bricks a request runs with.

- `explicit`: the request names bricks (`"bricks": ["lang-fr@1", {"ref": "rare", "gain": 1.5}]`) or a
  manifest assembly by model name; nothing named = the plain host.
- `static`: every manifest brick, on every request (request bricks are added if allowed).
- `retrieval`: bricks marked `routable: false` always run; the prompt is embedded and the routable bricks
  are ranked by a rule fitted when the index is built from every brick's routing keys (its example texts):
  `centroid` (cosine to the mean key vector), `knn` (mean of the brick's best key cosines among the
  nearest keys) or `linear` (a logistic regression over the keys). At most `top_k` are chosen, each only
  when the request is close enough to the brick at all: cosine to its centroid at least its threshold.
  A brick with enough keys gets its threshold calibrated from its own keys (k-fold: the low quantile of
  held-out keys' and their opening words' cosine to the centroid of the other keys), so "none of these"
  needs no hand-set number; one with few keys (older bricks carry 4) uses the manifest's `threshold`.
  When the best brick misses its threshold no brick is routed; a brick ranked below the best must also
  be closer than nearly all other bricks' keys are to it.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from bricks.constants import PHASES
from bricks.errors import InvalidInputError
from bricks.refs import ref_name
from router.assembly import BrickChoice
from router.embed import Embedder

RULES = ("centroid", "knn", "linear")
DEFAULT_RULE = "knn"  # the most accurate on bench/bench_routing.py
KNN_MAX_KEYS = 20_000  # past this many key vectors (~300 bricks of 64), knn searches centroids (one row a brick)
MIN_CALIBRATED_KEYS = 16  # fewer keys: the manifest threshold (a 2% quantile of 3 cosines means nothing)
CALIBRATION_QUANTILE = 0.02  # the share of the brick's own held-out keys that the threshold may reject
CALIBRATION_FOLDS = 4
KNN_NEIGHBOURS, KNN_VOTES = 32, 3
SNIPPET_WORDS = 5  # calibration also scores each key's opening words: requests are often that short
SHORTLIST_FACTOR = 4  # the fp16 scan keeps this many times k candidates, rescored exactly in float32


@dataclass
class RouteDecision:
    policy: str
    choices: list[BrickChoice]
    scores: dict[str, float] = field(default_factory=dict)  # retrieval: brick key -> rule score, best first
    threshold: float | None = None  # the manifest's (the fallback for bricks with few keys)
    considered: int = 0
    route_ms: float = 0.0
    rule: str | None = None
    similarity: dict[str, float] = field(default_factory=dict)  # brick key -> cosine to its centroid
    thresholds: dict[str, float] = field(default_factory=dict)  # brick key -> the cosine it needed
    routed: list[str] = field(default_factory=list)  # the routable brick keys chosen, best first

    def explain(self) -> dict[str, Any]:
        out = {"policy": self.policy, "bricks": [c.ref for c in self.choices], "scores": self.scores,
               "threshold": self.threshold, "considered": self.considered, "route_ms": round(self.route_ms, 3)}
        if self.rule is not None:
            out |= {"rule": self.rule, "similarity": self.similarity, "thresholds": self.thresholds}
        return out


class BrickIndex:
    """Routing keys of many bricks and the rule fitted on them.

    `add` takes a brick's key texts (or vectors); `add_many` one ready vector per brick (bulk loading, as
    the 10k-brick benchmark does). `fit` builds the centroid index, the classifier and the thresholds;
    `rank` answers one request."""

    def __init__(self, embedder: Embedder, rule: str = DEFAULT_RULE, threshold: float = 0.3):
        if rule not in RULES:
            raise InvalidInputError(f"unknown routing rule {rule!r}", f"use one of: {', '.join(RULES)}")
        self.embedder, self.rule, self.default_threshold = embedder, rule, threshold
        self.index = _vector_index(embedder.dim)  # every key vector (knn)
        self.owner: list[str] = []  # key row -> brick key
        self.keys: dict[str, np.ndarray] = {}  # brick key -> its key vectors
        self.snippets: dict[str, np.ndarray] = {}  # brick key -> its keys' opening words, embedded
        self.bricks: list[str] = []  # centroid row -> brick key
        self.centroids = _vector_index(embedder.dim)
        self.centroid_of: dict[str, np.ndarray] = {}
        self.thresholds: dict[str, float] = {}  # the cosine a best-ranked brick needs
        self.second_thresholds: dict[str, float] = {}  # the cosine a brick ranked below the best needs
        self.classifier = None
        self._fitted = True

    def add(self, key: str, texts: list[str], vectors: np.ndarray | None = None) -> None:
        vecs = self.embedder.embed(texts) if vectors is None else np.ascontiguousarray(vectors, dtype=np.float32)
        if not len(vecs):
            return
        self.index.add(vecs)
        self.owner.extend([key] * len(vecs))
        self.keys[key] = np.vstack([self.keys[key], vecs]) if key in self.keys else vecs
        if texts and len(self.keys[key]) >= MIN_CALIBRATED_KEYS:
            self.snippets[key] = self.embedder.embed([" ".join(t.split()[:SNIPPET_WORDS]) for t in texts])
        self._fitted = False

    def add_many(self, keys: list[str], vectors: np.ndarray) -> None:
        """One key vector per brick, already embedded and L2-normalised: it is the brick's centroid."""
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index.add(vecs)
        self.owner.extend(keys)
        self.centroids.add(vecs)
        self.bricks.extend(keys)
        for k, v in zip(keys, vecs):
            self.centroid_of[k] = v
            self.thresholds[k] = self.second_thresholds[k] = self.default_threshold

    def __len__(self) -> int:
        return len(self.bricks) if self._fitted else len(set(self.owner))

    def fit(self) -> None:
        """Centroids and thresholds for the bricks added with `add`, and the classifier (rule `linear`)."""
        for key, vecs in self.keys.items():
            if key in self.centroid_of:
                continue
            c = _unit(vecs.mean(0))
            self.centroid_of[key] = c
            self.centroids.add(c.reshape(1, -1))
            self.bricks.append(key)
            self.thresholds[key] = self._calibrate(vecs, self.snippets.get(key))
        for key in self.keys:
            self.second_thresholds[key] = max(self.thresholds[key], self._others_ceiling(key))
        if self.rule == "linear" and len(self.keys) > 1:
            self.classifier = _fit_classifier(self.keys)
        self._fitted = True

    def _calibrate(self, vecs: np.ndarray, snippets: np.ndarray | None) -> float:
        if len(vecs) < MIN_CALIBRATED_KEYS:
            return self.default_threshold
        scores = []
        for fold in range(CALIBRATION_FOLDS):
            held = np.arange(len(vecs)) % CALIBRATION_FOLDS == fold
            c = _unit(vecs[~held].mean(0))
            scores.append(vecs[held] @ c)
            if snippets is not None:
                scores.append(snippets[held] @ c)
        return float(np.quantile(np.concatenate(scores), CALIBRATION_QUANTILE))

    def _others_ceiling(self, key: str) -> float:
        """A brick ranked second runs only if the request is closer to it than almost all other bricks'
        keys are (so a German request does not also get the French brick, but French maths gets both)."""
        others = [v for k, v in self.keys.items() if k != key]
        if len(self.keys[key]) < MIN_CALIBRATED_KEYS or not others:
            return self.thresholds[key]
        return float(np.quantile(np.vstack(others) @ self.centroid_of[key], 1 - CALIBRATION_QUANTILE))

    def rank(self, query: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        """(brick key, rule score), best first; at least the top_k best, often a few more."""
        if not self._fitted:
            self.fit()
        if not self.bricks:
            return []
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        if self.rule == "linear" and self.classifier is not None:
            model, names = self.classifier
            probs = model.predict_proba(q)[0]
            best = np.argsort(-probs)[: max(top_k * 2, 5)]
            return [(names[i], float(probs[i])) for i in best]
        if self.rule == "knn" and self.index.ntotal <= KNN_MAX_KEYS:
            return self._knn(q, top_k)
        k = min(len(self.bricks), max(top_k * 2, 5))
        scores, rows = self.centroids.search(q, k)
        return [(self.bricks[r], float(s)) for s, r in zip(scores[0], rows[0]) if r >= 0]

    def _knn(self, q: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        scores, rows = self.index.search(q, min(self.index.ntotal, max(KNN_NEIGHBOURS, top_k * 8)))
        hits: dict[str, list[float]] = {}
        for s, r in zip(scores[0], rows[0]):
            if r >= 0 and len(hits.setdefault(self.owner[r], [])) < KNN_VOTES:
                hits[self.owner[r]].append(float(s))
        ranked = {k: sum(v) / KNN_VOTES for k, v in hits.items()}  # a brick with fewer votes scores lower
        return sorted(ranked.items(), key=lambda kv: -kv[1])

    def similarity(self, key: str, query: np.ndarray) -> float:
        return float(self.centroid_of[key] @ query)

    def search(self, query: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        """Best key cosine per brick, best first (the rule before centroids; kept for callers and tests)."""
        if self.index.ntotal == 0:
            return []
        k = min(self.index.ntotal, max(top_k * 8, 32))
        scores, rows = self.index.search(np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32), k)
        best: dict[str, float] = {}
        for s, r in zip(scores[0], rows[0]):
            if r >= 0 and self.owner[r] not in best:
                best[self.owner[r]] = float(s)
        return sorted(best.items(), key=lambda kv: -kv[1])


def _vector_index(dim: int) -> faiss.Index:
    """Exact inner-product search at about half the memory traffic of a flat float32 scan: FAISS scans
    float16 copies of the vectors for a shortlist of SHORTLIST_FACTOR x k and rescores it against the
    float32 vectors, so scores and order are the flat index's (the shortlist holds the true top k unless
    a float16 rounding of ~1e-3 reorders rows past k x 4). One query is a memory-bound scan on one
    thread: at 10k bricks of 1408 dims (minilm+chars) this takes ~1.7 ms instead of ~3.6 ms."""
    index = faiss.IndexRefineFlat(faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16,
                                                             faiss.METRIC_INNER_PRODUCT))
    index.k_factor = SHORTLIST_FACTOR
    return index


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-9)).astype(np.float32)


def _fit_classifier(keys: dict[str, np.ndarray]):
    from sklearn.linear_model import LogisticRegression

    names = list(keys)
    x = np.vstack([keys[k] for k in names])
    y = np.concatenate([np.full(len(keys[k]), i) for i, k in enumerate(names)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny key sets
        model = LogisticRegression(C=10.0, max_iter=500).fit(x, y)
    return model, [names[i] for i in model.classes_]


@dataclass
class RouteEntry:
    """A manifest brick as the router sees it."""

    key: str  # alias or ref, as the manifest names it
    choice: BrickChoice
    routable: bool
    texts: list[str]


class Router:
    def __init__(self, policy: str, entries: list[RouteEntry], *, top_k: int = 2, threshold: float = 0.3,
                 embedder: Embedder | None = None, allow_request_bricks: bool = True,
                 assemblies: dict[str, list[str]] | None = None, rule: str = DEFAULT_RULE):
        self.policy, self.entries = policy, {e.key: e for e in entries}
        self.top_k, self.threshold = top_k, threshold
        self.allow_request_bricks = allow_request_bricks
        self.assemblies = assemblies or {}
        self.index: BrickIndex | None = None
        if policy == "retrieval":
            if embedder is None:
                raise InvalidInputError("retrieval routing needs an embedder", "set routing.embedder")
            self.index = BrickIndex(embedder, rule, threshold)
            for e in entries:
                if e.routable and e.texts:
                    self.index.add(e.key, e.texts)
            self.index.fit()

    def route(self, prompt: str, request_bricks: list[Any] | None = None, model: str | None = None) -> RouteDecision:
        t0 = time.perf_counter()
        decision = RouteDecision(self.policy, [])
        if model and model in self.assemblies:
            decision.choices = [self.entries[k].choice for k in self.assemblies[model]]
            decision.policy = f"assembly:{model}"
        elif self.policy == "static":
            decision.choices = [e.choice for e in self.entries.values()]
        elif self.policy == "retrieval":
            self._retrieve(prompt, decision)
        if request_bricks:
            if not self.allow_request_bricks:
                raise InvalidInputError("this server does not accept bricks named in requests",
                                        "drop the 'bricks' field, or set routing.allow_request_bricks: true")
            decision.choices = _dedup(decision.choices + [self._parse_request_brick(b) for b in request_bricks])
        decision.route_ms = (time.perf_counter() - t0) * 1e3
        return decision

    def _retrieve(self, prompt: str, decision: RouteDecision) -> None:
        fixed = [e.choice for e in self.entries.values() if not e.routable]
        decision.threshold = self.threshold
        picked: list[BrickChoice] = []
        if self.index is not None and len(self.index):
            index = self.index
            q = index.embedder.embed([prompt])[0]
            hits = index.rank(q, self.top_k)
            decision.rule, decision.considered = index.rule, len(index)
            decision.scores = {k: round(s, 4) for k, s in hits}
            for rank, (key, _) in enumerate(hits[: self.top_k]):
                sim = index.similarity(key, q)
                need = index.thresholds[key] if rank == 0 else index.second_thresholds[key]
                decision.similarity[key] = round(sim, 4)
                decision.thresholds[key] = round(need, 4)
                if sim < need:
                    break  # the best brick is not close enough: none of these; a later one: no more
                decision.routed.append(key)
                picked.append(self.entries[key].choice)
        decision.choices = _dedup(fixed + picked)

    def _parse_request_brick(self, item: Any) -> BrickChoice:
        """A request names a brick by manifest alias/ref or any registry ref, optionally with how to use it
        (the fields of BrickChoice); what it leaves out comes from the manifest's entry for that brick."""
        if isinstance(item, str):
            item = {"ref": item}
        if not isinstance(item, dict) or not isinstance(item.get("ref"), str):
            raise InvalidInputError(f"bad brick entry {item!r} in request",
                                    'use "name@version" or {"ref": "name", "gain": 1.5, "offset_scale": 1.0}')
        unknown = set(item) - set(REQUEST_BRICK_FIELDS)
        if unknown:
            raise InvalidInputError(f"unknown field(s) {sorted(unknown)} in request brick {item['ref']!r}",
                                    f"allowed: {', '.join(REQUEST_BRICK_FIELDS)}")
        base = self.entries.get(item["ref"])
        default = base.choice if base else BrickChoice(item["ref"])
        try:
            gain = _number(item.get("gain", default.gain))
            scale = _number(item.get("offset_scale", default.offset_scale))
            generated = _number(item.get("generated_offset_scale", default.generated_offset_scale))
        except (TypeError, ValueError):
            raise InvalidInputError(f"gain/offset_scale/generated_offset_scale of request brick {item['ref']!r} "
                                    "must be numbers", "send numbers, e.g. 1.5") from None
        if not all(np.isfinite(x) for x in (gain or 0.0, scale, generated or 0.0)):
            raise InvalidInputError(f"gain/offset_scale/generated_offset_scale of {item['ref']!r} must be finite",
                                    "send finite numbers")
        phase = item.get("phase", default.phase)
        if phase not in PHASES:
            raise InvalidInputError(f"phase {phase!r} of request brick {item['ref']!r}",
                                    f"use one of: {', '.join(PHASES)}")
        return BrickChoice(default.ref, gain, scale, phase, generated)


REQUEST_BRICK_FIELDS = ("ref", "gain", "offset_scale", "phase", "generated_offset_scale")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    return None if value is None else float(value)


def _dedup(choices: list[BrickChoice]) -> list[BrickChoice]:
    """One choice per brick name (`fr@^1` and `fr@1.0.0` are one brick); a later entry wins, so a request
    overrides a manifest gain instead of applying the brick twice."""
    out: dict[str, BrickChoice] = {}
    for c in choices:
        name = ref_name(c.ref)
        out.pop(name, None)
        out[name] = c
    return list(out.values())
