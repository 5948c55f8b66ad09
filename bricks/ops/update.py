"""Update a neuron brick from new data: re-extract with the parent's method and parameters, compare.

A neuron brick is a finding, not a trained weight: its next version is what the same method with the
same parameters finds on the new corpus. The parent's recorded parameters (`meta.params`) are mapped back
to its extractor's options (only the label the parent is for is extracted), the extractor runs with its
own held-out check, and the result is compared with the parent: the Jaccard overlap of their (layer,
neuron) sets and the change of held-out selectivity (own ΔPPL / mean other ΔPPL).
When the new corpus is the one the parent came from (same digest), the extraction would repeat itself:
that is refused rather than published as a new version. LoRA bricks are updated by continued training
(`bricks.ops.train`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bricks.corpus import Corpus
from bricks.errors import InvalidInputError
from bricks.format import Brick

# Recorded parameter -> option name, where an extractor records an option under another name.
_RENAMED = {"split_seed": "seed"}


@dataclass
class NeuronUpdate:
    brick: Brick
    comparison: dict[str, Any]


def update_neurons(host, parent: Brick, corpus: Corpus, *, overrides: dict[str, Any] | None = None,
                   out_dir: Path | None = None, progress: bool = True) -> NeuronUpdate:
    """The parent's next version from `corpus` (`overrides`: extractor options to change, e.g. force)."""
    from bricks.extract import get_extractor, resolve_name

    if parent.kind != "neurons":
        raise InvalidInputError(f"brick {parent.name!r} is a {parent.kind} brick, not a neuron brick",
                                "update LoRA bricks with training data (brick update REF --data FILE.jsonl)")
    method = resolve_name(parent.meta.method)
    if method is None:
        raise InvalidInputError(f"brick {parent.name!r} was made by {parent.meta.method!r}, not by an extractor",
                                "only extracted neuron bricks can be re-extracted; make a new brick instead")
    if parent.meta.params.get("corpus_digest") == corpus.digest():
        raise InvalidInputError(f"the data is the corpus {parent.name!r} was extracted from "
                                f"({corpus.digest()[:19]}...): re-extracting would repeat the parent",
                                "pass the new or grown corpus")
    spec = get_extractor(method)
    options = {**_options_of(parent, spec.options, progress), **(overrides or {})}
    label = parent.meta.params.get("label") or parent.meta.routing.label
    prefix = _prefix(parent.name, label)
    result = spec.run(host, corpus, name=prefix, out_dir=out_dir, **options)
    found = [b for b in result.bricks if b.name == parent.name]
    if not found:
        why = result.skipped.get(parent.name, "the method found no brick of that name")
        raise InvalidInputError(f"re-extracting {parent.name!r} on the new data published nothing: {why}",
                                "check the new data has enough text of the brick's label, or use --opt force")
    child = found[0]
    return NeuronUpdate(child, compare(parent, child))


def _options_of(parent: Brick, model, progress: bool) -> dict[str, Any]:
    params = {_RENAMED.get(k, k): v for k, v in parent.meta.params.items()}
    options = {k: v for k, v in params.items() if k in model.model_fields and k not in ("profile", "checkpoint")}
    label = parent.meta.params.get("label")
    if label is not None and "labels" in model.model_fields:
        options["labels"] = [label]
    options["progress"] = progress
    return options


def _prefix(name: str, label: str | None) -> str:
    """The extraction name that gives `name` for `label` (label bricks are named PREFIX-LABEL)."""
    suffix = f"-{label}" if label else ""
    return name[: -len(suffix)] if suffix and name.endswith(suffix) else name


def neuron_set(brick: Brick) -> set[tuple[int, int]]:
    return {(layer, int(i)) for layer, s in brick.neurons.items() for i in s.indices.tolist()}


def compare(parent: Brick, child: Brick) -> dict[str, Any]:
    a, b = neuron_set(parent), neuron_set(child)
    union = a | b
    return {"jaccard": round(len(a & b) / max(len(union), 1), 4), "shared": len(a & b), "parent_size": len(a),
            "size": len(b), "selectivity_before": _selectivity(parent), "selectivity_after": _selectivity(child)}


def _selectivity(brick: Brick) -> float | None:
    held = brick.meta.metrics.get("held_out") or {}
    own, other = held.get("own"), held.get("mean_other")
    if own is None or other is None:
        return None
    return round(own / max(abs(other), 1e-6), 3)
