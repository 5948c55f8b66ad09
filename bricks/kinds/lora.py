"""`lora` bricks: per target module (PEFT names, e.g. model.layers.3.mlp.down_proj), A [r, d_in], B [d_out, r]
and alpha; the delta is (alpha / r) B A x. Bricks of an assembly concatenate their ranks per module (deltas add).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from bricks.errors import InvalidInputError
from bricks.kinds.base import BrickUse, Kind, LoraContext, LowRank, bad_brick, check_layer

if TYPE_CHECKING:
    from bricks.format import Brick, HostRef

FFN_MODULES = ("gate_proj", "up_proj", "down_proj")
LORA_MODULES = (*FFN_MODULES, "q_proj", "k_proj", "v_proj", "o_proj")
LORA_MODULE_RE = re.compile(r"^model\.layers\.(\d+)\.(mlp|self_attn)\.(\w+)$")


def module_name(layer: int, proj: str) -> str:
    """The LoRA target name used in brick files; PEFT adds 'base_model.model.' in front."""
    part = "mlp" if proj in FFN_MODULES else "self_attn"
    return f"model.layers.{layer}.{part}.{proj}"


@dataclass
class LoraModule:
    A: torch.Tensor  # [r, d_in]
    B: torch.Tensor  # [d_out, r]
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def lora_module_shape(mod: str, h: HostRef) -> tuple[int, int]:
    """(d_in, d_out) of a LoRA target module on the host."""
    m = LORA_MODULE_RE.match(mod)
    if not m or m.group(3) not in LORA_MODULES:
        raise InvalidInputError(f"LoRA module {mod!r} is not a known target",
                                f"use names like model.layers.3.mlp.down_proj ({', '.join(LORA_MODULES)})")
    kv = h.n_kv_heads * h.head_dim
    shapes = {
        "gate_proj": (h.d_model, h.d_ff), "up_proj": (h.d_model, h.d_ff), "down_proj": (h.d_ff, h.d_model),
        "q_proj": (h.d_model, h.n_heads * h.head_dim), "k_proj": (h.d_model, kv),
        "v_proj": (h.d_model, kv), "o_proj": (h.n_heads * h.head_dim, h.d_model),
    }
    return shapes[m.group(3)]


def _lora_hook(mods: list[LoraModule]):
    def hook(module, args, output):
        x = args[0]
        for m in mods:
            output = output + (x @ m.A.to(x.dtype).T) @ m.B.to(x.dtype).T * m.scaling
        return output

    return hook


def widen(lr: LowRank, mod: str, host: HostRef, reserved: int) -> LowRank:
    """Pad down_proj's A / gate,up's B to the served width d_ff + R (the reserved growth slots stay zero)."""
    if not reserved:
        return lr
    if mod.endswith("down_proj") and lr.A.shape[1] == host.d_ff:
        return LowRank(torch.cat([lr.A, torch.zeros(lr.rank, reserved)], 1), lr.B)
    if mod.endswith(("gate_proj", "up_proj")) and lr.B.shape[0] == host.d_ff:
        return LowRank(lr.A, torch.cat([lr.B, torch.zeros(reserved, lr.rank)], 0))
    return lr


class LoraKind(Kind):
    name = "lora"
    part_type = LoraModule
    unit = "rank"

    def owner_key(self, owner: str) -> str:
        return owner

    def parse_owner(self, key: str) -> str:
        if not LORA_MODULE_RE.match(key):
            raise ValueError(f"{key!r} is not a LoRA target module")
        return key

    def part_tensors(self, part: LoraModule) -> dict[str, torch.Tensor]:
        return {"A": part.A, "B": part.B, "alpha": torch.tensor([part.alpha], dtype=torch.float32)}

    def part_from_tensors(self, tensors: dict[str, torch.Tensor]) -> LoraModule:
        return LoraModule(tensors["A"], tensors["B"], float(tensors["alpha"].reshape(-1)[0]))

    def check_part(self, src: str, mod: str, m: LoraModule, host: HostRef, brick: Brick) -> None:
        d_in, d_out = lora_module_shape(mod, host)
        check_layer(src, self.layer_of(mod), host)
        r = m.A.shape[0] if m.A.dim() == 2 else -1
        if m.A.shape != (r, d_in) or m.B.shape != (d_out, r) or r < 1:
            raise bad_brick(src, f"{mod}: A must be [r, {d_in}] and B [{d_out}, r], got "
                                 f"{tuple(m.A.shape)} and {tuple(m.B.shape)}")
        if not (torch.isfinite(m.A).all() and torch.isfinite(m.B).all()):
            raise bad_brick(src, f"{mod}: A or B holds NaN or inf")

    def layer_of(self, mod: str) -> int:
        return int(LORA_MODULE_RE.match(mod).group(1))

    def part_size(self, part: LoraModule) -> int:
        return part.rank

    def compose(self, uses: list[BrickUse], host: HostRef) -> dict[str, list[LoraModule]]:
        out: dict[str, list[LoraModule]] = {}
        for u in uses:
            for mod, lm in u.brick.lora.items():
                out.setdefault(mod, []).append(lm)
        return out

    def hooks(self, model: torch.nn.Module, adapter: Any, composed: dict[str, list[LoraModule]]) -> list:
        """Forward hooks adding scaling * B A x to each module's output (x: the input after any pre-hook,
        so a down_proj delta reads the transformed h, as in vLLM)."""
        return [model.get_submodule(mod).register_forward_hook(_lora_hook(mods)) for mod, mods in composed.items()]

    def to_lora(self, composed: dict[str, list[LoraModule]], ctx: LoraContext) -> dict[str, list[LowRank]]:
        return {mod: [widen(LowRank(m.A.float(), m.B.float() * m.scaling), mod, ctx.host, ctx.reserved)
                      for m in mods] for mod, mods in composed.items()}

    def lora_targets(self, load: Callable[[], Brick], neuron_path: str) -> set[str]:
        return {m.rsplit(".", 1)[1] for m in load().parts}


KIND = LoraKind()
