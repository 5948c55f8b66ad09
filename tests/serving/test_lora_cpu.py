"""The grouped CPU LoRA products against vLLM's own per-token reference ops (no engine needed)."""

from __future__ import annotations

import pytest
import torch
from vllm.lora.ops.torch_ops import bgmv_expand, bgmv_expand_slice, bgmv_shrink

from serving.lora_cpu import GroupedPunicaWrapperCPU, lora_product
from serving.vllm_plugin import GROUPED_LORA

SLOTS, RANK, D_IN, D_OUT, TOKENS = 4, 8, 48, 40, 23


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(SLOTS, 1, RANK, D_IN, generator=g)  # vLLM's stacked lora_a: [slots, 1, rank, in]
    b = torch.randn(SLOTS, 1, D_OUT, RANK, generator=g)
    x = torch.randn(TOKENS, D_IN, generator=g)
    return a, b, x


@pytest.mark.parametrize("indices", [[0] * TOKENS, [2] * TOKENS, [i % SLOTS for i in range(TOKENS)],
                                     [3, 3, 1, 1, 1, 0, 2] * 3 + [1, 0]])
def test_equals_the_reference_ops_when_every_token_has_an_adapter(tensors, indices):
    a, b, x = tensors
    idx = torch.tensor(indices)
    want_h, got_h = torch.zeros(TOKENS, RANK), torch.zeros(TOKENS, RANK)
    bgmv_shrink(x, a, want_h, idx, 0.5)
    lora_product(x, a, got_h, idx, add=False, scale=0.5)
    torch.testing.assert_close(got_h, want_h)
    base = torch.randn(TOKENS, 3 * D_OUT)
    want, got = base.clone(), base.clone()
    bgmv_expand(want_h, b, want, idx, add_inputs=True)
    lora_product(got_h, b, got, idx, add=True)
    torch.testing.assert_close(got, want)
    want, got = base.clone(), base.clone()
    bgmv_expand_slice(want_h, b, want, idx, D_OUT, D_OUT, add_inputs=True)  # the middle slice (q/k/v style)
    lora_product(got_h, b, got, idx, start=D_OUT, width=D_OUT, add=True)
    torch.testing.assert_close(got, want)


def test_tokens_without_an_adapter_get_no_delta(tensors):
    """Index -1 means no LoRA (vLLM's own definition); the reference ops would read the last slot."""
    a, b, x = tensors
    idx = torch.tensor([0, -1, 2, -1, 3] + [-1] * (TOKENS - 5))
    h = torch.zeros(TOKENS, RANK)
    lora_product(x, a, h, idx, add=False)
    out = torch.zeros(TOKENS, D_OUT)
    lora_product(h, b, out, idx, add=True)
    plain = idx < 0
    assert (out[plain] == 0).all() and (out[~plain] != 0).all()
    for t in (0, 2, 4):
        torch.testing.assert_close(out[t], b[idx[t], 0] @ (a[idx[t], 0] @ x[t]))
    stale = torch.zeros(TOKENS, RANK)
    bgmv_shrink(x, a, stale, idx, 1.0)
    assert (stale[plain] != 0).all()  # what vLLM's reference op does with -1: the last slot's product


def test_the_plugin_names_the_wrapper():
    assert f"{GroupedPunicaWrapperCPU.__module__}.{GroupedPunicaWrapperCPU.__name__}" == GROUPED_LORA
