"""The stability metric on the tiny host: an identity map is exactly 0, assemblies are measured beside the host."""

import copy
import dataclasses

import pytest
import torch

from bricks.analysis.metrics import get_metric, run_metric
from bricks.analysis.stability import layer_lambdas
from bricks.compose import BrickUse
from bricks.errors import InvalidInputError
from tests.conftest import labelled_brick

TORCH_THREADS = 1
FAST = {"texts": 3, "max_tokens": 12, "progress": False}


@pytest.fixture(scope="module")
def identity_host(tiny_host):
    """The tiny host with every residual branch zeroed: each decoder layer is the identity on the stream."""
    model = copy.deepcopy(tiny_host.model)
    for layer in tiny_host.adapter.layers(model):
        layer.self_attn.o_proj.weight.data.zero_()
        layer.mlp.down_proj.weight.data.zero_()
    return dataclasses.replace(tiny_host, model=model)


def test_identity_layers_neither_contract_nor_expand(identity_host):
    ids = torch.tensor([[1, 5, 9, 40, 77, 3]])
    assert layer_lambdas(identity_host.model, identity_host.adapter, ids, 1e-3, 0).tolist() == [0.0] * 4
    report = run_metric("stability", identity_host, **FAST).report
    assert report["host"]["lambda"] == report["host"]["lambda_relative"] == [0.0] * 4 and report["host"]["sum"] == 0.0


def test_a_random_host_and_its_assembly_are_both_reported(tiny_host, tmp_path):
    plot = tmp_path / "st.png"
    amplified = [BrickUse(labelled_brick(tiny_host, gain=1.0), gain=4.0)]
    result = run_metric("stability", tiny_host, amplified, plot=plot, **FAST)
    host, assembly = result.report["host"], result.report["assembly"]
    assert len(host["lambda"]) == len(assembly["lambda"]) == tiny_host.n_layers
    assert host["lambda"][0] == assembly["lambda"][0]  # the brick acts from layer 1 (0-based) on
    assert host["lambda"] != assembly["lambda"] and assembly["bricks"] == [{"brick": "b", "gain": 4.0}]
    assert result.report["sum_change"] == pytest.approx(assembly["sum"] - host["sum"])
    assert result.figures["stability"] == plot and plot.stat().st_size > 1000
    unit = run_metric("stability", tiny_host, [BrickUse(labelled_brick(tiny_host, gain=1.0))], **FAST).report
    assert unit["assembly"]["lambda"] == unit["host"]["lambda"]  # gain 1: the identity assembly


def test_bad_options_are_one_error_naming_the_fix(tiny_host):
    with pytest.raises(InvalidInputError, match="did you mean 'eps'"):
        get_metric("stability").parse({"epss": 1})
    with pytest.raises(InvalidInputError, match="eps") as err:
        run_metric("stability", tiny_host, eps=-1, texts=0)
    assert "texts" in str(err.value)
    with pytest.raises(InvalidInputError, match="unknown metric 'stabilty'; did you mean 'stability'"):
        get_metric("stabilty")
