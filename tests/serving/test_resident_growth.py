"""Resident growth bricks (engine.growth_path: gain_table) without an engine: the slot layout, the served
weights, the gain-table gating (the plugin's op on a transformers forward of the served folder), and what
the service asks of vLLM."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file

from bricks.apply import assembly_applied
from bricks.errors import InvalidInputError
from bricks.format import Brick, BrickMeta
from bricks.host import served_host_path
from bricks.kinds.growth import GrowthNeurons, resident_growth
from bricks.kinds.neurons import neuron_brick
from registry import Registry
from router.assembly import AssemblyCache, BrickChoice

TORCH_THREADS = 1
PROMPT = "The quick brown fox jumps over"


def grown(ref, name: str, sizes: dict[int, int], seed: int) -> Brick:
    g = torch.Generator().manual_seed(seed)
    return Brick(BrickMeta(name=name, kind="growth", host=ref), {
        layer: GrowthNeurons(torch.randn(k, ref.d_model, generator=g), torch.randn(k, ref.d_model, generator=g),
                             torch.randn(ref.d_model, k, generator=g) * 0.5) for layer, k in sizes.items()})


def digest(b: Brick) -> str:
    return "sha256:" + hashlib.sha256(b.to_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pair(tiny_host):
    ref = tiny_host.ref
    return grown(ref, "ga", {1: 3, 2: 2}, 1), grown(ref, "gb", {1: 2, 3: 4}, 2)


def test_slots_are_consecutive_per_layer_in_manifest_order(tiny_host, pair):
    a, b = pair
    lay = resident_growth([(digest(a), a), (digest(b), b)], tiny_host.ref, reserved=8)
    d = tiny_host.d_ff
    assert lay.slots[digest(a)] == {1: d, 2: d} and lay.slots[digest(b)] == {1: d + 3, 3: d}
    assert lay.width == 5 and lay.gated == (d, d + 5)  # layer 1 holds 3 + 2
    gates = lay.gates([digest(b)])
    assert gates.shape == (4, 5) and gates[1].tolist() == [0, 0, 0, 1, 1] and gates[3].tolist() == [1, 1, 1, 1, 0]
    assert not gates[0].any() and not gates[2].any() and not lay.gates([]).any()
    swapped = resident_growth([(digest(b), b), (digest(a), a)], tiny_host.ref, reserved=8)
    assert swapped.digest() != lay.digest() != resident_growth([(digest(a), a), (digest(b), b)], tiny_host.ref,
                                                               reserved=9).digest()


def test_resident_bricks_that_do_not_fit_are_one_error(tiny_host, pair):
    a, b = pair
    with pytest.raises(InvalidInputError, match=r"\(ga, gb\) need 5 reserved neurons per layer side by side") as e:
        resident_growth([(digest(a), a), (digest(b), b)], tiny_host.ref, reserved=4)
    assert "growth_slots: 5" in e.value.fix and "growth_path: lora" in e.value.fix


def test_served_folder_holds_the_neurons_in_their_slots(tiny_host, pair, tmp_path, monkeypatch):
    monkeypatch.setenv("BRICK_CACHE", str(tmp_path / "cache"))
    a, b = pair
    lay = resident_growth([(digest(a), a), (digest(b), b)], tiny_host.ref, reserved=8)
    folder = served_host_path(tiny_host, 8, lay)
    assert folder != served_host_path(tiny_host, 8) and served_host_path(tiny_host, 8, lay) == folder
    w = load_file(folder / "model.safetensors")
    plain = load_file(tiny_host.path / "model.safetensors")
    d = tiny_host.d_ff
    gate, down = w["model.layers.1.mlp.gate_proj.weight"], w["model.layers.1.mlp.down_proj.weight"]
    assert gate.dtype == torch.float32 and gate.shape == (d + 8, 64)
    assert torch.equal(gate[:d], plain["model.layers.1.mlp.gate_proj.weight"].float())
    assert torch.equal(gate[d + 3 : d + 5], b.growth[1].gate) and torch.equal(down[:, d : d + 3], a.growth[1].down)
    assert not gate[d + 5 :].any() and not down[:, d + 5 :].any()  # free for growth bricks served through LoRA
    assert not w["model.layers.0.mlp.up_proj.weight"][d:].any()


# --- the gain table's gating on a transformers forward of the served folder ----------------------------
@pytest.fixture(scope="module")
def served_setup(tiny_host, pair, tmp_path_factory):
    """A registry with the pair (resident) and a late growth brick (not), the cache, and three models: the
    resident served folder, the zero-slot served folder and the plain host, in transformers."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("resident")
    mp = pytest.MonkeyPatch()
    mp.setenv("BRICK_CACHE", str(root / "cache"))
    reg = Registry(root / "reg")
    ref = tiny_host.ref
    late = grown(ref, "late", {1: 2}, 3)
    amp = neuron_brick("amp", ref, {1: [0, 5, 9], 2: [7]}, gain=2.0, offset={2: torch.tensor([0.3])})
    versions = {b.name: reg.publish(b) for b in (*pair, late, amp)}
    lay = resident_growth([(versions[b.name].digest, b) for b in pair], ref, reserved=8)
    cache = AssemblyCache(reg, ref, root / "assemblies", reserved=8, resident=lay, max_rank=16)
    models = {name: AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval() for name, folder in
              {"resident": served_host_path(tiny_host, 8, lay), "zero": served_host_path(tiny_host, 8)}.items()}
    yield {"reg": reg, "lay": lay, "cache": cache, "models": models, "late": late, "amp": amp}
    mp.undo()


def _gated_logits(model, lay, built, ids, monkeypatch):
    """Logits with the plugin's own op between act_fn and down_proj, the request on its assembly's row."""
    import serving.vllm_model as vm

    table = vm.GainTable(4, len(model.model.layers), lay.d_ff + lay.reserved, "cpu", gated=lay.gated)
    row = table.acquire(built.id, str(built.row_path)) if built.row_path else 0
    table.fill_token_rows([row], [0, ids.shape[1]])
    monkeypatch.setitem(vm._TABLE, "active", table)

    def hook(layer):
        def pre(module, args):
            h = args[0].reshape(-1, args[0].shape[-1]).clone()
            vm._neuron_affine(h, layer)
            return (h.view_as(args[0]),)

        return pre

    handles = [m.mlp.down_proj.register_forward_pre_hook(hook(i)) for i, m in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            return model(ids).logits
    finally:
        for h in handles:
            h.remove()


def _reference_logits(tiny_host, built, ids):
    with torch.no_grad(), assembly_applied(tiny_host.model, tiny_host.adapter, built.assembly):
        return tiny_host.model(ids).logits


def test_not_routed_is_bit_identical_to_zero_slots(served_setup, tiny_host, monkeypatch):
    """Row 0 on the resident folder: the gated slots are exactly zero, so down_proj adds exact zeros and the
    logits equal the zero-slot folder's bit for bit."""
    s = served_setup
    ids = torch.tensor([tiny_host.tokenizer(PROMPT).input_ids])
    none = s["cache"].get([])
    assert none.row_path is None and none.adapter_path is None
    got = _gated_logits(s["models"]["resident"], s["lay"], none, ids, monkeypatch)
    with torch.no_grad():
        zero = s["models"]["zero"](ids).logits
        plain = tiny_host.model(ids).logits
    assert torch.equal(got, zero)
    print(f"zero-slot folder vs plain host (transformers, CPU): max |diff| {float((zero - plain).abs().max()):.1e}")
    assert torch.allclose(zero, plain, atol=1e-5)


@pytest.mark.parametrize("names", [["ga"], ["gb", "amp"], ["ga", "gb", "amp"]])
def test_routed_resident_bricks_equal_the_reference(served_setup, tiny_host, monkeypatch, names):
    s = served_setup
    ids = torch.tensor([tiny_host.tokenizer(PROMPT).input_ids])
    built = s["cache"].get([BrickChoice(n) for n in names])
    assert built.adapter_path is None and sorted(r.split("@")[0] for r in built.resident) == sorted(
        n for n in names if n != "amp")
    got = _gated_logits(s["models"]["resident"], s["lay"], built, ids, monkeypatch)
    want = _reference_logits(tiny_host, built, ids)
    assert (want - _reference_logits(tiny_host, s["cache"].get([]), ids)).abs().max() > 1e-2  # bricks matter
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())


def test_a_growth_brick_that_is_not_resident_goes_through_lora_after_the_resident_slots(served_setup, tiny_host):
    s = served_setup
    built = s["cache"].get([BrickChoice("ga"), BrickChoice("late")])
    assert [r.split("@")[0] for r in built.resident] == ["ga"]
    d, width = tiny_host.d_ff, s["lay"].width
    down = built.adapter.modules["model.layers.1.mlp.down_proj"]
    assert set(built.adapter.modules) == {f"model.layers.1.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")}
    assert down.rank == 2 and torch.nonzero(down.A)[:, 1].tolist() == [d + width, d + width + 1]
    assert torch.equal(down.B, s["late"].growth[1].down)
    row = load_file(built.row_path)["gain"]
    assert row.shape == (4, d + width) and row[1, d : d + 3].eq(1).all() and not row[1, d + 3 :].any()


def test_assembly_ids_name_the_layout(served_setup, tiny_host, tmp_path):
    s = served_setup
    plain = AssemblyCache(s["reg"], tiny_host.ref, tmp_path / "c", reserved=8)
    with_ga = plain.get([BrickChoice("ga")])
    assert with_ga.id != s["cache"].get([BrickChoice("ga")]).id and with_ga.adapter_path is not None
    assert plain.get([]).id == AssemblyCache(s["reg"], tiny_host.ref, tmp_path / "d", reserved=8).get([]).id


# --- what the service asks of vLLM ---------------------------------------------------------------------
def _service(tmp_path, tiny_host, tiny_host_dir, growth_path: str, extra: str = ""):
    from serving.service import open_service

    reg = Registry(tmp_path / f"reg-{growth_path}")
    ref = tiny_host.ref
    for b in (grown(ref, "ga", {1: 3, 2: 2}, 1), neuron_brick("amp", ref, {1: [0, 5]}, gain=2.0)):
        reg.publish(b)
    path = tmp_path / f"{growth_path}.yaml"
    path.write_text(f"name: tiny\nhost:\n  spec: {tiny_host_dir}\n  growth_slots: 4\nbricks:\n  - ref: ga\n"
                    f"  - ref: amp\n{extra}routing:\n  policy: explicit\nengine:\n  growth_path: {growth_path}\n")
    svc = open_service(path, reg)
    svc.host = tiny_host
    svc.resident = svc._resident_growth()
    return svc


def test_resident_growth_needs_no_lora(tmp_path, tiny_host, tiny_host_dir):
    svc = _service(tmp_path, tiny_host, tiny_host_dir, "gain_table")
    s = svc._settings()
    assert not s.enable_lora and s.lora_targets == [] and s.resident is svc.resident and s.resident.width == 3
    lora = _service(tmp_path, tiny_host, tiny_host_dir, "lora")._settings()
    assert lora.enable_lora and lora.lora_targets == ["down_proj", "gate_proj", "up_proj"] and lora.resident is None
