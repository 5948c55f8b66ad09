"""Routing: which bricks a request runs with.

- `explicit`: the request names bricks (`"bricks": ["lang-fr@1", {"ref": "rare", "gain": 1.5}]`) or a
  manifest assembly by model name; nothing named = the plain host.
- `static`: every manifest brick, on every request (request bricks are added if allowed).
- `retrieval`: bricks marked `routable: false` always run; the prompt is embedded and the routable
  bricks whose example texts are nearest (FAISS inner product over L2-normalised vectors = cosine)
  are added: at most `top_k`, each scoring at least `threshold`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from bricks.errors import InvalidInputError
from bricks.refs import ref_name
from router.assembly import BrickChoice
from router.embed import Embedder


@dataclass
class RouteDecision:
    policy: str
    choices: list[BrickChoice]
    scores: dict[str, float] = field(default_factory=dict)  # retrieval: brick key -> best cosine
    threshold: float | None = None
    considered: int = 0
    route_ms: float = 0.0

    def explain(self) -> dict[str, Any]:
        return {"policy": self.policy, "bricks": [c.ref for c in self.choices], "scores": self.scores,
                "threshold": self.threshold, "considered": self.considered, "route_ms": round(self.route_ms, 3)}


class BrickIndex:
    """FAISS inner-product index over routing keys; several keys may belong to one brick."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self.index = faiss.IndexFlatIP(embedder.dim)
        self.owner: list[str] = []  # row -> brick key

    def add(self, key: str, texts: list[str], vectors: np.ndarray | None = None) -> None:
        vecs = self.embedder.embed(texts) if vectors is None else np.ascontiguousarray(vectors, dtype=np.float32)
        if len(vecs):
            self.index.add(vecs)
            self.owner.extend([key] * len(vecs))

    def add_many(self, keys: list[str], vectors: np.ndarray) -> None:
        """One key vector per brick, already embedded and L2-normalised (bulk loading)."""
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.owner.extend(keys)

    def __len__(self) -> int:
        return len(set(self.owner))

    def search(self, query: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        """Best score per brick, best first; asks FAISS for more rows than top_k since keys repeat."""
        if self.index.ntotal == 0:
            return []
        k = min(self.index.ntotal, max(top_k * 8, 32))
        scores, rows = self.index.search(np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32), k)
        best: dict[str, float] = {}
        for s, r in zip(scores[0], rows[0]):
            if r >= 0 and self.owner[r] not in best:
                best[self.owner[r]] = float(s)
        return sorted(best.items(), key=lambda kv: -kv[1])


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
                 assemblies: dict[str, list[str]] | None = None):
        self.policy, self.entries = policy, {e.key: e for e in entries}
        self.top_k, self.threshold = top_k, threshold
        self.allow_request_bricks = allow_request_bricks
        self.assemblies = assemblies or {}
        self.index: BrickIndex | None = None
        if policy == "retrieval":
            if embedder is None:
                raise InvalidInputError("retrieval routing needs an embedder", "set routing.embedder")
            self.index = BrickIndex(embedder)
            for e in entries:
                if e.routable and e.texts:
                    self.index.add(e.key, e.texts)

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
            q = self.index.embedder.embed([prompt])[0]
            hits = self.index.search(q, self.top_k)
            decision.considered = len(self.index)
            decision.scores = {k: round(s, 4) for k, s in hits[: max(self.top_k * 2, 5)]}
            picked = [self.entries[k].choice for k, s in hits[: self.top_k] if s >= self.threshold]
        decision.choices = _dedup(fixed + picked)

    def _parse_request_brick(self, item: Any) -> BrickChoice:
        """A request names a brick by manifest alias/ref or any registry ref, optionally with gain."""
        if isinstance(item, str):
            item = {"ref": item}
        if not isinstance(item, dict) or not isinstance(item.get("ref"), str):
            raise InvalidInputError(f"bad brick entry {item!r} in request",
                                    'use "name@version" or {"ref": "name", "gain": 1.5, "offset_scale": 1.0}')
        unknown = set(item) - {"ref", "gain", "offset_scale"}
        if unknown:
            raise InvalidInputError(f"unknown field(s) {sorted(unknown)} in request brick {item['ref']!r}",
                                    "allowed: ref, gain, offset_scale")
        base = self.entries.get(item["ref"])
        ref = base.choice.ref if base else item["ref"]
        try:
            gain = item.get("gain", base.choice.gain if base else None)
            scale = float(item.get("offset_scale", base.choice.offset_scale if base else 1.0))
            gain = None if gain is None else float(gain)
        except (TypeError, ValueError):
            raise InvalidInputError(f"gain/offset_scale of request brick {item['ref']!r} must be numbers",
                                    "send numbers, e.g. 1.5") from None
        if not all(np.isfinite(x) for x in (gain or 0.0, scale)):
            raise InvalidInputError(f"gain/offset_scale of {item['ref']!r} must be finite", "send finite numbers")
        return BrickChoice(ref, gain, scale)


def _dedup(choices: list[BrickChoice]) -> list[BrickChoice]:
    """One choice per brick name (`fr@^1` and `fr@1.0.0` are one brick); a later entry wins, so a request
    overrides a manifest gain instead of applying the brick twice."""
    out: dict[str, BrickChoice] = {}
    for c in choices:
        name = ref_name(c.ref)
        out.pop(name, None)
        out[name] = c
    return list(out.values())
