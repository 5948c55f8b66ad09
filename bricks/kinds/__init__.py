"""Brick kinds, one module each with the same parts (see `base.Kind`): `neurons`, `lora`, `growth`.

Code elsewhere asks `kind_of(name)` instead of switching on a kind's name; a new kind is a module with a
`Kind` subclass, added to KINDS below.
"""

from __future__ import annotations

from bricks.errors import InvalidInputError
from bricks.kinds import growth, lora, neurons
from bricks.kinds.base import Kind

KINDS: dict[str, Kind] = {k.name: k for k in (neurons.KIND, lora.KIND, growth.KIND)}


def kind_of(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise InvalidInputError(f"brick kind {name!r} is unknown",
                                f"use one of: {', '.join(KINDS)} (or upgrade brickwork)") from None
