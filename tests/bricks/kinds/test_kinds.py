"""Every kind through the same interface, and a fourth kind added by one module (here: this test) alone."""

from dataclasses import dataclass

import pytest
import torch

from bricks.apply import assembly_applied
from bricks.compose import BrickUse, assemble
from bricks.errors import InvalidInputError
from bricks.format import Brick, BrickMeta, brick_from_bytes
from bricks.kinds import KINDS, kind_of
from bricks.kinds.base import Kind, LoraContext, bad_brick, check_layer
from bricks.kinds.growth import GrowthNeurons
from bricks.kinds.lora import LoraModule
from bricks.kinds.neurons import neuron_brick
from bricks.lora import assembly_adapter


def _bricks(ref):
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    lora = Brick(BrickMeta(name="l", kind="lora", host=ref), {
        "model.layers.1.mlp.down_proj": LoraModule(rnd(3, 128), rnd(64, 3), 6.0),
        "model.layers.2.self_attn.q_proj": LoraModule(rnd(2, 64), rnd(64, 2), 2.0)})
    grow = Brick(BrickMeta(name="g", kind="growth", host=ref), {2: GrowthNeurons(rnd(5, 64), rnd(5, 64), rnd(64, 5))})
    neurons = neuron_brick("n", ref, {0: [1, 2, 3], 3: [9]}, gain=0.5)
    return {"neurons": neurons, "lora": lora, "growth": grow}


def test_each_kind_round_trips_and_reports_through_its_module(tiny_host):
    for kind, brick in _bricks(tiny_host.ref).items():
        spec = kind_of(kind)
        assert brick.spec is spec and spec.name == kind
        got = brick_from_bytes(brick.to_bytes(), host=tiny_host.ref)
        assert got.tensors().keys() == brick.tensors().keys()
        assert all(key.startswith(f"{kind}.") for key in got.tensors())
        assert got.per_layer() == brick.per_layer() and got.size() == sum(brick.per_layer().values())
    assert _bricks(tiny_host.ref)["lora"].per_layer() == {1: 3, 2: 2}
    assert _bricks(tiny_host.ref)["growth"].growth_slots() == 5


def test_composition_keeps_each_kind_apart(tiny_host):
    b = _bricks(tiny_host.ref)
    asm = assemble(tiny_host.ref, [BrickUse(x) for x in b.values()])
    assert set(asm.present()) == {"neurons", "lora", "growth"}
    assert assemble(tiny_host.ref, []).present() == {}
    targets = {k: b[k].spec.lora_targets(lambda k=k: b[k], "gain_table") for k in b}
    assert targets == {"neurons": set(), "lora": {"down_proj", "q_proj"},
                       "growth": {"gate_proj", "up_proj", "down_proj"}}
    adapter = assembly_adapter(asm, max_rank=64, reserved=8)
    assert adapter.needed_rank == 5 and adapter.modules["model.layers.1.mlp.down_proj"].rank == 3
    assert adapter.modules["model.layers.2.mlp.down_proj"].A.shape == (5, 128 + 8)  # growth in the reserved slots


def test_unknown_kind_is_one_clear_error(tiny_host):
    with pytest.raises(InvalidInputError, match="brick kind 'adapters' is unknown"):
        kind_of("adapters")
    with pytest.raises(ValueError, match="unknown; use one of: neurons, lora, growth"):
        BrickMeta(name="x", kind="adapters", host=tiny_host.ref)


# --- a hypothetical fourth kind: a per-layer bias on the MLP output -------------------------------------------
@dataclass
class Bias:
    vector: torch.Tensor  # [d_model]


class BiasKind(Kind):
    name = "bias"
    unit = "layers"
    part_type = Bias
    peft_export = "a bias is not a low-rank delta"

    def owner_key(self, owner):
        return str(owner)

    def parse_owner(self, key):
        return int(key)

    def part_tensors(self, part):
        return {"vector": part.vector}

    def part_from_tensors(self, tensors):
        return Bias(tensors["vector"])

    def check_part(self, src, owner, part, host, brick):
        check_layer(src, owner, host)
        if part.vector.shape != (host.d_model,):
            raise bad_brick(src, f"layer {owner}: the bias must be [{host.d_model}]")

    def layer_of(self, owner):
        return owner

    def part_size(self, part):
        return 1

    def compose(self, uses, host):
        out = {}
        for u in uses:
            for layer, part in u.brick.parts.items():
                out[layer] = out.get(layer, 0) + part.vector
        return out

    def hooks(self, model, adapter, composed):
        return [adapter.mlp(model, layer).register_forward_hook(lambda m, a, out, v=v: out + v.to(out.dtype))
                for layer, v in composed.items()]

    def to_lora(self, composed, ctx: LoraContext):
        raise InvalidInputError("bias bricks have no LoRA form", "serve them with the reference engine")

    def lora_targets(self, load, neuron_path):
        return set()


def test_a_fourth_kind_is_one_module(tiny_host, monkeypatch):
    monkeypatch.setitem(KINDS, "bias", BiasKind())
    ref = tiny_host.ref
    brick = Brick(BrickMeta(name="shift", kind="bias", host=ref), {1: Bias(torch.full((ref.d_model,), 0.1))})
    got = brick_from_bytes(brick.to_bytes(), host=ref)
    assert got.kind == "bias" and got.layers() == [1] and torch.equal(got.parts[1].vector, brick.parts[1].vector)
    ids = tiny_host.tokenizer(["The quick brown fox"], return_tensors="pt").input_ids
    with torch.no_grad():
        plain = tiny_host.model(ids).logits
        with assembly_applied(tiny_host.model, tiny_host.adapter, assemble(ref, [BrickUse(got)])):
            shifted = tiny_host.model(ids).logits
    assert not torch.allclose(plain, shifted)
    with pytest.raises(InvalidInputError, match="must be"):
        Brick(BrickMeta(name="bad", kind="bias", host=ref), {1: Bias(torch.zeros(3))}).to_bytes()
