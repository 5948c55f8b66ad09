"""Applying bricks at chosen positions: everywhere, at generated tokens only, or while the prompt is read."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from bricks.compose import BrickUse, assemble
from bricks.errors import InvalidInputError
from bricks.format import Brick
from bricks.kinds.neurons import neuron_map_applied

POSITIONS = ("all", "generated", "prompt")


@contextmanager
def steered(host, bricks: list[Brick], positions: str = "all") -> Iterator[None]:
    """Apply bricks (composed as an assembly) at every position; only at generated positions (forward
    passes of one new token per row: the decode steps of `generate`); or only while the prompt is read
    (the prefill), so that generation itself runs on the unmodified model in a context that now reads
    as the target language."""
    if positions not in POSITIONS:
        raise InvalidInputError(f"unknown positions {positions!r}", f"use one of: {', '.join(POSITIONS)}")
    nmap = assemble(host.ref, [BrickUse(b) for b in bricks]).neuron_map
    if positions == "all":
        with neuron_map_applied(host.model, host.adapter, nmap):
            yield
        return
    handles = []
    try:
        for layer in nmap.touched_layers():
            handles.append(host.adapter.down_proj(host.model, layer).register_forward_pre_hook(
                _positions_hook(nmap.gain[layer], nmap.offset[layer], decode=positions == "generated")))
        yield
    finally:
        for h in handles:
            h.remove()


def _positions_hook(gain: torch.Tensor, offset: torch.Tensor, decode: bool):
    def hook(module, args):
        h = args[0]
        if (h.shape[1] == 1) != decode:  # a one-token forward is a decode step; longer ones read the prompt
            return None
        return (h * gain.to(h.dtype) + offset.to(h.dtype), *args[1:])

    return hook
