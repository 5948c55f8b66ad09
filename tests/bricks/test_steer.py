"""Steering: language scoring, variants, where they act, settings written as text, the package's names."""

import pytest
import torch

import bricks.steer
from bricks.errors import InvalidInputError
from bricks.kinds.neurons import neuron_brick
from bricks.steer import Setting, SteerPlan, language_shares, parse_staged, repetition, steered, steering_variant
from tests.conftest import TINY_TEXT, labelled_brick

TORCH_THREADS = 1


def test_public_names_import_from_the_package():
    for name in ("word_vocab", "FORMS", "Setting", "POSITIONS", "grid", "layer_sets", "render_steer_table",
                 "steer_sweep", "steering_variant", "steered", "language_shares", "repetition", "DEFAULT_PROMPTS"):
        assert hasattr(bricks.steer, name), name


def test_staged_settings_from_text():
    assert parse_staged("mean:2/diff:0.3, diff:1/diff:0.5") == [Setting(("mean", 2.0), ("diff", 0.3)),
                                                                 Setting(("diff", 1.0), ("diff", 0.5))]
    for bad in ("mean:2", "odd:1/diff:1", "mean:x/diff:1"):
        with pytest.raises(InvalidInputError, match="FORM:K/FORM:K"):
            parse_staged(bad)


def test_plan_from_text_validates_and_expands_per_brick(tiny_host):
    plan = SteerPlan.from_text("diff", "1,2", "all,generated", "mean:2/diff:0.3", "halves")
    brick = neuron_brick("b", tiny_host.ref, {0: [1, 2], 1: [3], 2: [4], 3: [5]})
    layers, settings = plan.settings(brick)
    assert list(layers) == ["all", "L0-1", "L2-3"]
    assert len(settings) == 2 * 2 * 3 + 3 and {s.layers for s in settings} == set(layers)
    for args, match in ((("nope",), "unknown"), (("diff", "x"), "numbers"), (("diff", "1", "all", "", "some"),
                                                                              "layer mode")):
        with pytest.raises(InvalidInputError, match=match):
            SteerPlan.from_text(*args)


def test_language_scorer():
    fr = language_shares("Le chat est sur la table et nous sommes dans la cuisine avec les enfants.")
    de = language_shares("Der Hund ist nicht im Haus, aber die Katze schläft auf dem Sofa.")
    en = language_shares("The dog is not in the house, but the cat is sleeping on the sofa.")
    assert fr["fr"] > 0.9 and de["de"] > 0.9 and en["en"] > 0.9
    assert language_shares("12345 !!!")["coverage"] == 0.0
    assert repetition("a b c a b c a b c a b c") > 0.5 > repetition("one two three four five six")


def test_steering_variant_forms(tiny_host):
    b = labelled_brick(tiny_host)
    diff = steering_variant(b, "fr", "diff", k=2.0, dominant="en")
    assert all((s.gain == 1).all() and torch.allclose(s.offset, torch.full_like(s.offset, 2.0))
               for s in diff.neurons.values())
    mean = steering_variant(b, "fr", "mean", k=0.5, dominant="en", layers=[3])
    assert list(mean.neurons) == [3] and (mean.neurons[3].gain == 0).all()
    assert torch.allclose(mean.neurons[3].offset, torch.full((2,), 0.5))


def test_steering_positions(tiny_host):
    """generated: only forwards that continue a KV cache (decode steps) change; prompt: only the forward
    that starts the sequence (the prefill)."""
    v = steering_variant(labelled_brick(tiny_host), "fr", "diff", k=5.0)
    ids = tiny_host.tokenizer(TINY_TEXT[0], return_tensors="pt").input_ids
    model = tiny_host.model

    def prefill_then_step():
        out = model(ids, use_cache=True)
        return out.logits, model(ids[:, -1:], past_key_values=out.past_key_values, use_cache=True).logits

    with torch.no_grad():
        plain, plain_step = prefill_then_step()
        with steered(tiny_host, [v], "generated"):
            prompt, step = prefill_then_step()
        with steered(tiny_host, [v], "all"):
            everywhere, _ = prefill_then_step()
        with steered(tiny_host, [v], "prompt"):
            prompt_only, _ = prefill_then_step()
    assert torch.equal(prompt, plain) and not torch.equal(everywhere, plain)
    assert not torch.equal(step, plain_step)
    assert torch.equal(prompt_only, everywhere)
