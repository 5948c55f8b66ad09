"""`growth` bricks: per layer, k new FFN neurons (gate rows [k, d_model], up rows [k, d_model], down columns
[d_model, k]). The served host reserves R zero neurons per layer (host.growth_slots); the growth bricks of an
assembly take consecutive slot ranges there, in assembly order, and reach them through the adapter:
gate/up: A = new rows, B = E_T^T; down: A = E_T, B = new columns (T: the brick's slots).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from bricks.errors import InvalidInputError
from bricks.kinds.base import BrickUse, LayerKind, LoraContext, LowRank, bad_brick, check_layer
from bricks.kinds.lora import module_name

if TYPE_CHECKING:
    from bricks.format import Brick, HostRef


@dataclass
class GrowthNeurons:
    gate: torch.Tensor  # [k, d_model]
    up: torch.Tensor  # [k, d_model]
    down: torch.Tensor  # [d_model, k]


def _growth_hook(groups: list[GrowthNeurons], act):
    def hook(module, args, output):
        x = args[0]
        for g in groups:
            h = act(x @ g.gate.to(x.dtype).T) * (x @ g.up.to(x.dtype).T)
            output = output + h @ g.down.to(x.dtype).T
        return output

    return hook


class GrowthKind(LayerKind):
    name = "growth"
    part_type = GrowthNeurons
    unit = "new neurons"
    adds_neurons = True
    peft_export = "growth bricks add neurons: a PEFT LoRA adapter cannot hold them on an unwidened host"

    def part_tensors(self, part: GrowthNeurons) -> dict[str, torch.Tensor]:
        return {"gate": part.gate, "up": part.up, "down": part.down}

    def part_from_tensors(self, tensors: dict[str, torch.Tensor]) -> GrowthNeurons:
        return GrowthNeurons(tensors["gate"], tensors["up"], tensors["down"])

    def check_part(self, src: str, layer: int, g: GrowthNeurons, host: HostRef, brick: Brick) -> None:
        check_layer(src, layer, host)
        k, d = g.gate.shape[0], host.d_model
        if g.gate.shape != (k, d) or g.up.shape != (k, d) or g.down.shape != (d, k):
            raise bad_brick(src, f"layer {layer}: growth needs gate/up [k, {d}] and down [{d}, k], got "
                                 f"{tuple(g.gate.shape)}, {tuple(g.up.shape)}, {tuple(g.down.shape)}")

    def part_size(self, part: GrowthNeurons) -> int:
        return int(part.gate.shape[0])

    def growth_slots(self, parts: dict[int, GrowthNeurons]) -> int:
        return max((self.part_size(g) for g in parts.values()), default=0)

    def compose(self, uses: list[BrickUse], host: HostRef) -> dict[int, list[GrowthNeurons]]:
        out: dict[int, list[GrowthNeurons]] = {}
        for u in uses:
            for layer, g in u.brick.growth.items():
                out.setdefault(layer, []).append(g)
        return out

    def hooks(self, model: torch.nn.Module, adapter: Any, composed: dict[int, list[GrowthNeurons]]) -> list:
        """Forward hooks on each MLP adding W_down_new (act(W_gate_new x) * W_up_new x)."""
        handles = []
        for layer, groups in composed.items():
            mlp = adapter.mlp(model, layer)
            handles.append(mlp.register_forward_hook(_growth_hook(groups, mlp.act_fn)))
        return handles

    def to_lora(self, composed: dict[int, list[GrowthNeurons]], ctx: LoraContext) -> dict[str, list[LowRank]]:
        h = ctx.host
        width = h.d_ff + ctx.reserved
        out: dict[str, list[LowRank]] = {}
        for layer, groups in composed.items():
            start = h.d_ff
            for g in groups:
                k = g.gate.shape[0]
                if start + k > width:
                    raise InvalidInputError(
                        f"growth bricks need {start + k - h.d_ff} reserved neurons in layer {layer}, the host has "
                        f"{ctx.reserved}", "raise host.growth_slots in the manifest")
                E = torch.zeros(k, width)
                E[torch.arange(k), torch.arange(start, start + k)] = 1.0
                for proj, rows in (("gate_proj", g.gate), ("up_proj", g.up)):
                    out.setdefault(module_name(layer, proj), []).append(LowRank(rows.float(), E.T.clone()))
                out.setdefault(module_name(layer, "down_proj"), []).append(LowRank(E, g.down.float()))
                start += k
        return out

    def lora_targets(self, load: Callable[[], Brick], neuron_path: str) -> set[str]:
        return {"gate_proj", "up_proj", "down_proj"}


KIND = GrowthKind()
