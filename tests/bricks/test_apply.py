"""The reference semantics, checked against what they must equal by construction."""

import torch

from bricks.apply import assembly_applied
from bricks.compose import BrickUse, assemble
from bricks.format import Brick, BrickMeta
from bricks.kinds.growth import GrowthNeurons
from bricks.kinds.lora import LoraModule
from bricks.kinds.neurons import compose_neurons, neuron_brick, neuron_map_applied


def _logits(host, ids):
    with torch.no_grad():
        return host.model(ids).logits


def _ids(host):
    return host.tokenizer(["The quick brown fox jumps over the lazy dog."], return_tensors="pt").input_ids


def test_gain_one_is_bit_identical(tiny_host):
    ids = _ids(tiny_host)
    b = neuron_brick("ones", tiny_host.ref, {0: range(128), 2: [3, 4]}, gain=1.0)
    with assembly_applied(tiny_host.model, tiny_host.adapter, assemble(tiny_host.ref, [BrickUse(b)])):
        got = _logits(tiny_host, ids)
    assert torch.equal(got, _logits(tiny_host, ids))


def test_gain_zero_equals_zeroed_activations(tiny_host):
    ids = _ids(tiny_host)
    idx = torch.tensor([1, 7, 40, 99])
    b = neuron_brick("abl", tiny_host.ref, {1: idx}, gain=0.0)
    with assembly_applied(tiny_host.model, tiny_host.adapter, assemble(tiny_host.ref, [BrickUse(b)])):
        got = _logits(tiny_host, ids)

    def zero(module, args):
        h = args[0].clone()
        h[..., idx] = 0
        return (h,)

    handle = tiny_host.adapter.down_proj(tiny_host.model, 1).register_forward_pre_hook(zero)
    try:
        want = _logits(tiny_host, ids)
    finally:
        handle.remove()
    assert torch.equal(got, want)
    assert not torch.equal(got, _logits(tiny_host, ids))


def test_composition_equals_sequential_maps(tiny_host):
    """(g1, v1) then (g2, v2) == (g1*g2, g2*v1 + v2), overlapping neurons included."""
    ref = tiny_host.ref
    a = neuron_brick("a", ref, {2: [1, 2, 3]}, gain=0.5, offset={2: torch.tensor([0.1, 0.2, 0.3])})
    b = neuron_brick("b", ref, {2: [2, 3, 4]}, gain=3.0, offset={2: torch.tensor([1.0, -1.0, 0.5])})
    m = compose_neurons([BrickUse(a), BrickUse(b, offset_scale=2.0)], ref.n_layers, ref.d_ff)
    h = torch.randn(5, ref.d_ff)
    seq = h.clone()
    for br, k in ((a, 1.0), (b, 2.0)):
        s = br.neurons[2]
        seq[:, s.indices] = seq[:, s.indices] * s.gain + s.offset * k
    assert torch.allclose(h * m.gain[2] + m.offset[2], seq, atol=1e-6)
    assert m.touched_layers() == [2]


def test_gain_override_replaces_stored_gain(tiny_host):
    b = neuron_brick("a", tiny_host.ref, {0: [5]}, gain=0.0)
    m = compose_neurons([BrickUse(b, gain=2.5)], 4, 128)
    assert m.gain[0, 5] == 2.5 and m.gain.sum() == 4 * 128 + 1.5


def test_lora_hook_equals_merged_weight(tiny_host):
    ids = _ids(tiny_host)
    mod = "model.layers.1.mlp.down_proj"
    lm = LoraModule(torch.randn(4, 128) * 0.1, torch.randn(64, 4) * 0.1, alpha=8.0)
    b = Brick(BrickMeta(name="l", kind="lora", host=tiny_host.ref), {mod: lm})
    with assembly_applied(tiny_host.model, tiny_host.adapter, assemble(tiny_host.ref, [BrickUse(b)])):
        got = _logits(tiny_host, ids)
    lin = tiny_host.model.get_submodule(mod)
    saved = lin.weight.data.clone()
    lin.weight.data += lm.scaling * lm.B @ lm.A
    try:
        want = _logits(tiny_host, ids)
    finally:
        lin.weight.data = saved
    assert torch.allclose(got, want, atol=1e-5)


def test_growth_hook_equals_wider_ffn(tiny_host):
    """k grown neurons == the same FFN with k more columns."""
    from transformers.models.llama.modeling_llama import LlamaMLP

    ids = _ids(tiny_host)
    k = 3
    g = GrowthNeurons(torch.randn(k, 64) * 0.2, torch.randn(k, 64) * 0.2, torch.randn(64, k) * 0.2)
    b = Brick(BrickMeta(name="g", kind="growth", host=tiny_host.ref), {2: g})
    with assembly_applied(tiny_host.model, tiny_host.adapter, assemble(tiny_host.ref, [BrickUse(b)])):
        got = _logits(tiny_host, ids)
    layer = tiny_host.model.model.layers[2]
    old = layer.mlp
    cfg = tiny_host.model.config
    wide = LlamaMLP(cfg.__class__(**{**cfg.to_dict(), "intermediate_size": 128 + k}))
    wide.gate_proj.weight.data = torch.cat([old.gate_proj.weight.data, g.gate])
    wide.up_proj.weight.data = torch.cat([old.up_proj.weight.data, g.up])
    wide.down_proj.weight.data = torch.cat([old.down_proj.weight.data, g.down], dim=1)
    layer.mlp = wide
    try:
        want = _logits(tiny_host, ids)
    finally:
        layer.mlp = old
    assert torch.allclose(got, want, atol=1e-5)


def test_hooks_are_removed_after_use(tiny_host):
    ids = _ids(tiny_host)
    before = _logits(tiny_host, ids)
    m = compose_neurons([BrickUse(neuron_brick("z", tiny_host.ref, {0: range(64)}, gain=0.0))], 4, 128)
    with neuron_map_applied(tiny_host.model, tiny_host.adapter, m):
        pass
    assert torch.equal(_logits(tiny_host, ids), before)
