"""Brick merging on the tiny host: exact methods are exact, truncating ones report their error, random ones
are seeded, neuron merges serve as their parents did, and every bad input is one clear error up front."""

from __future__ import annotations

import pytest
import torch

from bricks.apply import assembly_applied
from bricks.compose import BrickUse, assemble
from bricks.errors import InvalidInputError
from bricks.format import Brick, BrickMeta, RoutingKeys, brick_from_bytes
from bricks.kinds.growth import GrowthNeurons
from bricks.kinds.lora import LoraModule
from bricks.kinds.neurons import compose_neurons, neuron_brick
from bricks.ops.merge import MERGE_METHODS, MergeParams, merge_bricks, methods_for_kind, parse_merge_params
from tests.conftest import labelled_brick

TORCH_THREADS = 1  # tiny matrices: OpenMP hand-offs cost more than they save

DOWN1 = "model.layers.1.mlp.down_proj"  # [64 x 128]: in both LoRA parents
Q2 = "model.layers.2.self_attn.q_proj"  # only in `a`
V3 = "model.layers.3.self_attn.v_proj"  # only in `b` ([32 x 64]: 2 kv heads of 16)
QUIET = {"progress": False}


def _rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def lora_pair(ref) -> tuple[Brick, Brick]:
    """Two LoRA bricks of different ranks and alphas, sharing one module and each with one of its own."""
    g = torch.Generator().manual_seed(0)
    a = Brick(BrickMeta(name="a", kind="lora", host=ref, labels=["fr"],
                        routing=RoutingKeys(texts=["bonjour", "salut"], label="fr")), {
        DOWN1: LoraModule(_rand(g, 4, 128), _rand(g, 64, 4), alpha=8.0),
        Q2: LoraModule(_rand(g, 3, 64), _rand(g, 64, 3), alpha=3.0)})
    b = Brick(BrickMeta(name="b", kind="lora", host=ref, labels=["code", "fr"],
                        routing=RoutingKeys(texts=["salut", "def f():"], label="code")), {
        DOWN1: LoraModule(_rand(g, 2, 128), _rand(g, 64, 2), alpha=1.0),
        V3: LoraModule(_rand(g, 2, 64), _rand(g, 32, 2), alpha=4.0)})
    return a, b


def delta(m: LoraModule | None) -> torch.Tensor:
    return (m.B.double() * m.scaling) @ m.A.double()


def weighted_sum(parents: list[Brick], weights: list[float], mod: str) -> torch.Tensor:
    return sum(w * delta(p.lora[mod]) for p, w in zip(parents, weights, strict=True) if mod in p.lora)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def _logits(host, uses: list[BrickUse]) -> torch.Tensor:
    ids = host.tokenizer(["The quick brown fox jumps over the lazy dog."], return_tensors="pt").input_ids
    with torch.no_grad(), assembly_applied(host.model, host.adapter, assemble(host.ref, uses)):
        return host.model(ids).logits


# --- LoRA: exact methods ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["cat", "linear"])
def test_cat_and_linear_store_the_weighted_sum_exactly(tiny_host, method):
    a, b = lora_pair(tiny_host.ref)
    weights = [0.5, -2.0]
    m = merge_bricks([a, b], method, {"weights": weights, **QUIET}, name="ab")
    assert set(m.lora) == {DOWN1, Q2, V3}  # a module one parent lacks is that parent's zero delta
    for mod, lm in m.lora.items():
        assert lm.alpha == lm.rank and lm.scaling == 1
        assert torch.allclose(delta(lm), weighted_sum([a, b], weights, mod), atol=1e-5)
    assert m.lora[DOWN1].rank == 6  # the ranks concatenate: 4 + 2
    assert m.meta.metrics["exact"] is True


@pytest.mark.parametrize("method", ["cat", "ties"])
def test_a_zero_weight_drops_that_parent(tiny_host, method):
    a, b = lora_pair(tiny_host.ref)
    m = merge_bricks([a, b], method, {"weights": [1, 0], "density": 1.0, "target_rank": 64, **QUIET}
                     if method == "ties" else {"weights": [1, 0], **QUIET}, name="ab")
    assert set(m.lora) == {DOWN1, Q2}  # V3 only in b: not stored as an empty delta
    assert torch.allclose(delta(m.lora[DOWN1]), delta(a.lora[DOWN1]), atol=1e-5)


def test_cat_serves_as_both_parents_together(tiny_host):
    a, b = lora_pair(tiny_host.ref)
    for br in (a, b):  # keep the deltas small so the logits stay in a range where 1e-5 means something
        for lm in br.lora.values():
            lm.B.mul_(0.05)
    m = merge_bricks([a, b], "cat", QUIET, name="ab")
    together = _logits(tiny_host, [BrickUse(a), BrickUse(b)])
    assert torch.allclose(_logits(tiny_host, [BrickUse(m)]), together, atol=1e-5)
    assert not torch.allclose(_logits(tiny_host, []), together, atol=1e-3)


def test_linear_with_a_target_rank_reports_the_svd_error(tiny_host):
    a, b = lora_pair(tiny_host.ref)
    m = merge_bricks([a, b], "linear", {"target_rank": 2, **QUIET}, name="ab")
    metrics = m.meta.metrics
    assert m.lora[DOWN1].rank == 2 and m.lora[DOWN1].alpha == 2
    want = weighted_sum([a, b], [1, 1], DOWN1)
    err = metrics["errors"][DOWN1]
    assert err == pytest.approx(rel_err(delta(m.lora[DOWN1]), want), abs=1e-5)
    s = torch.linalg.svdvals(want)
    assert err == pytest.approx(float(s[2:].norm() / s.norm()), abs=1e-6)  # Eckart-Young: the best rank 2
    assert metrics["max_error"] == max(metrics["errors"].values()) > 0
    assert metrics["mean_error"] == pytest.approx(sum(metrics["errors"].values()) / 3)


def test_linear_error_vanishes_when_the_target_rank_covers_the_summed_rank(tiny_host):
    a, b = lora_pair(tiny_host.ref)
    m = merge_bricks([a, b], "linear", {"target_rank": 64, **QUIET}, name="ab")
    assert m.meta.metrics["max_error"] < 1e-6
    assert m.meta.metrics["ranks"] == {DOWN1: 6, Q2: 3, V3: 2}  # capped at the summed rank
    for mod, lm in m.lora.items():
        assert torch.allclose(delta(lm), weighted_sum([a, b], [1, 1], mod), atol=1e-5)


def test_svd_defaults_to_the_largest_parent_rank_per_module(tiny_host):
    a, b = lora_pair(tiny_host.ref)
    m = merge_bricks([a, b], "svd", QUIET, name="ab")
    assert {mod: lm.rank for mod, lm in m.lora.items()} == {DOWN1: 4, Q2: 3, V3: 2}
    assert m.meta.metrics["errors"][DOWN1] > 0 and m.meta.metrics["errors"][Q2] < 1e-6


# --- LoRA: delta-space methods -------------------------------------------------------------------------------
def test_dare_with_density_one_is_linear(tiny_host):
    a, b = lora_pair(tiny_host.ref)
    opts = {"weights": [0.7, 1.3], "target_rank": 64, **QUIET}
    dare = merge_bricks([a, b], "dare_linear", {**opts, "density": 1.0}, name="ab")
    linear = merge_bricks([a, b], "linear", opts, name="ab")
    for mod in linear.lora:
        assert torch.allclose(delta(dare.lora[mod]), delta(linear.lora[mod]), atol=1e-5)
    assert dare.meta.metrics["max_error"] < 1e-6 and dare.meta.metrics["seed"] == 0


@pytest.mark.parametrize("method", ["ties", "dare_linear", "dare_ties", "magnitude_prune"])
def test_delta_space_methods_are_deterministic(tiny_host, method):
    a, b = lora_pair(tiny_host.ref)
    opts = {"density": 0.3, "seed": 7, **QUIET} if method.startswith("dare") else {"density": 0.3, **QUIET}
    one = merge_bricks([a, b], method, opts, name="ab")
    two = merge_bricks([a, b], method, opts, name="ab")
    assert one.tensors().keys() == two.tensors().keys()
    assert all(torch.equal(t, two.tensors()[k]) for k, t in one.tensors().items())
    assert {mod: lm.rank for mod, lm in one.lora.items()} == {DOWN1: 4, Q2: 3, V3: 2}  # default: max parent rank
    assert one.meta.metrics["max_error"] > 0  # a pruned delta is not rank 4: the error is reported
    if method.startswith("dare"):
        assert one.meta.metrics["seed"] == 7
        other = merge_bricks([a, b], method, {**opts, "seed": 8}, name="ab")
        assert not torch.equal(other.lora[DOWN1].B, one.lora[DOWN1].B)


def test_magnitude_prune_keeps_the_largest_entries(tiny_host):
    a, b = lora_pair(tiny_host.ref)
    m = merge_bricks([a, b], "magnitude_prune", {"density": 0.25, "target_rank": 64, **QUIET}, name="ab")
    got, full = delta(m.lora[Q2]), delta(a.lora[Q2])  # Q2: only `a` has it, so it is a's pruned delta
    kept = got.abs() > 1e-4
    assert int(kept.sum()) == full.numel() // 4
    assert float(full.abs()[kept].min()) >= float(full.abs()[~kept].max())
    assert torch.allclose(got[kept], full[kept], atol=1e-4)


@pytest.mark.parametrize("sign", ["total", "frequency"])
def test_ties_matches_peft_on_equal_weights(tiny_host, sign):
    from peft.utils.merge_utils import ties

    a, b = lora_pair(tiny_host.ref)
    opts = {"density": 0.25, "target_rank": 64, "majority_sign_method": sign, **QUIET}
    m = merge_bricks([a, b], "ties", opts, name="ab")
    want = ties([delta(a.lora[DOWN1]), delta(b.lora[DOWN1])], torch.ones(2, dtype=torch.float64), 0.25, sign)
    assert torch.allclose(delta(m.lora[DOWN1]), want, atol=1e-4)


# --- metadata -------------------------------------------------------------------------------------------------
def test_merged_metadata_records_method_parents_routing_and_round_trips(tiny_host):
    a, b = lora_pair(tiny_host.ref)
    a.meta.routing.texts = [f"text {i}" for i in range(40)]
    m = merge_bricks([a, b], "dare-ties", {"density": 0.5, **QUIET}, name="ab", description="fr and code")
    meta = m.meta
    assert meta.method == "merge-dare_ties" and meta.description == "fr and code"
    assert meta.params["parents"] == ["a", "b"] and meta.params["density"] == 0.5
    assert "progress" not in meta.params
    assert meta.host == a.meta.host and meta.labels == ["fr", "code"]
    assert len(meta.routing.texts) == 32 and meta.routing.label is None  # the parents' labels differ
    again = brick_from_bytes(m.to_bytes(), host=tiny_host.ref)
    assert again.meta.metrics == meta.metrics


def test_routing_texts_are_deduplicated(tiny_host):
    a, b = lora_pair(tiny_host.ref)
    m = merge_bricks([a, b], "cat", QUIET, name="ab")
    assert m.meta.routing.texts == ["bonjour", "salut", "def f():"]


def test_every_method_is_registered_with_its_paper_and_a_strict_model():
    assert methods_for_kind("lora") == ["cat", "linear", "svd", "magnitude_prune", "ties", "dare_linear",
                                        "dare_ties"]
    assert methods_for_kind("neurons") == ["union", "intersection", "weighted"]
    for spec in MERGE_METHODS.values():
        assert spec.reference_url.startswith("https://") and spec.summary
        assert issubclass(spec.options, MergeParams) and spec.options.model_config["extra"] == "forbid"


def test_params_read_command_line_text():
    p = parse_merge_params("svd", {"weights": "1,0.5", "target_rank": "none"})
    assert p.weights == [1.0, 0.5] and p.target_rank is None


# --- neuron bricks ----------------------------------------------------------------------------------------
def neuron_pair(ref) -> tuple[Brick, Brick]:
    a = neuron_brick("na", ref, {1: [1, 2, 3]}, gain=0.5, offset={1: torch.tensor([0.1, 0.2, 0.3])})
    b = neuron_brick("nb", ref, {1: [2, 3, 4], 2: [7]}, gain=torch.tensor([3.0, 2.0, 0.0]),
                     offset={1: torch.tensor([1.0, -1.0, 0.5])})
    return a, b


def _maps_equal(x, y) -> bool:
    return torch.allclose(x.gain, y.gain, atol=1e-6) and torch.allclose(x.offset, y.offset, atol=1e-6)


def test_union_serves_as_both_parents_in_order(tiny_host):
    ref = tiny_host.ref
    a, b = neuron_pair(ref)
    m = merge_bricks([a, b], "union", {}, name="nab")
    both = compose_neurons([BrickUse(a), BrickUse(b)], ref.n_layers, ref.d_ff)
    assert _maps_equal(compose_neurons([BrickUse(m)], ref.n_layers, ref.d_ff), both)
    assert m.neurons[1].indices.tolist() == [1, 2, 3, 4] and m.neurons[2].offset is None
    assert m.meta.params["has_offset"] is True
    reverse = merge_bricks([b, a], "union", {}, name="nba")  # offsets do not commute: order is the meaning
    assert not torch.allclose(reverse.neurons[1].offset, m.neurons[1].offset)


def test_union_drops_label_means_and_keeps_the_labels(tiny_host):
    a = labelled_brick(tiny_host, gain=0.0, name="x", label="fr")
    b = labelled_brick(tiny_host, gain=2.0, name="y", label="fr")
    m = merge_bricks([a, b], "union", {}, name="xy")
    assert all(s.label_means is None for s in m.neurons.values())
    assert m.meta.labels == ["en", "fr"] and m.meta.routing.label == "fr"
    assert m.meta.params["has_offset"] is False
    assert torch.equal(m.neurons[1].gain, torch.zeros(3))  # 0 then 2 composes to 0


def test_intersection_keeps_only_shared_neurons(tiny_host):
    ref = tiny_host.ref
    a, b = neuron_pair(ref)
    m = merge_bricks([a, b], "intersection", {}, name="nab")
    assert list(m.neurons) == [1] and m.neurons[1].indices.tolist() == [2, 3]
    both = compose_neurons([BrickUse(a), BrickUse(b)], ref.n_layers, ref.d_ff)
    assert torch.allclose(m.neurons[1].gain, both.gain[1, [2, 3]])
    assert torch.allclose(m.neurons[1].offset, both.offset[1, [2, 3]])
    apart = neuron_brick("nc", ref, {3: [5]}, gain=0.0)
    with pytest.raises(InvalidInputError, match="leaves nothing"):
        merge_bricks([a, apart], "intersection", {}, name="empty")


def test_weighted_is_the_weighted_mean_of_the_parents_maps(tiny_host):
    a, b = neuron_pair(tiny_host.ref)
    m = merge_bricks([a, b], "weighted", {"weights": [1, 3]}, name="nab")
    h = torch.randn(5, tiny_host.ref.d_ff)
    for layer, s in m.neurons.items():
        outs = []
        for parent in (a, b):
            one = compose_neurons([BrickUse(parent)], tiny_host.ref.n_layers, tiny_host.ref.d_ff)
            outs.append(h * one.gain[layer] + one.offset[layer])
        want = (outs[0] + 3 * outs[1]) / 4
        offset = s.offset if s.offset is not None else 0
        assert torch.allclose(h[:, s.indices] * s.gain + offset, want[:, s.indices], atol=1e-6)
    assert m.neurons[1].gain[0] == pytest.approx((0.5 + 3 * 1.0) / 4)  # neuron 1: b counts as identity


# --- bad input ----------------------------------------------------------------------------------------------
def test_kinds_and_hosts_do_not_mix(tiny_host):
    a, _ = lora_pair(tiny_host.ref)
    n, _ = neuron_pair(tiny_host.ref)
    with pytest.raises(InvalidInputError, match=r"'a' \(lora\) with brick 'na' \(neurons\)"):
        merge_bricks([a, n], "cat", {}, name="x")
    other_host = tiny_host.ref.model_copy(update={"fingerprint": "sha256:0123456789abcdef"})
    c = Brick(BrickMeta(name="c", kind="lora", host=other_host), dict(a.lora))
    with pytest.raises(InvalidInputError, match="'a'.*'c'.*different host"):
        merge_bricks([a, c], "linear", {}, name="x")


def test_a_method_for_another_kind_lists_the_right_ones(tiny_host):
    a, b = neuron_pair(tiny_host.ref)
    with pytest.raises(InvalidInputError, match="union, intersection, weighted"):
        merge_bricks([a, b], "ties", {}, name="x")
    g = torch.Generator().manual_seed(1)
    grow = [Brick(BrickMeta(name=f"g{i}", kind="growth", host=tiny_host.ref),
                  {0: GrowthNeurons(_rand(g, 2, 64), _rand(g, 2, 64), _rand(g, 64, 2))}) for i in range(2)]
    with pytest.raises(InvalidInputError, match="no merge method handles growth"):
        merge_bricks(grow, "cat", {}, name="x")


@pytest.mark.parametrize(("method", "params", "match"), [
    ("ties", {"density": 1.5}, "density.*at most 1"),
    ("dare_linear", {"density": 0}, "density.*greater than 0"),
    ("svd", {"target_rank": 0}, "target_rank.*at least 1"),
    ("linear", {"target_rank": 100_000}, "target_rank.*at most 512"),
    ("ties", {"densty": 0.2}, "no option 'densty'; did you mean 'density'"),
    ("ties", {"majority_sign_method": "mean"}, "use one of: total, frequency"),
    ("cat", {"weights": [1, 2, 3]}, "3 weights for 2 bricks"),
    ("cat", {"weights": [0, 0]}, "at least one weight must be non-zero"),
    ("tise", {}, "unknown merge method 'tise'; did you mean 'ties'"),
])
def test_bad_options_are_one_clear_error_before_any_work(tiny_host, method, params, match):
    a, b = lora_pair(tiny_host.ref)
    with pytest.raises(InvalidInputError, match=match):
        merge_bricks([a, b], method, params, name="x")


def test_bad_parents_and_names_are_refused(tiny_host):
    a, b = lora_pair(tiny_host.ref)
    with pytest.raises(InvalidInputError, match="at least 2 bricks"):
        merge_bricks([a], "cat", {}, name="x")
    with pytest.raises(InvalidInputError, match="'Bad Name' is not a valid brick name"):
        merge_bricks([a, b], "cat", {}, name="Bad Name")
    n, m = neuron_pair(tiny_host.ref)
    with pytest.raises(InvalidInputError, match="weighted option weights.*>= 0"):
        merge_bricks([n, m], "weighted", {"weights": [1, -1]}, name="x")
