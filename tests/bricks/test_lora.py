"""Compilation to LoRA: exact for gains, refused for offsets, truncation error as promised, PEFT-loadable."""

import pytest
import torch

from bricks.apply import assembly_applied
from bricks.compose import BrickUse, assemble
from bricks.errors import InvalidInputError
from bricks.format import Brick, BrickMeta
from bricks.kinds.growth import GrowthNeurons
from bricks.kinds.lora import LoraModule
from bricks.kinds.neurons import neuron_brick
from bricks.lora import LowRank, allowed_rank, assembly_adapter, truncate, write_peft


def _ids(host):
    return host.tokenizer(["The quick brown fox jumps over the lazy dog."], return_tensors="pt").input_ids


def _w_down(host):
    return {i: host.adapter.down_proj(host.model, i).weight.detach() for i in range(host.n_layers)}


def _logits_with(host, assembly):
    with torch.no_grad(), assembly_applied(host.model, host.adapter, assembly):
        return host.model(_ids(host)).logits


def _logits_merged(host, adapter):
    saved = {}
    try:
        for mod, lr in adapter.modules.items():
            lin = host.model.get_submodule(mod)
            saved[mod] = lin.weight.data.clone()
            lin.weight.data += lr.B @ lr.A
        with torch.no_grad():
            return host.model(_ids(host)).logits
    finally:
        for mod, w in saved.items():
            host.model.get_submodule(mod).weight.data = w


def test_neuron_gains_compile_exactly(tiny_host):
    ref = tiny_host.ref
    a = neuron_brick("a", ref, {1: [1, 2, 3], 3: [9]}, gain=0.0)
    b = neuron_brick("b", ref, {1: [3, 4]}, gain=2.0)
    asm = assemble(ref, [BrickUse(a), BrickUse(b)])
    adapter = assembly_adapter(asm, max_rank=16, w_down=_w_down(tiny_host))
    assert adapter.rank == 4 and not adapter.errors  # overlapping neuron 3 composed, not counted twice
    assert torch.allclose(_logits_merged(tiny_host, adapter), _logits_with(tiny_host, asm), atol=1e-5)


def test_offsets_are_refused_on_the_lora_path(tiny_host):
    b = neuron_brick("s", tiny_host.ref, {1: [1]}, gain=1.0, offset={1: torch.tensor([0.5])})
    with pytest.raises(InvalidInputError, match="offsets"):
        assembly_adapter(assemble(tiny_host.ref, [BrickUse(b)]), 16, w_down=_w_down(tiny_host))


def test_truncation_error_matches_dense_svd():
    torch.manual_seed(0)
    lr = LowRank(torch.randn(12, 40), torch.randn(30, 12))
    cut, err = truncate(lr, 5)
    s = torch.linalg.svdvals((lr.B @ lr.A).double())
    want = float((s[5:].square().sum() / s.square().sum()).sqrt())
    assert cut.rank == 5 and abs(err - want) < 1e-6
    got = float(torch.linalg.norm(lr.B @ lr.A - cut.B @ cut.A) / torch.linalg.norm(lr.B @ lr.A))
    assert abs(got - want) < 1e-4


def test_concatenated_lora_and_growth_equal_hooks(tiny_host):
    """Growth through reserved slots == growth hooks, checked on a host widened by R zero neurons."""
    ref = tiny_host.ref
    lora = Brick(BrickMeta(name="l", kind="lora", host=ref), {
        "model.layers.2.mlp.down_proj": LoraModule(torch.randn(3, 128) * 0.1, torch.randn(64, 3) * 0.1, 6.0)})
    g = GrowthNeurons(torch.randn(2, 64) * 0.3, torch.randn(2, 64) * 0.3, torch.randn(64, 2) * 0.3)
    grow = Brick(BrickMeta(name="g", kind="growth", host=ref), {2: g})
    asm = assemble(ref, [BrickUse(lora), BrickUse(grow)])
    want = _logits_with(tiny_host, asm)
    adapter = assembly_adapter(asm, max_rank=16, reserved=4)
    assert adapter.modules["model.layers.2.mlp.down_proj"].rank == 5
    mlp = tiny_host.model.model.layers[2].mlp
    saved = {n: getattr(mlp, n).weight.data for n in ("gate_proj", "up_proj", "down_proj")}
    try:  # widen layer 2 by 4 zero neurons, then add the adapter's deltas
        mlp.gate_proj.weight.data = torch.cat([saved["gate_proj"], torch.zeros(4, 64)])
        mlp.up_proj.weight.data = torch.cat([saved["up_proj"], torch.zeros(4, 64)])
        mlp.down_proj.weight.data = torch.cat([saved["down_proj"], torch.zeros(64, 4)], 1)
        got = _logits_merged(tiny_host, adapter)
    finally:
        for n, w in saved.items():
            getattr(mlp, n).weight.data = w
    assert torch.allclose(got, want, atol=1e-5)


def test_peft_loads_what_we_write(tiny_host, tmp_path):
    from peft import PeftModel

    a = neuron_brick("a", tiny_host.ref, {0: [5, 6], 2: [7]}, gain=0.25)
    asm = assemble(tiny_host.ref, [BrickUse(a)])
    adapter = assembly_adapter(asm, max_rank=16, w_down=_w_down(tiny_host))
    folder = write_peft(adapter, tmp_path / "adapter")
    want = _logits_with(tiny_host, asm)
    peft_model = PeftModel.from_pretrained(tiny_host.model, str(folder))
    try:
        with torch.no_grad():
            got = peft_model(_ids(tiny_host)).logits
    finally:
        peft_model.unload()
    assert torch.allclose(got, want, atol=1e-5)


def test_allowed_ranks():
    assert [allowed_rank(r) for r in (1, 2, 8, 9, 300)] == [1, 8, 8, 16, 320]
    with pytest.raises(InvalidInputError):
        allowed_rank(600)


def test_peft_roundtrip_through_import(tiny_host, tmp_path):
    """A LoRA brick exported as PEFT and imported back computes the same deltas."""
    from bricks.peft_io import brick_from_peft

    mod = "model.layers.1.mlp.down_proj"
    b = Brick(BrickMeta(name="l", kind="lora", host=tiny_host.ref),
              {mod: LoraModule(torch.randn(4, 128), torch.randn(64, 4), alpha=8.0)})
    adapter = assembly_adapter(assemble(tiny_host.ref, [BrickUse(b)]), max_rank=16)
    back = brick_from_peft(write_peft(adapter, tmp_path / "a"), "back", tiny_host.ref)
    lm, orig = back.lora[mod], b.lora[mod]
    assert torch.allclose(lm.B @ lm.A * lm.scaling, orig.B @ orig.A * orig.scaling, atol=1e-5)


def test_import_rejects_non_adapters(tmp_path, tiny_host):
    from bricks.peft_io import brick_from_peft

    with pytest.raises(InvalidInputError, match="not a readable PEFT"):
        brick_from_peft(tmp_path, "x", tiny_host.ref)
