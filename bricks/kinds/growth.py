"""`growth` bricks: per layer, k new FFN neurons (gate rows [k, d_model], up rows [k, d_model], down columns
[d_model, k]). The served host reserves R neurons per layer (host.growth_slots), and a growth brick reaches
them in one of two ways (engine.growth_path):

- `gain_table`: the manifest's growth bricks are *resident* (`ResidentGrowth`): each owns fixed slots per layer
  (consecutive, in manifest order), its weights are written there in the served host, and the gain table gates
  those columns per request: gain 0 (an exact zero contribution) unless the request's assembly routes the
  brick, then gain 1. No LoRA, and torch.compile stays on.
- `lora`, and any growth brick that is not resident (published after the server started): the growth bricks
  of an assembly take consecutive slots after the resident ones, in assembly order, reached through the
  adapter: gate/up: A = new rows, B = E_T^T; down: A = E_T, B = new columns (T: the brick's slots).
"""

from __future__ import annotations

import hashlib
import json
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
            start = h.d_ff + ctx.growth_start  # the slots before it hold resident growth bricks
            for g in groups:
                k = g.gate.shape[0]
                if start + k > width:
                    resident = f" ({ctx.growth_start} of them hold resident growth bricks)" if ctx.growth_start else ""
                    raise InvalidInputError(
                        f"growth bricks served through LoRA need {start + k - h.d_ff} reserved neurons in layer "
                        f"{layer}, the host has {ctx.reserved}{resident}",
                        "raise host.growth_slots in the manifest, or list the growth brick in the manifest so it "
                        "is resident (engine.growth_path: gain_table)")
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


# --- resident growth bricks (engine.growth_path: gain_table) ---------------------------------------------
def slot_demand(bricks: list[Brick]) -> dict[int, int]:
    """{layer: slots} that these growth bricks take side by side, each resident in its own slots."""
    need: dict[int, int] = {}
    for b in bricks:
        for layer, k in b.per_layer().items():
            need[layer] = need.get(layer, 0) + k
    return need


@dataclass(frozen=True)
class ResidentGrowth:
    """Growth bricks written into the served host's reserved slots and gated per request by the gain table.

    Slot columns [d_ff, d_ff + width) are gated: gain 0 in every gain-table row (row 0 included) except on
    the slots of the bricks an assembly routes. Columns [d_ff + width, d_ff + reserved) stay free for growth
    bricks served through LoRA."""

    d_ff: int
    n_layers: int
    reserved: int
    slots: dict[str, dict[int, int]]  # brick digest -> {layer: first FFN column of its slots}
    bricks: dict[str, Brick]  # brick digest -> brick

    @property
    def width(self) -> int:
        """Slots per layer the resident bricks span (the most any layer uses)."""
        return max(slot_demand(list(self.bricks.values())).values(), default=0)

    @property
    def gated(self) -> tuple[int, int] | None:
        """The FFN columns the gain table gates, or None when nothing is resident."""
        return (self.d_ff, self.d_ff + self.width) if self.width else None

    def digest(self) -> str:
        """Names the served weights: which bricks sit in which slots, on how many reserved neurons."""
        layout = {"reserved": self.reserved, "slots": {d: sorted(s.items()) for d, s in self.slots.items()}}
        return hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()[:16]

    def gates(self, digests: list[str]) -> torch.Tensor:
        """[n_layers, width] gain on the gated columns: 1 on the slots of these (resident) bricks, else 0."""
        out = torch.zeros(self.n_layers, self.width)
        for digest in digests:
            for layer, first in self.slots.get(digest, {}).items():
                k = self.bricks[digest].per_layer()[layer]
                out[layer, first - self.d_ff : first - self.d_ff + k] = 1.0
        return out

    def write(self, weights: dict[str, torch.Tensor]) -> None:
        """Write every resident brick's neurons into its slots of the widened host weights (in place, by name).
        The tensors written to are made float32 (exact for the host's bf16 rows), so the grown neurons are
        served at full precision."""
        for digest, brick in self.bricks.items():
            for layer, g in brick.growth.items():
                first, k = self.slots[digest][layer], g.gate.shape[0]
                names = {p: module_name(layer, p) + ".weight" for p in ("gate_proj", "up_proj", "down_proj")}
                for name in names.values():
                    weights[name] = weights[name].float()
                weights[names["gate_proj"]][first : first + k] = g.gate.float()
                weights[names["up_proj"]][first : first + k] = g.up.float()
                weights[names["down_proj"]][:, first : first + k] = g.down.float()


def resident_growth(bricks: list[tuple[str, Brick]], host: HostRef, reserved: int) -> ResidentGrowth:
    """Lay out (digest, growth brick) pairs in the reserved slots: per layer, consecutive in the given order."""
    used: dict[int, int] = {}
    slots: dict[str, dict[int, int]] = {}
    for digest, brick in bricks:
        brick.validate(host)
        slots[digest] = {}
        for layer, k in brick.per_layer().items():
            slots[digest][layer] = host.d_ff + used.get(layer, 0)
            used[layer] = used.get(layer, 0) + k
    need = max(used.values(), default=0)
    if need > reserved:
        names = ", ".join(b.name for _, b in bricks)
        raise InvalidInputError(f"resident growth bricks ({names}) need {need} reserved neurons per layer side by "
                                f"side, the host has {reserved}",
                                f"set host.growth_slots: {need} or more, or engine.growth_path: lora")
    return ResidentGrowth(host.d_ff, host.n_layers, reserved, slots, dict(bricks))
