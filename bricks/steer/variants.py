"""Steering variants of a label brick, built from the per-label means its neurons store.

- form ``diff``: gain 1, offset k * (mean on target - mean on the dominant language);
- form ``mean``: gain 0, offset k * mean on target (the neurons are clamped to a scaled target mean).

`staged_variant` puts two of them in one brick: one acting while the prompt is read, one at generated
tokens (what `brick eval --steer` measures best, served through the gain table's per-phase rows).
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


def staged_variant(brick: Brick, target: str, prompt: tuple[str, float] | None,
                   generated: tuple[str, float] | None, dominant: str = "en", layers: list[int] | None = None) -> Brick:
    """One staged steering brick: the (form, k) variant `prompt` on prompt tokens and `generated` on the
    tokens the request generates (`NeuronSet.generated_gain` / `generated_offset`); None leaves that phase
    unsteered (gain 1, no offset)."""
    if prompt is None and generated is None:
        raise InvalidInputError("a staged steering brick needs a variant in at least one phase",
                                "give a prompt variant, a generated one, or both")
    p, g = (None if part is None else steering_variant(brick, target, part[0], part[1], dominant, layers)
            for part in (prompt, generated))
    out = p or g
    for layer, s in out.neurons.items():
        gen = g.neurons[layer] if g is not None else None
        s.generated_gain = gen.gain if gen is not None else torch.ones_like(s.gain)
        s.generated_offset = gen.offset if gen is not None else None
        if p is None:  # identity while the prompt is read
            s.gain, s.offset = torch.ones_like(s.gain), None
    out.meta.params["steering"] = {"target": target, "dominant": dominant, "layers": sorted(out.neurons),
                                   "prompt": _part(prompt), "generated": _part(generated)}
    out.meta.params["staged"] = True  # what a manifest check reads without loading the tensors
    out.validate()
    return out


def _part(part: tuple[str, float] | None) -> dict | None:
    return None if part is None else {"form": part[0], "k": part[1]}
