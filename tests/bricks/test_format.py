import json

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save as st_save

from bricks.errors import HostMismatchError, InvalidInputError
from bricks.format import META_KEY, Brick, BrickMeta, HostRef, brick_from_bytes, load_brick, save_brick
from bricks.kinds.growth import GrowthNeurons
from bricks.kinds.lora import LoraModule
from bricks.kinds.neurons import neuron_brick
from bricks.refs import check_name

HOST = HostRef(fingerprint="sha256:" + "ab" * 32, arch="LlamaForCausalLM", n_layers=4, d_model=64, d_ff=128,
               n_heads=4, n_kv_heads=2, head_dim=16, name="tiny")
OTHER = HOST.model_copy(update={"fingerprint": "sha256:" + "cd" * 32, "name": "other"})


def lora_brick(name="adapter", r=4):
    mod = "model.layers.1.mlp.down_proj"
    return Brick(BrickMeta(name=name, kind="lora", host=HOST),
                 {mod: LoraModule(torch.randn(r, 128), torch.randn(64, r), alpha=8.0)})


def growth_brick(k=3):
    return Brick(BrickMeta(name="grown", kind="growth", host=HOST),
                 {2: GrowthNeurons(torch.randn(k, 64), torch.randn(k, 64), torch.randn(64, k))})


def test_neuron_roundtrip_keeps_everything(tmp_path):
    b = neuron_brick("lang-fr", HOST, {0: [5, 1, 3], 3: [7]}, gain=0.0,
                     offset={0: torch.tensor([0.1, 0.2, 0.3])}, method="emergent", params={"top": 0.01},
                     labels=["en", "fr"])
    b.neurons[0].label_means = torch.randn(2, 3)
    b.neurons[3].label_means = torch.randn(2, 1)
    got = load_brick(save_brick(b, tmp_path / "b.safetensors"), host=HOST)
    assert got.meta == b.meta
    assert torch.equal(got.neurons[0].indices, torch.tensor([1, 3, 5]))
    # the offset follows its neuron through sorting
    assert torch.equal(got.neurons[0].offset, torch.tensor([0.2, 0.3, 0.1]))
    assert torch.equal(got.neurons[3].label_means, b.neurons[3].label_means)
    assert got.size() == 4 and got.layers() == [0, 3]


def test_bytes_are_deterministic():
    b = neuron_brick("x", HOST, {1: [1, 2]})
    assert b.to_bytes() == b.to_bytes()


def test_lora_and_growth_roundtrip():
    for b in (lora_brick(), growth_brick()):
        got = brick_from_bytes(b.to_bytes(), host=HOST)
        assert got.kind == b.kind and got.layers() == b.layers()
    assert brick_from_bytes(lora_brick().to_bytes()).lora["model.layers.1.mlp.down_proj"].alpha == 8.0
    assert growth_brick(5).growth_slots() == 5


def test_wrong_host_is_refused():
    with pytest.raises(HostMismatchError, match="built for host tiny"):
        brick_from_bytes(neuron_brick("x", HOST, {1: [1]}).to_bytes(), host=OTHER)


@pytest.mark.parametrize("layers,msg", [({9: [1]}, "layer 9 does not exist"), ({1: [128]}, "out of range"),
                                         ({1: []}, "non-empty")])
def test_bad_neurons_are_refused(layers, msg):
    with pytest.raises(InvalidInputError, match=msg):
        neuron_brick("x", HOST, layers)


def test_repeated_indices_are_refused():
    b = neuron_brick("x", HOST, {1: [1, 2]})
    b.neurons[1].indices = torch.tensor([2, 2])
    with pytest.raises(InvalidInputError, match="repeat"):
        b.to_bytes()


def test_nan_gain_is_refused():
    with pytest.raises(InvalidInputError, match="NaN"):
        neuron_brick("x", HOST, {1: [1]}, gain=float("nan"))


def test_lora_shape_mismatch_is_refused():
    b = lora_brick()
    b.lora["model.layers.1.mlp.down_proj"].A = torch.randn(4, 64)  # down_proj reads d_ff=128
    with pytest.raises(InvalidInputError, match=r"A must be \[r, 128\]"):
        b.to_bytes()


def test_unknown_lora_target_is_refused():
    b = Brick(BrickMeta(name="a", kind="lora", host=HOST),
              {"model.layers.1.mlp.fc1": LoraModule(torch.randn(2, 64), torch.randn(64, 2), 2.0)})
    with pytest.raises(InvalidInputError, match="not a known target"):
        b.to_bytes()


@pytest.mark.parametrize("name", ["Bad Name", "../x", "a/b", "", "a" * 65])
def test_bad_name_is_refused_in_the_registrys_words(name):
    with pytest.raises(InvalidInputError) as registry_says:
        check_name(name)
    with pytest.raises(ValidationError) as meta_says:
        neuron_brick(name, HOST, {1: [1]})
    want = f"{registry_says.value.problem}: {registry_says.value.fix}"
    assert want in meta_says.value.errors()[0]["msg"]
    good = neuron_brick("ok", HOST, {1: [1]})
    meta = {**json.loads(good.meta.model_dump_json()), "name": name}
    stored = st_save(good.tensors(), metadata={META_KEY: json.dumps(meta)})  # a file whose metadata names it so
    with pytest.raises(InvalidInputError) as load_says:
        brick_from_bytes(stored)
    assert want in str(load_says.value)


def test_truncated_file_is_a_clear_error(tmp_path):
    data = neuron_brick("x", HOST, {1: [1, 2, 3]}).to_bytes()
    p = tmp_path / "t.safetensors"
    p.write_bytes(data[: len(data) - 7])
    with pytest.raises(InvalidInputError, match="truncated"):
        load_brick(p)


def test_foreign_safetensors_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, p)
    with pytest.raises(InvalidInputError, match="no brickwork metadata"):
        load_brick(p)


def test_kind_mismatch_is_refused():
    b = lora_brick()
    b.meta = b.meta.model_copy(update={"kind": "neurons"})
    with pytest.raises(InvalidInputError, match="kind is 'neurons'"):
        b.to_bytes()
