"""Apply an assembly to a transformers model with hooks (the reference semantics).

- neuron map: forward-pre-hook on down_proj, h <- h * G[layer] + O[layer];
- LoRA: forward hook adding scaling * B A x to the module output, where x is the module input
  after the pre-hook (so the down_proj delta reads the transformed h, as in vLLM);
- growth: forward hook on the MLP adding W_down_new (act(W_gate_new x) * W_up_new x).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from bricks.adapters import ArchAdapter
from bricks.compose import Assembly, NeuronMap


def _neuron_hook(gain: torch.Tensor, offset: torch.Tensor | None):
    def hook(module, args):
        h = args[0]
        out = h * gain.to(h.dtype)
        if offset is not None:
            out = out + offset.to(h.dtype)
        return (out, *args[1:])

    return hook


def _lora_hook(mods):
    def hook(module, args, output):
        x = args[0]
        for m in mods:
            output = output + (x @ m.A.to(x.dtype).T) @ m.B.to(x.dtype).T * m.scaling
        return output

    return hook


def _growth_hook(groups, act):
    def hook(module, args, output):
        x = args[0]
        for g in groups:
            h = act(x @ g.gate.to(x.dtype).T) * (x @ g.up.to(x.dtype).T)
            output = output + h @ g.down.to(x.dtype).T
        return output

    return hook


@contextmanager
def neuron_map_applied(model: torch.nn.Module, adapter: ArchAdapter, nmap: NeuronMap) -> Iterator[None]:
    handles = []
    try:
        for layer in nmap.touched_layers():
            off = nmap.offset[layer] if (nmap.offset[layer] != 0).any() else None
            hook = _neuron_hook(nmap.gain[layer], off)
            handles.append(adapter.down_proj(model, layer).register_forward_pre_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def assembly_applied(model: torch.nn.Module, adapter: ArchAdapter, assembly: Assembly) -> Iterator[None]:
    """Everything an assembly changes, applied for the duration of the block."""
    handles = []
    try:
        with neuron_map_applied(model, adapter, assembly.neuron_map):
            for mod, mods in assembly.lora.items():
                handles.append(model.get_submodule(mod).register_forward_hook(_lora_hook(mods)))
            for layer, groups in assembly.growth.items():
                mlp = adapter.mlp(model, layer)
                handles.append(mlp.register_forward_hook(_growth_hook(groups, mlp.act_fn)))
            yield
    finally:
        for h in handles:
            h.remove()
