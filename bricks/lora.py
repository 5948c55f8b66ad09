"""An assembly's trained part as ONE LoRA adapter (vLLM multi-LoRA), and neuron bricks compiled to LoRA.

Each kind compiles its composed value to low-rank deltas per target module (bricks/kinds/: LoRA bricks
with their scaling folded into B, growth bricks into the reserved slots that resident ones leave free, a
neuron map's gains on the LoRA path); per module the adapter concatenates every contribution's rank (exact,
since deltas add).
When the summed rank exceeds the engine's max rank, the product B A is truncated with an SVD
(QR of B and A^T, SVD of the small core) and the relative Frobenius error is reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bricks.compose import Assembly
from bricks.constants import LORA_RANKS
from bricks.errors import InvalidInputError
from bricks.kinds import KINDS
from bricks.kinds.base import LoraContext, LowRank

PEFT_PREFIX = "base_model.model."


@dataclass
class Adapter:
    modules: dict[str, LowRank] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)  # relative Frobenius error per truncated module
    needed_rank: int = 0  # the largest summed rank of a module, before truncation

    @property
    def rank(self) -> int:
        return max((m.rank for m in self.modules.values()), default=0)

    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)


def down_proj_weights(host) -> dict[int, torch.Tensor]:
    """{layer: W_down [d_model, d_ff]}: what compiles neuron gains into down_proj deltas."""
    return {i: host.adapter.down_proj(host.model, i).weight.detach() for i in range(host.n_layers)}


def assembly_adapter(assembly: Assembly, max_rank: int, reserved: int = 0,
                     w_down: dict[int, torch.Tensor] | None = None, growth_start: int = 0) -> Adapter:
    """One adapter for the assembly's LoRA and growth bricks (and its neuron map when `w_down` is given); its
    growth bricks take the reserved slots from `growth_start` on (the ones before hold resident bricks)."""
    ctx = LoraContext(assembly.host, reserved, w_down, growth_start)
    parts: dict[str, list[LowRank]] = {}
    for name, composed in assembly.present().items():
        for mod, lrs in KINDS[name].to_lora(composed, ctx).items():
            parts.setdefault(mod, []).extend(lrs)
    adapter = Adapter()
    for mod, lrs in parts.items():
        cat = LowRank(torch.cat([p.A for p in lrs]), torch.cat([p.B for p in lrs], 1))
        adapter.needed_rank = max(adapter.needed_rank, cat.rank)
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
    for a in LORA_RANKS:
        if r <= a:
            return a
    raise InvalidInputError(f"adapter rank {r} exceeds vLLM's largest LoRA rank {LORA_RANKS[-1]}",
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
