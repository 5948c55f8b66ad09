"""Compression on the tiny host: full rank is exact, `keep` gives the stated parameter count, the derived
host loads as a plain Llama, a parent's neurons brick runs and compiles on it, other hosts' bricks do not."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from bricks.compose import BrickUse, assemble
from bricks.errors import HostMismatchError, InvalidInputError
from bricks.host import LINEAGE_FILE, load_host
from bricks.lora import assembly_adapter, down_proj_weights
from bricks.ops import compress as ops
from tests.conftest import build_tiny_host, labelled_brick, tiny_corpus

METHODS = ["ngc", "asvd", "svd"]


@pytest.fixture(scope="module")
def grams(tiny_host):
    ids = ops.calibration_ids(tiny_host.tokenizer, tiny_corpus(24), chunks=8, tokens=64)
    return ops.input_grams(tiny_host, ids, progress=False)


@pytest.fixture(scope="module")
def derived(tiny_host, grams, tmp_path_factory):
    out = tmp_path_factory.mktemp("derived") / "ngc80"
    ops.compress_host(tiny_host, grams, {"method": "ngc", "keep": 0.8, "max_error": None}, out,
                      calibration={"source": "tiny"}, progress=False)
    return load_host(str(out))


@pytest.mark.parametrize("method", METHODS)
def test_full_rank_reproduces_the_weights(tiny_host, grams, method):
    c = ops.compress_weights(tiny_host, grams, {"method": method, "rank": 10_000, "max_error": None}, progress=False)
    params = dict(tiny_host.model.named_parameters())
    assert len(c.weights()) == 4 * 5  # gate, up, q, k, v in each of 4 layers
    for name, w in c.weights().items():
        torch.testing.assert_close(w, params[name].detach(), atol=1e-5, rtol=1e-5)
    assert max(g.error for g in c.groups) < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_keep_gives_the_stated_parameter_count(tiny_host, grams, method):
    c = ops.compress_weights(tiny_host, grams, {"method": method, "keep": 0.8, "max_error": None}, progress=False)
    for g in c.groups:
        budget = 0.8 * g.dense_params
        n_fact = len(g.factorisations)
        widest = max(sum(f.rows) + f.q_in.shape[0] for f in g.factorisations)
        assert budget - n_fact * widest < g.params <= budget  # the largest rank within the budget
    if method == "ngc":  # one shared input state per group; ug on d_model 64, d_ff 128: r = 0.8*256*64/320
        ug = next(g for g in c.groups if g.group == "ug")
        assert [f.rank for f in ug.factorisations] == [40] and ug.params == 40 * (256 + 64)
    assert 0.75 < c.params()["kept_fraction"] <= 0.8


def test_ngc_beats_plain_svd_on_calibration_output_error(tiny_host, grams):
    errs = {m: ops.compress_weights(tiny_host, grams, {"method": m, "keep": 0.6, "max_error": None},
                                    progress=False).report()["calib_error_median"] for m in METHODS}
    assert errs["ngc"] < errs["svd"] and errs["asvd"] < errs["svd"]


def test_groups_over_max_error_stay_dense(tiny_host, grams):
    c = ops.compress_weights(tiny_host, grams, {"method": "svd", "keep": 0.3, "max_error": 1e-6}, progress=False)
    assert not any(g.swapped for g in c.groups) and c.weights() == {}


def test_derived_host_is_a_plain_llama_with_lineage_and_factors(tiny_host, derived):
    path = derived.path
    model = AutoModelForCausalLM.from_pretrained(path)  # transformers loads it as any Llama
    ids = torch.tensor([[1, 5, 9, 20]])
    assert torch.isfinite(model(ids).logits).all()
    lineage = json.loads((path / LINEAGE_FILE).read_text())
    assert lineage["parent"]["fingerprint"] == tiny_host.ref.fingerprint and lineage["method"] == "ngc"
    assert lineage["derived_from"][0]["keeps"] == ["neurons"] and lineage["calibration"] == {"source": "tiny"}
    assert derived.ref.fingerprint != tiny_host.ref.fingerprint
    assert derived.ref.derived_from[0].fingerprint == tiny_host.ref.fingerprint
    from safetensors.torch import load_file

    factors = load_file(path / ops.FACTORS_DIR / "factors.safetensors")
    stored = sum(t.numel() for t in factors.values())
    assert stored == lineage["params"]["compressed"] < lineage["params"]["dense"]
    gate = "model.layers.2.mlp.gate_proj.weight"
    dense = load_file(path / "model.safetensors")[gate]
    q_out, q_in = factors[f"{gate}+model.layers.2.mlp.up_proj.weight.q_out"], factors[
        f"{gate}+model.layers.2.mlp.up_proj.weight.q_in"]
    torch.testing.assert_close((q_out @ q_in.T)[:128], dense, atol=1e-5, rtol=1e-5)
    untouched = "model.layers.2.mlp.down_proj.weight"  # down_proj (the neurons' output) is never changed
    torch.testing.assert_close(dict(derived.model.named_parameters())[untouched],
                               dict(tiny_host.model.named_parameters())[untouched])


def test_parent_neurons_brick_runs_and_compiles_on_the_derived_host(tiny_host, derived):
    brick = labelled_brick(tiny_host, gain=0.0)
    asm = assemble(derived.ref, [BrickUse(brick)])  # accepted: the lineage keeps neuron identities
    adapter = assembly_adapter(asm, max_rank=64, w_down=down_proj_weights(derived))
    w_down = derived.adapter.down_proj(derived.model, 1).weight.detach()
    lr = adapter.modules["model.layers.1.mlp.down_proj"]
    torch.testing.assert_close(lr.B @ lr.A, -w_down[:, [3, 9, 40]] @ torch.eye(128)[[3, 9, 40]])


def test_unrelated_hosts_bricks_are_still_refused(tmp_path, derived, tiny_host):
    other = load_host(str(build_tiny_host(tmp_path / "other", seed=1)))
    with pytest.raises(HostMismatchError, match="built for host other"):
        assemble(derived.ref, [BrickUse(labelled_brick(other))])
    with pytest.raises(HostMismatchError):  # a derived host's brick does not run on the parent
        assemble(tiny_host.ref, [BrickUse(labelled_brick(derived))])


def test_other_kinds_of_parent_bricks_are_refused(tiny_host, derived):
    brick = labelled_brick(tiny_host)
    assert derived.ref.runs(brick.meta.host, "neurons") and not derived.ref.runs(brick.meta.host, "lora")


def test_bad_input_is_one_clear_error(tiny_host, grams, derived, tmp_path):
    with pytest.raises(InvalidInputError, match="unknown compression method 'tucker'"):
        ops.compress_options({"method": "tucker"})
    with pytest.raises(InvalidInputError, match="keep"):
        ops.compress_options({"keep": 1.5})
    with pytest.raises(InvalidInputError, match="already exists"):
        ops.compress_host(tiny_host, grams, {}, derived.path, calibration={}, progress=False)
    with pytest.raises(InvalidInputError, match="fewer than calib_chunks"):
        ops.calibration_ids(tiny_host.tokenizer, tiny_corpus(1), chunks=16, tokens=256)
    with pytest.raises(InvalidInputError, match="does not exist"):
        ops.calibration_corpus(str(tmp_path / "missing.jsonl"))
    with pytest.raises(InvalidInputError, match="layer 9 does not exist"):
        ops.compress_weights(tiny_host, grams, {"layers": [9]}, progress=False)
    assert not list(tmp_path.iterdir())
