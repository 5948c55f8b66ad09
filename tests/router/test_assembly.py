import pytest
import torch

from bricks.errors import InvalidInputError, NotFoundError
from bricks.format import Brick, BrickMeta
from bricks.kinds.lora import LoraModule
from bricks.kinds.neurons import neuron_brick
from registry import Registry
from router.assembly import AssemblyCache, BrickChoice, load_row


@pytest.fixture
def reg(tmp_path, tiny_host):
    r = Registry(tmp_path / "reg")
    ref = tiny_host.ref
    r.publish(neuron_brick("abl", ref, {0: [1, 2]}, gain=0.0))
    r.publish(neuron_brick("amp", ref, {0: [2, 3]}, gain=2.0))
    r.publish(neuron_brick("steer-a", ref, {1: [5]}, gain=1.0, offset={1: torch.tensor([0.5])}))
    r.publish(neuron_brick("steer-b", ref, {1: [5]}, gain=2.0, offset={1: torch.tensor([1.0])}))
    mod = "model.layers.1.mlp.down_proj"
    r.publish(Brick(BrickMeta(name="lora", kind="lora", host=ref),
                    {mod: LoraModule(torch.randn(12, 128), torch.randn(64, 12), 12.0)}))
    return r


def test_identity_ignores_order_without_offset_overlap(reg, tiny_host, tmp_path):
    c = AssemblyCache(reg, tiny_host.ref, tmp_path / "cache")
    a = c.get([BrickChoice("abl"), BrickChoice("amp")])
    b = c.get([BrickChoice("amp@1.0.0"), BrickChoice("abl@^1")])
    assert a.id == b.id and c.stats.misses == 1 and c.stats.hits == 1
    g, o = load_row(a.row_path)
    assert g[0, 1] == 0 and g[0, 2] == 0 and g[0, 3] == 2 and (o == 0).all()


def test_overlapping_offsets_keep_order(reg, tiny_host, tmp_path):
    c = AssemblyCache(reg, tiny_host.ref, tmp_path / "cache")
    ab = c.get([BrickChoice("steer-a"), BrickChoice("steer-b")])
    ba = c.get([BrickChoice("steer-b"), BrickChoice("steer-a")])
    assert ab.id != ba.id
    assert load_row(ab.row_path)[1][1, 5] == pytest.approx(2.0 * 0.5 + 1.0)
    assert load_row(ba.row_path)[1][1, 5] == pytest.approx(1.0 * 1.0 + 0.5)


def test_gain_changes_identity_and_empty_is_identity(reg, tiny_host, tmp_path):
    c = AssemblyCache(reg, tiny_host.ref, tmp_path / "cache")
    assert c.get([BrickChoice("amp")]).id != c.get([BrickChoice("amp", gain=3.0)]).id
    empty = c.get([])
    assert empty.row_path is None and empty.adapter_path is None


def test_new_version_is_used_without_restart(reg, tiny_host, tmp_path):
    c = AssemblyCache(reg, tiny_host.ref, tmp_path / "cache")
    first = c.get([BrickChoice("amp")])
    reg.publish(neuron_brick("amp", tiny_host.ref, {0: [7]}, gain=5.0))
    second = c.get([BrickChoice("amp")])
    assert second.id != first.id and second.refs == ["amp@1.1.0"]


def test_lora_truncation_bound(reg, tiny_host, tmp_path):
    ok = AssemblyCache(reg, tiny_host.ref, tmp_path / "c1", max_rank=16)
    built = ok.get([BrickChoice("lora")])
    assert (built.adapter_path / "adapter_config.json").is_file() and built.lora_int_id > 0
    tight = AssemblyCache(reg, tiny_host.ref, tmp_path / "c2", max_rank=8, max_error=0.01)
    with pytest.raises(InvalidInputError, match="max_lora_rank"):
        tight.get([BrickChoice("lora")])


def test_unknown_brick(reg, tiny_host, tmp_path):
    with pytest.raises(NotFoundError):
        AssemblyCache(reg, tiny_host.ref, tmp_path / "c").get([BrickChoice("nope")])


def test_disk_cache_is_bounded(reg, tiny_host, tmp_path):
    c = AssemblyCache(reg, tiny_host.ref, tmp_path / "c", max_memory=1, max_disk=2)
    for g in (2.0, 3.0, 4.0, 5.0):
        c.get([BrickChoice("amp", gain=g)])
    assert len([p for p in (tmp_path / "c").iterdir() if p.is_dir()]) <= 2
