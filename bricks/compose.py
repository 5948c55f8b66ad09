"""Compose an assembly's bricks into what the engines apply: per kind, one composed value.

Each kind composes its own bricks (bricks/kinds/): neuron bricks into one dense gain/offset map
(exactly what the vLLM gain table holds and what the reference hooks apply), LoRA bricks concatenated
per module (deltas add), growth bricks per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bricks.constants import PHASES
from bricks.errors import InvalidInputError
from bricks.format import HostRef
from bricks.kinds import KINDS
from bricks.kinds.base import BrickUse
from bricks.kinds.neurons import NeuronMap

__all__ = ["Assembly", "BrickUse", "assemble", "order_matters"]  # BrickUse: what assemble takes


@dataclass
class Assembly:
    """What an engine needs for one request: per kind, the composed value of the assembly's bricks."""

    host: HostRef
    uses: list[BrickUse]
    composed: dict[str, Any] = field(default_factory=dict)

    @property
    def brick_names(self) -> list[str]:
        return [u.brick.name for u in self.uses]

    @property
    def neuron_map(self) -> NeuronMap:
        """The neuron bricks' map (identity when there are none): what the gain table serves."""
        return self.composed["neurons"]

    def present(self) -> dict[str, Any]:
        """The kinds this assembly uses, with their composed values."""
        return {name: c for name, c in self.composed.items() if not KINDS[name].is_empty(c)}


def assemble(host: HostRef, uses: list[BrickUse]) -> Assembly:
    """Check every brick belongs to `host` and compose them, kind by kind."""
    for u in uses:
        u.brick.validate(host)
        if u.gain is not None and not torch.isfinite(torch.tensor(float(u.gain))):
            raise InvalidInputError(f"gain for brick {u.brick.name!r} is not finite", "use a finite number")
        _check_phase(u)
    composed = {name: kind.compose([u for u in uses if u.brick.kind == name], host) for name, kind in KINDS.items()}
    return Assembly(host=host, uses=list(uses), composed=composed)


def _check_phase(u: BrickUse) -> None:
    if u.phase not in PHASES:
        raise InvalidInputError(f"brick {u.brick.name!r}: unknown phase {u.phase!r}",
                                f"use one of: {', '.join(PHASES)}")
    staged = u.phase != "all" or u.generated_offset_scale is not None
    if staged and u.brick.kind != "neurons":
        raise InvalidInputError(f"brick {u.brick.name!r} is a {u.brick.kind} brick: only neuron bricks act in one "
                                "phase of a request or take a generated_offset_scale",
                                "drop phase / generated_offset_scale for it (it acts on every token)")
    if u.generated_offset_scale is not None and not torch.isfinite(torch.tensor(float(u.generated_offset_scale))):
        raise InvalidInputError(f"generated_offset_scale for brick {u.brick.name!r} is not finite",
                                "use a finite number")


def order_matters(uses: list[BrickUse]) -> bool:
    """Whether these uses compose differently in another order (then the given order is the meaning)."""
    return any(kind.order_matters([u for u in uses if u.brick.kind == name]) for name, kind in KINDS.items())
