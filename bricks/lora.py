"""An assembly's trained part as ONE LoRA adapter (vLLM multi-LoRA), and neuron bricks compiled to LoRA.

Per target module the adapter concatenates every contribution's rank (exact, since deltas add):
- LoRA bricks: A, B with their scaling folded into B;
- growth bricks (host served with R reserved zero neurons per layer, brick owning slots T):
  gate/up: A = new rows, B = E_T^T; down: A = E_T, B = new columns;
- neuron maps on the LoRA path (export, fallback engine): down_proj: A = E_S, B = (g - 1) W_down[:, S].
  Offsets are a bias, not a low-rank delta: refused here.
When the summed rank exceeds the engine's max rank, the product B A is truncated with an SVD
(QR of B and A^T, SVD of the small core) and the relative Frobenius error is reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bricks.compose import Assembly, NeuronMap
from bricks.errors import InvalidInputError
from bricks.format import HostRef

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
PEFT_PREFIX = "base_model.model."


@dataclass
class LowRank:
    A: torch.Tensor  # [r, d_in]
    B: torch.Tensor  # [d_out, r], scaling folded in

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


@dataclass
class Adapter:
    modules: dict[str, LowRank] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)  # relative Frobenius error per truncated module

    @property
    def rank(self) -> int:
        return max((m.rank for m in self.modules.values()), default=0)

    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)


def neuron_map_to_lora(nmap: NeuronMap, w_down: dict[int, torch.Tensor], adapter_name: str = "assembly"
                       ) -> dict[str, LowRank]:
    """down_proj deltas for a composed neuron map (gain part only); `w_down[layer]` is [d_model, d_ff]."""
    if nmap.has_offset():
        raise InvalidInputError(
            f"{adapter_name}: neuron bricks with offsets (steering, mean-ablation) cannot be expressed as LoRA",
            "serve them with engine.neuron_path: gain_table, or drop the offset (offset_scale: 0)")
    out = {}
    for layer in nmap.touched_layers():
        s = torch.nonzero(nmap.gain[layer] != 1).flatten()
        A = torch.zeros(len(s), nmap.gain.shape[1])
        A[torch.arange(len(s)), s] = 1.0
        B = w_down[layer].float()[:, s] * (nmap.gain[layer, s] - 1)
        out[f"model.layers.{layer}.mlp.down_proj"] = LowRank(A, B)
    return out


def growth_to_lora(assembly: Assembly, reserved: int) -> dict[str, list[LowRank]]:
    """Growth bricks in assembly order take consecutive slot ranges of the R reserved neurons per layer."""
    h = assembly.host
    width = h.d_ff + reserved
    out: dict[str, list[LowRank]] = {}
    for layer, groups in assembly.growth.items():
        start = h.d_ff
        for g in groups:
            k = g.gate.shape[0]
            if start + k > width:
                raise InvalidInputError(
                    f"growth bricks need {start + k - h.d_ff} reserved neurons in layer {layer}, the host has "
                    f"{reserved}", "raise host.growth_slots in the manifest")
            E = torch.zeros(k, width)
            E[torch.arange(k), torch.arange(start, start + k)] = 1.0
            for proj, rows in (("gate_proj", g.gate), ("up_proj", g.up)):
                out.setdefault(f"model.layers.{layer}.mlp.{proj}", []).append(LowRank(rows.float(), E.T.clone()))
            out.setdefault(f"model.layers.{layer}.mlp.down_proj", []).append(LowRank(E, g.down.float()))
            start += k
    return out


def _widen(lr: LowRank, mod: str, host: HostRef, reserved: int) -> LowRank:
    """Pad a LoRA brick's down_proj A / gate,up B to the served width d_ff + R (reserved slots are zero)."""
    if not reserved:
        return lr
    if mod.endswith("down_proj") and lr.A.shape[1] == host.d_ff:
        return LowRank(torch.cat([lr.A, torch.zeros(lr.rank, reserved)], 1), lr.B)
    if mod.endswith(("gate_proj", "up_proj")) and lr.B.shape[0] == host.d_ff:
        return LowRank(lr.A, torch.cat([lr.B, torch.zeros(reserved, lr.rank)], 0))
    return lr


def assembly_adapter(assembly: Assembly, max_rank: int, reserved: int = 0,
                     w_down: dict[int, torch.Tensor] | None = None) -> Adapter:
    """One adapter for the assembly's LoRA and growth bricks (and its neuron map when `w_down` is given)."""
    parts: dict[str, list[LowRank]] = {}
    for mod, mods in assembly.lora.items():
        parts[mod] = [_widen(LowRank(m.A.float(), m.B.float() * m.scaling), mod, assembly.host, reserved)
                      for m in mods]
    for mod, lrs in growth_to_lora(assembly, reserved).items():
        parts.setdefault(mod, []).extend(lrs)
    if w_down is not None:
        for mod, lr in neuron_map_to_lora(assembly.neuron_map, w_down).items():
            parts.setdefault(mod, []).append(_widen(lr, mod, assembly.host, reserved))
    adapter = Adapter()
    for mod, lrs in parts.items():
        cat = LowRank(torch.cat([p.A for p in lrs]), torch.cat([p.B for p in lrs], 1))
        if cat.rank > max_rank:
            cat, err = truncate(cat, max_rank)
            adapter.errors[mod] = err
        adapter.modules[mod] = cat
    return adapter


def truncate(lr: LowRank, rank: int) -> tuple[LowRank, float]:
    """Best rank-`rank` approximation of B A without forming it: QR of B and A^T, SVD of the core."""
    qb, rb = torch.linalg.qr(lr.B.double())
    qa, ra = torch.linalg.qr(lr.A.double().T)
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    total = float(s.square().sum())
    err = float(s[rank:].square().sum() / total) ** 0.5 if total > 0 else 0.0
    B = (qb @ u[:, :rank]) * s[:rank]
    A = vh[:rank] @ qa.T
    return LowRank(A.float(), B.float()), err


def allowed_rank(r: int) -> int:
    for a in VLLM_RANKS:
        if r <= a:
            return a
    raise InvalidInputError(f"adapter rank {r} exceeds vLLM's largest LoRA rank {VLLM_RANKS[-1]}",
                            "lower engine.max_lora_rank so the composer truncates")


def write_peft(adapter: Adapter, folder: Path, pad_to: int | None = None) -> Path:
    """Write a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors), scaling 1 (alpha = r)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    r = pad_to or allowed_rank(adapter.rank)
    tensors = {}
    for mod, lr in adapter.modules.items():
        pad = r - lr.rank
        A = torch.cat([lr.A, torch.zeros(pad, lr.A.shape[1])]) if pad else lr.A
        B = torch.cat([lr.B, torch.zeros(lr.B.shape[0], pad)], 1) if pad else lr.B
        tensors[f"{PEFT_PREFIX}{mod}.lora_A.weight"] = A.contiguous()
        tensors[f"{PEFT_PREFIX}{mod}.lora_B.weight"] = B.contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    targets = sorted({m.rsplit(".", 1)[1] for m in adapter.modules})
    LoraConfig(r=r, lora_alpha=r, target_modules=targets, lora_dropout=0.0, bias="none",
               task_type="CAUSAL_LM").save_pretrained(str(folder))
    save_file(tensors, folder / "adapter_model.safetensors")
    (folder / "brickwork.json").write_text(json.dumps({"rank": adapter.rank, "padded_rank": r,
                                                       "truncation_error": adapter.errors}))
    return folder
