"""Activation-zone profiles: categories, quantile zones on a toy neuron, and profiles on bricks."""

import json

import pytest
import torch

from bricks.corpus import Corpus, Doc
from bricks.errors import InvalidInputError
from bricks.extract.zones import (
    TokenActivations,
    assign_zones,
    attach_profile,
    brick_zone_profile,
    collect_activations,
    profile_from_activations,
    token_category,
    token_slices,
    zone_edges,
    zone_profile,
)
from bricks.format import brick_from_bytes
from bricks.kinds.neurons import neuron_brick
from tests.conftest import TINY_TEXT

VOCAB = ["7", "42", " the", " cat", ",", ".", " Paris", "{", "\n", "é"]


class ToyTokenizer:
    def decode(self, ids):
        return "".join(VOCAB[i] for i in ids)


@pytest.mark.parametrize("text, cat", [
    ("7", "digit"), (" 42", "digit"), (" the", "lowercase"), (" Paris", "capitalized"), (",", "punctuation"),
    ("...", "punctuation"), ("{", "code_symbol"), ("):", "code_symbol"), ("\n", "whitespace"), ("  ", "whitespace"),
    ("é", "lowercase"), ("_x", "other"),
])
def test_token_category(text, cat):
    assert token_category(text) == cat


def test_zones_are_quantiles():
    v = torch.arange(100, dtype=torch.float32)
    z = assign_zones(v, zone_edges(v, 5))
    assert [int((z == k).sum()) for k in range(5)] == [20] * 5 and z[-1] == 4 and z[0] == 0


def test_toy_neuron_top_zone_is_digits():
    """Fires hard on digits, weakly on a mix of everything else: the top zone is pure digits."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, len(VOCAB), (400,), generator=gen)
    ids[::5] = torch.randint(0, 2, (80,), generator=gen)  # 20% digits
    acts = torch.rand(400, generator=gen)
    acts[ids < 2] += 10.0
    ta = TokenActivations({3: acts[:, None]}, {3: torch.tensor([11])}, ids, torch.zeros(400, dtype=torch.long), ["en"])
    prof = profile_from_activations(ta, ToyTokenizer(), n_zones=5)
    (neuron,) = prof["neurons"]
    top = neuron["zones"][-1]
    assert neuron["layer"] == 3 and neuron["neuron"] == 11
    assert [z["zone"] for z in neuron["zones"]] == ["q0-20", "q20-40", "q40-60", "q60-80", "q80-100"]
    assert top["top_category"] == "digit" and top["homogeneity"] == 1.0 and set(top["top_tokens"]) == {"7", "42"}
    assert top["excess_homogeneity"] == 1.0 and top["excess_category"] == "digit"
    assert prof["category_base_rates"]["digit"] == 0.2 and prof["top_zone_most_excess_homogeneous"] == 1.0
    assert top["range"][0] >= 10.0 and max(z["homogeneity"] for z in neuron["zones"][:-1]) < 1.0
    assert prof["top_zone_most_homogeneous"] == 1.0 and "100%" in prof["summary"] and "1.0]" in prof["summary"]
    json.dumps(prof)


def test_token_slices_sample_is_deterministic_and_bounded(tiny_host):
    corpus = Corpus(Doc(" ".join(TINY_TEXT) * 3, lab) for lab in ("a", "b", "c"))
    a = token_slices(corpus, tiny_host.tokenizer, max_tokens=100, max_len=32)
    assert a == token_slices(corpus, tiny_host.tokenizer, max_tokens=100, max_len=32)
    n = [len(tiny_host.tokenizer(d.text, add_special_tokens=False).input_ids) for d in a]
    assert sum(n[:-1]) < 100 <= sum(n) and max(n) <= 33


def test_zone_profile_of_a_brick_round_trips(tiny_host):
    brick = neuron_brick("b", tiny_host.ref, {1: [4, 9], 3: [0, 5, 6]}, gain=0.0)
    corpus = Corpus(Doc(t, lab) for t, lab in zip(TINY_TEXT, ["en", "fr", "code", "math", "de"], strict=True))
    prof = zone_profile(tiny_host, brick, corpus, n_zones=4, max_neurons=4)
    assert [(n["layer"], n["neuron"]) for n in prof["neurons"]] == [(1, 4), (1, 9), (3, 0), (3, 5)]
    assert all(len(n["zones"]) == 4 and n["zones"][-1]["zone"] == "q75-100" for n in prof["neurons"])
    assert all(z["top_tokens"] and 0 < z["homogeneity"] <= 1 for n in prof["neurons"] for z in n["zones"])
    out = attach_profile(brick, prof)
    assert brick.meta.profile is None and out.neurons is brick.neurons
    assert brick_from_bytes(out.to_bytes()).meta.profile == json.loads(json.dumps(prof))


def test_zone_profile_needs_a_neuron_brick_and_sane_zones(tiny_host):
    brick = neuron_brick("b", tiny_host.ref, {1: [4]})
    with pytest.raises(InvalidInputError):
        zone_profile(tiny_host, brick, Corpus([Doc("a", "x")]), n_zones=3)


def test_profile_from_collected_activations_equals_a_fresh_pass(tiny_host):
    """Extractors that already hold a layer's activations profile a brick without another forward."""
    brick = neuron_brick("b", tiny_host.ref, {1: [4, 9], 3: [5]}, gain=0.0)
    corpus = Corpus(Doc(t, lab) for t, lab in zip(TINY_TEXT, ["en", "fr", "code", "math", "de"], strict=True))
    ta = collect_activations(tiny_host, token_slices(corpus, tiny_host.tokenizer, max_tokens=8_000), {1: None, 3: None})
    got = brick_zone_profile(ta, brick, tiny_host.tokenizer, n_zones=4)
    assert got == zone_profile(tiny_host, brick, corpus, n_zones=4)
