"""Steering variants of a label brick, built from the per-label means its neurons store.

- form ``diff``: gain 1, offset k * (mean on target - mean on the dominant language);
- form ``mean``: gain 0, offset k * mean on target (the neurons are clamped to a scaled target mean).
"""

from __future__ import annotations

import torch

from bricks.errors import InvalidInputError
from bricks.format import Brick
from bricks.kinds.neurons import NeuronSet

FORMS = ("diff", "mean")


def steering_variant(brick: Brick, target: str, form: str = "diff", k: float = 1.0, dominant: str = "en",
                     layers: list[int] | None = None) -> Brick:
    """A copy of a label brick that steers toward `target` (see the module docstring)."""
    if form not in FORMS:
        raise InvalidInputError(f"unknown steering form {form!r}", f"use one of: {', '.join(FORMS)}")
    labels = brick.meta.labels
    for lab in (target, dominant):
        if lab not in labels:
            raise InvalidInputError(f"brick {brick.name!r} has no mean activations for label {lab!r} "
                                    f"(it has: {', '.join(labels) or 'none'})",
                                    "steer toward a label the brick was extracted with")
    t, d = labels.index(target), labels.index(dominant)
    sets = {}
    for layer, s in brick.neurons.items():
        if layers is not None and layer not in layers:
            continue
        if s.label_means is None:
            raise InvalidInputError(f"brick {brick.name!r} stores no label means in layer {layer}",
                                    "re-extract it with `brick extract emergent`")
        m = s.label_means
        offset = k * (m[t] - m[d]) if form == "diff" else k * m[t]
        gain = torch.full_like(offset, 1.0 if form == "diff" else 0.0)
        sets[layer] = NeuronSet(s.indices.clone(), gain, offset.float(), s.label_means.clone())
    if not sets:
        raise InvalidInputError(f"brick {brick.name!r} touches none of layers {layers}", "pick layers it touches")
    meta = brick.meta.model_copy(deep=True)
    meta.name = f"{brick.name}-steer-{target}"[:64]
    meta.params = {**meta.params, "steering": {"target": target, "form": form, "k": k, "dominant": dominant,
                                               "layers": sorted(sets)}}
    out = Brick(meta, sets)
    out.validate()
    return out


def layer_sets(brick: Brick) -> dict[str, list[int] | None]:
    """Candidate layer restrictions: all of the brick's layers, its lower half, its upper half."""
    layers = sorted(brick.neurons)
    mid = len(layers) // 2
    out: dict[str, list[int] | None] = {"all": None}
    if mid:
        out[f"L{layers[0]}-{layers[mid - 1]}"] = layers[:mid]
        out[f"L{layers[mid]}-{layers[-1]}"] = layers[mid:]
    return out
