"""Apply an assembly to a transformers model with hooks (the reference semantics); each kind brings its
hooks (bricks/kinds/): neuron maps as down_proj pre-hooks, LoRA deltas and grown neurons as forward hooks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from bricks.adapters import ArchAdapter
from bricks.compose import Assembly
from bricks.kinds import KINDS


@contextmanager
def assembly_applied(model: torch.nn.Module, adapter: ArchAdapter, assembly: Assembly) -> Iterator[None]:
    """Everything an assembly changes, applied for the duration of the block."""
    handles = []
    try:
        # A forward hook sees the input after the pre-hooks: a down_proj delta reads the transformed h, as in vLLM.
        for name, composed in assembly.present().items():
            handles += KINDS[name].hooks(model, adapter, composed)
        yield
    finally:
        for h in handles:
            h.remove()
