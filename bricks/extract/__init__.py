"""Extractors: each finds bricks in a host from a corpus. One module per method, same shape.

An extractor is a function registered by name, with its paper and its options model:

    class EmergentOptions(ExtractorOptions):
        top_pct: float = Field(0.5, gt=0, le=100, description="Brick size, % of all FFN neurons.")

    @extractor("emergent", reference_url="https://arxiv.org/abs/2409.02877", options=EmergentOptions)
    def extract_emergent(host: Host, corpus: Corpus, options: EmergentOptions | None = None, *, name: str,
                         out_dir: Path | None = None) -> Extraction: ...

It returns an `Extraction`: the bricks to publish (each with method, parameters, corpus digest and
metrics in its metadata), a JSON-able report, the evidence to show per candidate, and the artifact
files (plots) it wrote into `out_dir` (none when `out_dir` is None). `ExtractorSpec.run` validates
options given as keyword values (as the CLI's `--opt` gives them) and calls the function. The registry is
the one merge and growth methods use too (`bricks.extract.options.MethodRegistry`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bricks.extract.options import ExtractorOptions, MethodRegistry, MethodSpec
from bricks.format import Brick

_MODULES = ("emergent", "clusters", "rare_tokens", "sparse_probe")


@dataclass
class Extraction:
    bricks: list[Brick]
    report: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # candidate name -> why it was not published
    # candidate name -> the held-out figures that decided it, {column: value}, for a summary table
    evidence: dict[str, dict[str, float]] = field(default_factory=dict)


class ExtractorSpec(MethodSpec):
    """A registered extractor: `fn(host, corpus, options, name=..., out_dir=...) -> Extraction`."""

    def run(self, host, corpus, *, name: str, out_dir: str | Path | None = None, **options: Any) -> Extraction:
        """Validate `options` and extract; plots go to `out_dir` (none when it is None)."""
        return self.fn(host, corpus, self.parse(options), name=name, out_dir=None if out_dir is None else Path(out_dir))


_EXTRACTORS = MethodRegistry("extraction method", ExtractorSpec, sort=True)


def extractor(name: str, reference_url: str, options: type[ExtractorOptions],
              aliases: tuple[str, ...] = ()) -> Callable:
    return _EXTRACTORS.register(name, reference_url, options, aliases=aliases)


def extractors() -> dict[str, ExtractorSpec]:
    """Every extractor; its module is imported first (one whose own dependencies are missing is left out)."""
    for mod in _MODULES:
        try:
            importlib.import_module(f"bricks.extract.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"bricks.extract.{mod}":
                raise
    return dict(_EXTRACTORS)


def resolve_name(name: str) -> str | None:
    """The registered name for `name`: '-' reads as '_', and an extractor's aliases count (`rare-token`)."""
    extractors()
    return _EXTRACTORS.resolve(name)


def get_extractor(name: str) -> ExtractorSpec:
    extractors()
    return _EXTRACTORS.lookup(name)
