"""Metrics of a host or an assembly: registered methods with the same shape as extractors and merge methods.

A metric is a function registered by name, with its paper and its options model:

    class StabilityOptions(MetricOptions):
        eps: float = Field(1e-3, gt=0, description="Perturbation size, relative to each token's embedding norm.")

    @metric("stability", reference_url="https://arxiv.org/abs/2510.16851", options=StabilityOptions)
    def measure_stability(host: Host, uses: list[BrickUse], options: StabilityOptions,
                          plot: Path | None = None) -> MetricResult: ...

`uses` is the assembly to measure (empty: the host alone); the function returns a `MetricResult`: a JSON-able
report and the figures it wrote (a PNG at `plot`, none when `plot` is None). `brick eval --metric NAME` is the
command over it; `run_metric` is the same from Python.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bricks.extract.options import ExtractorOptions, MethodRegistry, MethodSpec, OptionWording

_MODULES = ("stability", "mfa")


class MetricOptions(ExtractorOptions):
    """What every metric's options share (`progress`)."""


@dataclass
class MetricResult:
    report: dict[str, Any]
    figures: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricSpec(MethodSpec):
    """A registered metric: `fn(host, uses, options, plot=None) -> MetricResult`."""

    wording: ClassVar[OptionWording] = OptionWording(unknown="metric {name} has no option {key!r}{suggestion}",
                                                     invalid="metric {name} option {where}: {reason}",
                                                     fix="--opt {key}=... takes {takes}")


METRICS = MethodRegistry("metric", MetricSpec)


def metric(name: str, reference_url: str, options: type[MetricOptions]) -> Callable:
    """Register a metric function `fn(host, uses, options, plot=None) -> MetricResult` under `name`."""
    return METRICS.register(name, reference_url, options)


def metrics() -> MethodRegistry:
    """Every metric (their modules are imported first)."""
    for mod in _MODULES:
        importlib.import_module(f"bricks.analysis.{mod}")
    return METRICS


def get_metric(name: str) -> MetricSpec:
    """The metric `name` spells, or an error naming the registered ones."""
    return metrics().lookup(name)


def run_metric(name: str, host, uses: list | None = None, plot: str | Path | None = None,
               **options: Any) -> MetricResult:
    """Validate `options` (keyword values, as `--opt` gives them) and measure `host` with the assembly `uses`."""
    spec = get_metric(name)
    return spec.fn(host, list(uses or []), spec.parse(options), plot=None if plot is None else Path(plot))
