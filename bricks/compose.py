"""Compose an assembly's bricks into what the engines apply.

Neuron bricks compose in assembly order as affine maps on h: (g1, v1) then (g2, v2) is
(g1*g2, g2*v1 + v2). The result is one dense gain row G[layer, d_ff] and offset row O[layer, d_ff]:
exactly what the vLLM gain table holds and what the reference hooks apply.
LoRA bricks concatenate per module (deltas add); growth bricks stay per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bricks.errors import InvalidInputError
from bricks.format import Brick, GrowthNeurons, HostRef, LoraModule


@dataclass(frozen=True)
class BrickUse:
    """A brick as an assembly uses it: an optional gain override and a scale on its stored offset."""

    brick: Brick
    gain: float | None = None
    offset_scale: float = 1.0


@dataclass
class NeuronMap:
    gain: torch.Tensor  # [n_layers, d_ff]
    offset: torch.Tensor  # [n_layers, d_ff]

    @classmethod
    def identity(cls, n_layers: int, d_ff: int) -> NeuronMap:
        return cls(torch.ones(n_layers, d_ff), torch.zeros(n_layers, d_ff))

    def is_identity(self) -> bool:
        return bool((self.gain == 1).all() and (self.offset == 0).all())

    def has_offset(self) -> bool:
        return bool((self.offset != 0).any())

    def touched_layers(self) -> list[int]:
        return [i for i in range(self.gain.shape[0]) if (self.gain[i] != 1).any() or (self.offset[i] != 0).any()]


@dataclass
class Assembly:
    """What an engine needs for one request: a neuron map, LoRA modules, growth neurons."""

    host: HostRef
    uses: list[BrickUse]
    neuron_map: NeuronMap
    lora: dict[str, list[LoraModule]] = field(default_factory=dict)
    growth: dict[int, list[GrowthNeurons]] = field(default_factory=dict)

    @property
    def brick_names(self) -> list[str]:
        return [u.brick.name for u in self.uses]


def compose_neurons(uses: list[BrickUse], n_layers: int, d_ff: int) -> NeuronMap:
    m = NeuronMap.identity(n_layers, d_ff)
    for u in uses:
        if u.brick.kind != "neurons":
            continue
        for layer, s in u.brick.neurons.items():
            g = s.gain if u.gain is None else torch.full_like(s.gain, float(u.gain))
            v = torch.zeros_like(g) if s.offset is None else s.offset * float(u.offset_scale)
            idx = s.indices
            m.offset[layer, idx] = g * m.offset[layer, idx] + v
            m.gain[layer, idx] = m.gain[layer, idx] * g
    return m


def assemble(host: HostRef, uses: list[BrickUse]) -> Assembly:
    """Check every brick belongs to `host` and compose them."""
    for u in uses:
        u.brick.validate(host)
        if u.gain is not None and not torch.isfinite(torch.tensor(float(u.gain))):
            raise InvalidInputError(f"gain for brick {u.brick.name!r} is not finite", "use a finite number")
    lora: dict[str, list[LoraModule]] = {}
    growth: dict[int, list[GrowthNeurons]] = {}
    for u in uses:
        for mod, lm in u.brick.lora.items():
            lora.setdefault(mod, []).append(lm)
        for layer, g in u.brick.growth.items():
            growth.setdefault(layer, []).append(g)
    return Assembly(host=host, uses=list(uses), neuron_map=compose_neurons(uses, host.n_layers, host.d_ff),
                    lora=lora, growth=growth)
