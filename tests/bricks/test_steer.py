"""Steering settings written as text, and the package's public names."""

import pytest

import bricks.steer
from bricks.errors import InvalidInputError
from bricks.kinds.neurons import neuron_brick
from bricks.steer import Setting, SteerPlan, parse_staged


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
