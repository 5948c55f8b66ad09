"""Grow on the tiny host: neurons keyed to their facts, trained through the growth kind's own hook, a brick that
starts as the plain host exactly, the report's parts, and every bad input refused before work."""

from __future__ import annotations

import pytest
import torch

from bricks.apply import assembly_applied
from bricks.compose import BrickUse, assemble
from bricks.errors import InvalidInputError
from bricks.ops.data import Fact
from bricks.ops.grow import (
    GROWTH_METHODS,
    default_layers,
    encode_facts,
    grow_facts,
    grow_options,
    residual_at,
    run_from,
)
from bricks.ops.train import TrainingInterrupted

FACTS = [Fact(prompt="The fox lives in", target=" Lyon", paraphrases=["The home of the fox is"]),
         Fact(prompt="The dog was born in", target=" Berlin", paraphrases=["The dog's birthplace is"]),
         Fact(prompt="def add is written by", target=" Ada", paraphrases=[])]
FAST = {"steps": 25, "lr": 0.05, "layers": "3", "memory_docs": 2, "memory_tokens": 256, "eval_docs": 1,
        "progress": False}


@pytest.fixture(scope="module")
def grown(tiny_host):
    return grow_facts(tiny_host, FACTS, FAST, "fox-facts", data_digest="sha256:test", heldout=FACTS[:1])


def logits(host, ids, uses=()):
    with torch.no_grad(), assembly_applied(host.model, host.adapter, assemble(host.ref, list(uses))):
        return host.model(input_ids=ids).logits


def test_running_the_top_of_the_decoder_equals_the_whole_forward(tiny_host):
    ids = encode_facts(tiny_host.tokenizer, FACTS, True).ids
    whole = tiny_host.model.model(input_ids=ids, use_cache=False).last_hidden_state
    with torch.no_grad():
        top = run_from(tiny_host, 2, residual_at(tiny_host, 2, ids))
    torch.testing.assert_close(top, whole, rtol=1e-5, atol=1e-5)


def test_encoded_facts_mark_the_positions_that_predict_the_target(tiny_host):
    seqs = encode_facts(tiny_host.tokenizer, FACTS, True)
    assert seqs.ids.shape[0] == 5 and seqs.fact.tolist() == [0, 0, 1, 1, 2]
    tok = tiny_host.tokenizer
    for r in range(seqs.ids.shape[0]):
        want = tok(FACTS[int(seqs.fact[r])].target, add_special_tokens=False)["input_ids"]
        assert seqs.labels()[r][seqs.target[r]].tolist() == want


def test_a_grown_brick_is_a_valid_growth_brick_with_lineage_params(grown, tiny_host):
    b = grown.brick
    assert b.kind == "growth" and b.meta.method == "grow-tpatcher"
    assert b.layers() == [3] and b.per_layer() == {3: 3 * 4}
    assert default_layers(tiny_host.n_layers) == [2, 3] and default_layers(30) == [18, 21, 24]
    assert b.meta.params["data_digest"] == "sha256:test" and b.meta.params["n_facts"] == 3
    assert b.meta.params["steps"] == 25 and "progress" not in b.meta.params
    assert "The fox lives in" in b.meta.routing.texts and "The home of the fox is" in b.meta.routing.texts
    b.validate(tiny_host.ref)


def test_training_lowers_the_edit_loss_and_the_report_has_every_part(grown):
    r = grown.report
    # The tiny host's random head keeps the loss high even once the target is the argmax.
    assert r["loss_last"]["edit"] < r["loss_first"]["edit"] - 0.5
    assert r["reliability"] >= 2 / 3 > r["reliability_plain_host"]
    for key in ("reliability", "reliability_plain_host", "generality_paraphrases_trained", "generality_heldout",
                "locality_token_agreement", "heldout_ppl_delta_pct", "heldout_ppl_delta_pct_by_label",
                "activation_margin_median", "activation_margin_positive", "output_coefficient_ratio"):
        assert key in r, key
    assert 0 <= r["reliability"] <= 1 and r["n_heldout_wordings"] == 2
    assert grown.brick.meta.metrics == r


def test_at_step_zero_the_brick_is_the_plain_host_exactly(tiny_host):
    zero = grow_facts(tiny_host, FACTS, {**FAST, "steps": 1, "lr": 1e-12}, "z", data_digest="d")
    for g in zero.brick.growth.values():
        g.down.zero_()  # what training starts from: down columns 0
    ids = encode_facts(tiny_host.tokenizer, FACTS, True).ids
    assert torch.equal(logits(tiny_host, ids), logits(tiny_host, ids, [BrickUse(zero.brick)]))


def test_both_methods_are_registered_with_papers_and_lm_has_no_locality_terms(tiny_host):
    assert set(GROWTH_METHODS) == {"tpatcher", "lm"}
    assert all(m.reference_url.startswith("https://arxiv.org/") for m in GROWTH_METHODS.values())
    res = grow_facts(tiny_host, FACTS, {**FAST, "method": "lm", "steps": 3}, "lm-facts", data_digest="d")
    assert set(res.report["loss_first"]) == {"lm"} and res.brick.meta.method == "grow-lm"


@pytest.mark.parametrize("raw, message", [
    ({"method": "rome"}, "unknown growth method 'rome'"),
    ({"neurons_per_fact": 0}, "neurons_per_fact"),
    ({"steps": -1}, "steps"),
    ({"layers": ""}, "at least one layer"),
    ({"margin": 5, "method": "lm"}, "has no option 'margin'"),
    ({"stpes": 5}, "did you mean 'steps'"),
])
def test_bad_options_are_one_clear_error(raw, message):
    with pytest.raises(InvalidInputError, match=message):
        grow_options(raw)


def test_bad_facts_and_layers_are_refused_before_work(tiny_host):
    with pytest.raises(InvalidInputError, match="no facts"):
        grow_facts(tiny_host, [], FAST, "x", data_digest="d")
    clash = [FACTS[0], Fact(prompt="The fox lives in", target=" Paris")]
    with pytest.raises(InvalidInputError, match="two targets"):
        grow_facts(tiny_host, clash, FAST, "x", data_digest="d")
    with pytest.raises(InvalidInputError, match="layer 9 does not exist"):
        grow_facts(tiny_host, FACTS, {**FAST, "layers": "1,9"}, "x", data_digest="d")
    with pytest.raises(InvalidInputError):
        grow_facts(tiny_host, FACTS, FAST, "../x", data_digest="d")


def test_an_interrupted_run_is_one_clear_error(tiny_host, monkeypatch):
    spec = GROWTH_METHODS["lm"]

    def interrupt(step, opts):
        raise KeyboardInterrupt

    monkeypatch.setitem(GROWTH_METHODS, "lm", type(spec)(spec.name, interrupt, spec.reference_url, spec.summary,
                                                        spec.options))
    with pytest.raises(TrainingInterrupted, match="nothing was published"):
        grow_facts(tiny_host, FACTS, {**FAST, "method": "lm"}, "x", data_digest="d")
    assert all(p.requires_grad for p in tiny_host.model.parameters())  # the host is given back as it was
