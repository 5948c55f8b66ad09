"""Applying bricks at chosen positions: everywhere, at generated tokens only, or while the prompt is read."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from bricks.compose import BrickUse, assemble
from bricks.errors import InvalidInputError
from bricks.format import Brick
from bricks.kinds.neurons import neuron_map_applied

POSITIONS = ("all", "generated", "prompt")  # bricks.constants.PHASES, in sweep order


@contextmanager
def steered(host, bricks: list[Brick], positions: str = "all") -> Iterator[None]:
    """Apply bricks (composed as an assembly) at every position; only at generated positions (the forwards
    that continue a KV cache: the decode steps of `generate`); or only while the prompt is read (the
    prefill), so that generation itself runs on the unmodified model in a context that now reads as the
    target language. The same phases a served request has (`BrickUse.phase`, the gain table's two rows)."""
    if positions not in POSITIONS:
        raise InvalidInputError(f"unknown positions {positions!r}", f"use one of: {', '.join(POSITIONS)}")
    nmap = assemble(host.ref, [BrickUse(b, phase=positions) for b in bricks]).neuron_map
    with neuron_map_applied(host.model, host.adapter, nmap):
        yield
