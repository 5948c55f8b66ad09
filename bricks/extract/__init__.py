"""Extractors: each finds bricks in a host from a corpus. One module per method, same shape.

An extractor is a function registered by name:

    @extractor("emergent", reference_url="https://arxiv.org/abs/2409.02877")
    def extract_emergent(host: Host, corpus: Corpus, *, name: str, **options) -> Extraction: ...

It returns an `Extraction`: the bricks to publish (each with method, parameters, corpus digest and
metrics in its metadata), a JSON-able report, and artifact files (plots) it wrote.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bricks.errors import InvalidInputError
from bricks.format import Brick

_MODULES = ("emergent", "clusters", "rare_tokens")


@dataclass
class Extraction:
    bricks: list[Brick]
    report: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # candidate name -> why it was not published


@dataclass(frozen=True)
class ExtractorSpec:
    name: str
    fn: Callable[..., Extraction]
    reference_url: str
    summary: str


_EXTRACTORS: dict[str, ExtractorSpec] = {}


def extractor(name: str, reference_url: str = "") -> Callable:
    def register(fn: Callable[..., Extraction]) -> Callable[..., Extraction]:
        _EXTRACTORS[name] = ExtractorSpec(name, fn, reference_url, (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return register


def extractors() -> dict[str, ExtractorSpec]:
    for mod in _MODULES:
        try:
            importlib.import_module(f"bricks.extract.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"bricks.extract.{mod}":
                raise
    return dict(_EXTRACTORS)


def get_extractor(name: str) -> ExtractorSpec:
    known = extractors()
    if name not in known:
        raise InvalidInputError(f"unknown extraction method {name!r}", f"use one of: {', '.join(sorted(known))}")
    return known[name]
