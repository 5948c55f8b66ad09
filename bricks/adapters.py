"""Architecture adapters: where each layer's FFN lives, its width, and the LoRA target names.

Everything in brickwork that touches FFN neurons goes through an adapter, so supporting a new
family means one small class here. The neuron activation h is the input of `down_proj`:
h = act(gate_proj x) * up_proj x for the gated (Llama-style) FFN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bricks.errors import InvalidInputError
from bricks.format import HostRef


@dataclass(frozen=True)
class ArchAdapter:
    arch: str  # the HF architecture class name
    family: str  # what vLLM's plugin subclasses ("llama")

    def layers(self, model: torch.nn.Module) -> torch.nn.ModuleList:
        return model.model.layers

    def mlp(self, model: torch.nn.Module, layer: int) -> torch.nn.Module:
        return self.layers(model)[layer].mlp

    def down_proj(self, model: torch.nn.Module, layer: int) -> torch.nn.Linear:
        """The module whose input is the neuron activation h (forward-pre-hooks go here)."""
        return self.mlp(model, layer).down_proj

    def ffn_weights(self, model: torch.nn.Module, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W_gate [d_ff, d], W_up [d_ff, d], W_down [d, d_ff])."""
        m = self.mlp(model, layer)
        return m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight

    def host_ref(self, cfg: dict, fingerprint: str, name: str = "") -> HostRef:
        heads = int(cfg["num_attention_heads"])
        head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
        return HostRef(
            fingerprint=fingerprint, arch=self.arch, n_layers=int(cfg["num_hidden_layers"]),
            d_model=int(cfg["hidden_size"]), d_ff=int(cfg["intermediate_size"]), n_heads=heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or heads), head_dim=head_dim, name=name,
        )


# Families whose decoder layers are model.layers[i].mlp.{gate,up,down}_proj with a gated activation.
_GATED = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
}
# Known but not supported yet, with the reason a user needs to hear.
_DECLARED_UNSUPPORTED = {
    "GPT2LMHeadModel": "GPT-2's FFN is c_fc -> gelu -> c_proj (Conv1D, no gate projection)",
    "GPTNeoXForCausalLM": "GPT-NeoX's FFN is dense_h_to_4h -> gelu -> dense_4h_to_h (no gate projection)",
}


def adapter_for(cfg: dict, source: str = "host") -> ArchAdapter:
    archs = cfg.get("architectures") or []
    arch = archs[0] if archs else cfg.get("model_type", "?")
    if arch in _GATED:
        return ArchAdapter(arch=arch, family=_GATED[arch])
    if arch in _DECLARED_UNSUPPORTED:
        raise InvalidInputError(
            f"{source}: architecture {arch} is not supported: {_DECLARED_UNSUPPORTED[arch]}",
            f"use a Llama-style host ({', '.join(_GATED)})",
        )
    raise InvalidInputError(f"{source}: unknown architecture {arch!r}",
                            f"use a Llama-style host ({', '.join(_GATED)})")
