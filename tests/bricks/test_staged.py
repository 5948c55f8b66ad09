"""Staged neuron maps: a brick (or a use of one) with one map at prompt tokens and another at generated
tokens, composed, stored, applied by the reference hooks and refused where it cannot be expressed."""

import pytest
import torch

from bricks.compose import BrickUse, assemble
from bricks.errors import InvalidInputError
from bricks.format import brick_from_bytes
from bricks.kinds.neurons import neuron_map_applied, neuron_map_to_lora
from bricks.steer import staged_variant, steering_variant
from tests.bricks.test_export import lora_brick
from tests.conftest import TINY_TEXT, labelled_brick


def _prefill_then_step(model, ids):
    with torch.no_grad():
        out = model(ids, use_cache=True)
        step = model(ids[:, -1:], past_key_values=out.past_key_values, use_cache=True)
    return out.logits, step.logits


def test_staged_variant_holds_both_maps_and_round_trips(tiny_host):
    b = labelled_brick(tiny_host)
    staged = staged_variant(b, "fr", ("mean", 2.0), ("diff", 0.3))
    for s in staged.neurons.values():
        assert (s.gain == 0).all() and torch.allclose(s.offset, torch.full_like(s.offset, 2.0))
        assert (s.generated_gain == 1).all() and torch.allclose(s.generated_offset, torch.full_like(s.offset, 0.3))
    assert staged.meta.params["steering"]["prompt"] == {"form": "mean", "k": 2.0}
    again = brick_from_bytes(staged.to_bytes())
    s = again.neurons[1]
    assert s.staged and torch.equal(s.generated_offset, staged.neurons[1].generated_offset)
    nmap = assemble(tiny_host.ref, [BrickUse(again)]).neuron_map
    assert nmap.staged and (nmap.gain[1, [3, 9, 40]] == 0).all() and (nmap.generated.gain[1, [3, 9, 40]] == 1).all()


def test_one_map_when_phases_agree(tiny_host):
    nmap = assemble(tiny_host.ref, [BrickUse(labelled_brick(tiny_host))]).neuron_map
    assert not nmap.staged and nmap.generated is None


def test_reference_hooks_apply_each_phase_map(tiny_host):
    """The prefill sees the prompt map, a forward continuing the cache the generated map; that equals
    applying the prompt map for the prefill and then the generated map for the step."""
    b = labelled_brick(tiny_host)
    p, g = steering_variant(b, "fr", "mean", 3.0), steering_variant(b, "fr", "diff", 4.0)
    staged = staged_variant(b, "fr", ("mean", 3.0), ("diff", 4.0))
    model, adapter = tiny_host.model, tiny_host.adapter
    ids = tiny_host.tokenizer(TINY_TEXT[0], return_tensors="pt").input_ids
    with neuron_map_applied(model, adapter, assemble(tiny_host.ref, [BrickUse(staged)]).neuron_map):
        got_prefill, got_step = _prefill_then_step(model, ids)
    pmap, gmap = (assemble(tiny_host.ref, [BrickUse(x)]).neuron_map for x in (p, g))
    with torch.no_grad():
        with neuron_map_applied(model, adapter, pmap):
            out = model(ids, use_cache=True)
        with neuron_map_applied(model, adapter, gmap):
            want_step = model(ids[:, -1:], past_key_values=out.past_key_values, use_cache=True).logits
    assert torch.equal(got_prefill, out.logits) and torch.allclose(got_step, want_step, atol=1e-6)


def test_phase_of_a_use_and_generated_scale(tiny_host):
    b = steering_variant(labelled_brick(tiny_host), "fr", "diff", 1.0)
    ablate = labelled_brick(tiny_host, name="ablate")
    ablate.neurons.pop(1)  # layer 3 only: neurons 0 and 127
    uses = [BrickUse(ablate), BrickUse(b, phase="generated")]
    nmap = assemble(tiny_host.ref, uses).neuron_map
    assert nmap.staged
    assert (nmap.offset[1] == 0).all() and torch.allclose(nmap.generated.offset[1, [3, 9, 40]], torch.ones(3))
    assert (nmap.gain[3, [0, 127]] == 0).all() and (nmap.generated.gain[3, [0, 127]] == 0).all()  # ablated throughout
    scaled = assemble(tiny_host.ref, [BrickUse(b, offset_scale=2.0, generated_offset_scale=0.5)]).neuron_map
    assert torch.allclose(scaled.offset[1, 3], torch.tensor(2.0))
    assert torch.allclose(scaled.generated.offset[1, 3], torch.tensor(0.5))


def test_bad_phases_are_clear_errors(tiny_host):
    b = labelled_brick(tiny_host)
    with pytest.raises(InvalidInputError, match="unknown phase"):
        assemble(tiny_host.ref, [BrickUse(b, phase="decode")])
    lora = lora_brick(tiny_host.ref)
    with pytest.raises(InvalidInputError, match="only neuron bricks"):
        assemble(tiny_host.ref, [BrickUse(lora, phase="prompt")])
    staged = assemble(tiny_host.ref, [BrickUse(b, phase="prompt")]).neuron_map
    with pytest.raises(InvalidInputError, match="staged"):
        neuron_map_to_lora(staged, {})


def test_a_generated_offset_needs_a_generated_gain(tiny_host):
    b = labelled_brick(tiny_host)
    b.neurons[1].generated_offset = torch.ones(3)
    with pytest.raises(InvalidInputError, match="generated_offset without generated_gain"):
        b.validate(tiny_host.ref)


def test_steering_brick_for_every_kind_of_setting(tiny_host):
    from bricks.steer.publish import steering_brick
    from bricks.steer.sweep import parse_staged

    b = labelled_brick(tiny_host)
    staged, prompt_only, everywhere = parse_staged("mean:2/diff:0.3,mean:3/none,diff:1/diff:1")
    assert prompt_only.generated is None
    s = steering_brick(b, "fr", staged).neurons[1]
    assert (s.gain == 0).all() and (s.generated_gain == 1).all()
    p = steering_brick(b, "fr", prompt_only, name="p")
    nmap = assemble(tiny_host.ref, [BrickUse(p)]).neuron_map
    assert p.name == "p" and nmap.staged and nmap.generated.is_identity() and (nmap.gain[1, [3, 9, 40]] == 0).all()
    assert not steering_brick(b, "fr", everywhere).neurons[1].staged
    with pytest.raises(InvalidInputError, match="FORM:K/FORM:K"):
        parse_staged("none/none")
