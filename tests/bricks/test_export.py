"""Exported folders load with plain transformers and compute what the reference hooks compute."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

import bricks.export as export_mod
from bricks.apply import assembly_applied
from bricks.compose import BrickUse, assemble
from bricks.errors import InvalidInputError
from bricks.export import EXPORT_FILE, export_model, merge_assembly
from bricks.format import Brick, BrickMeta
from bricks.kinds.growth import GrowthNeurons
from bricks.kinds.lora import LoraModule
from bricks.kinds.neurons import neuron_brick

PROMPT = "The quick brown fox jumps over the lazy dog."
# fp32 merge vs fp32 hooks: only the order of float operations differs (W diag(g) h vs W (g h), (W + BA) x vs
# W x + B A x); on the tiny host's logits (|x| < ~1) that is ~1e-6.
ATOL = 1e-5


def _rnd(gen, *shape, scale=0.3):
    return torch.randn(*shape, generator=gen) * scale


def gain_brick(ref):
    return neuron_brick("gains", ref, {0: [1, 5, 9, 77], 2: list(range(0, 128, 3))}, gain=1.8, method="emergent")


def offset_brick(ref):
    gen = torch.Generator().manual_seed(1)
    return neuron_brick("steer", ref, {1: [3, 4, 5, 60], 3: [10, 20]}, gain=0.5,
                        offset={1: _rnd(gen, 4, scale=1.0), 3: _rnd(gen, 2, scale=1.0)})


def lora_brick(ref):
    gen = torch.Generator().manual_seed(2)
    mods = {"model.layers.1.mlp.down_proj": LoraModule(_rnd(gen, 4, 128), _rnd(gen, 64, 4), alpha=8.0),
            "model.layers.0.self_attn.q_proj": LoraModule(_rnd(gen, 2, 64), _rnd(gen, 64, 2), alpha=4.0),
            "model.layers.2.self_attn.v_proj": LoraModule(_rnd(gen, 3, 64), _rnd(gen, 32, 3), alpha=3.0),
            "model.layers.3.mlp.gate_proj": LoraModule(_rnd(gen, 2, 64), _rnd(gen, 128, 2), alpha=2.0),
            "model.layers.3.mlp.down_proj": LoraModule(_rnd(gen, 2, 128), _rnd(gen, 64, 2), alpha=2.0)}
    b = Brick(BrickMeta(name="tuned", kind="lora", host=ref), mods)
    b.validate()
    return b


def growth_brick(ref, name="grown", layers=None, seed=3):
    gen = torch.Generator().manual_seed(seed)
    layers = layers or {1: 3, 2: 1}
    parts = {layer: GrowthNeurons(_rnd(gen, k, 64), _rnd(gen, k, 64), _rnd(gen, 64, k)) for layer, k in layers.items()}
    b = Brick(BrickMeta(name=name, kind="growth", host=ref), parts)
    b.validate()
    return b


def _cases(ref):
    mix = [BrickUse(gain_brick(ref), gain=0.0), BrickUse(offset_brick(ref), offset_scale=2.0),
           BrickUse(lora_brick(ref)), BrickUse(growth_brick(ref)),
           BrickUse(growth_brick(ref, "grown-more", {1: 2, 3: 1}, seed=4))]
    return {"gains": [BrickUse(gain_brick(ref))], "offsets": [BrickUse(offset_brick(ref))],
            "lora": [BrickUse(lora_brick(ref))], "growth": [BrickUse(growth_brick(ref))], "mix": mix}


def _ids(host):
    return host.tokenizer([PROMPT], return_tensors="pt").input_ids


def _reference(host, uses, ids):
    with torch.no_grad(), assembly_applied(host.model, host.adapter, assemble(host.ref, uses)):
        logits = host.model(ids).logits
        tokens = host.model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=host.tokenizer.pad_token_id)
    return logits, tokens


def _exported(folder, ids, new_tokens=16):
    """Logits and greedy tokens of the folder loaded by plain transformers (in fp32, whatever it stores)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(ids).logits
        tokens = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=model.config.eos_token_id)
    return logits, tokens


@pytest.mark.parametrize("case", ["gains", "offsets", "lora", "growth", "mix"])
def test_exported_model_equals_the_reference_assembly(case, tiny_host, tiny_host_dir, tmp_path):
    uses = _cases(tiny_host.ref)[case]
    ids = _ids(tiny_host)
    want_logits, want_tokens = _reference(tiny_host, uses, ids)
    with torch.no_grad():
        plain = tiny_host.model(ids).logits
    assert (want_logits - plain).abs().max() > 1e-2  # the bricks change the model: the check is not vacuous
    export_model(str(tiny_host_dir), uses, tmp_path / "out")
    got_logits, got_tokens = _exported(tmp_path / "out", ids)
    torch.testing.assert_close(got_logits, want_logits, atol=ATOL, rtol=0)
    assert torch.equal(got_tokens, want_tokens)


def test_config_and_weights_say_what_changed(tiny_host, tiny_host_dir, tmp_path):
    ref = tiny_host.ref
    export_model(str(tiny_host_dir), [BrickUse(gain_brick(ref)), BrickUse(lora_brick(ref))], tmp_path / "plain")
    cfg = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert cfg["intermediate_size"] == 128 and not cfg.get("mlp_bias") and cfg["dtype"] == "float32"
    with safe_open(tmp_path / "plain" / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if k.endswith(".bias")]  # no offsets: the host's exact layout

    report = export_model(str(tiny_host_dir), _cases(ref)["mix"], tmp_path / "mix")
    cfg = json.loads((tmp_path / "mix" / "config.json").read_text())
    assert cfg["intermediate_size"] == 128 + 5 and cfg["mlp_bias"] is True  # layer 1 grows 3 + 2
    assert report.record["growth_padding"] == {"0": 5, "1": 0, "2": 4, "3": 4}
    with safe_open(tmp_path / "mix" / "model.safetensors", "pt") as f:
        up0 = f.get_tensor("model.layers.0.mlp.up_proj.weight")
        down2 = f.get_tensor("model.layers.2.mlp.down_proj.weight")
        assert up0.shape == (133, 64) and (up0[128:] == 0).all()
        assert (down2[:, 129:] == 0).all() and (down2[:, 128] != 0).any()
        assert (f.get_tensor("model.layers.3.mlp.gate_proj.bias") == 0).all()


def test_down_proj_lora_reads_the_transformed_h(tiny_host):
    """(W + dW) diag(g) and bias (W + dW) v: the LoRA delta is merged before the neuron map is folded."""
    ref = tiny_host.ref
    g = torch.tensor([0.5, 2.0])
    v = torch.tensor([1.0, -3.0])
    nb = neuron_brick("n", ref, {1: [3, 7]}, gain=g, offset={1: v})
    lm = LoraModule(torch.randn(2, 128), torch.randn(64, 2), alpha=4.0)
    lb = Brick(BrickMeta(name="l", kind="lora", host=ref), {"model.layers.1.mlp.down_proj": lm})
    W = torch.randn(64, 128)
    merged = merge_assembly({**_other_ffn(ref), "model.layers.1.mlp.down_proj.weight": W},
                            assemble(ref, [BrickUse(nb), BrickUse(lb)]), {"model_type": "llama"})
    full = W + lm.scaling * lm.B @ lm.A
    scale = torch.ones(128)
    scale[[3, 7]] = g
    offset = torch.zeros(128)
    offset[[3, 7]] = v
    torch.testing.assert_close(merged.weights["model.layers.1.mlp.down_proj.weight"], full * scale)
    torch.testing.assert_close(merged.weights["model.layers.1.mlp.down_proj.bias"], full @ offset)


def _other_ffn(ref):
    out = {}
    for layer in range(ref.n_layers):
        out[f"model.layers.{layer}.mlp.gate_proj.weight"] = torch.zeros(128, 64)
        out[f"model.layers.{layer}.mlp.up_proj.weight"] = torch.zeros(128, 64)
        out[f"model.layers.{layer}.mlp.down_proj.weight"] = torch.zeros(64, 128)
    return out


def test_offsets_need_a_host_with_mlp_biases(tiny_host):
    asm = assemble(tiny_host.ref, [BrickUse(offset_brick(tiny_host.ref))])
    with pytest.raises(InvalidInputError, match="mlp_bias"):
        merge_assembly(_other_ffn(tiny_host.ref), asm, {"model_type": "qwen2"})


def test_folder_holds_tokenizer_generation_config_and_record(tiny_host, tiny_host_dir, tmp_path):
    uses = [BrickUse(gain_brick(tiny_host.ref), gain=0.25)]
    report = export_model(str(tiny_host_dir), uses, tmp_path / "out", about={"manifest": "m"})
    out = tmp_path / "out"
    host_files = {p.name for p in tiny_host_dir.iterdir()} - {"model.safetensors"}
    assert host_files <= {p.name for p in out.iterdir()}
    assert {"tokenizer.json", "generation_config.json"} <= host_files
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok(PROMPT).input_ids == tiny_host.tokenizer(PROMPT).input_ids
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    record = json.loads((out / EXPORT_FILE).read_text())
    assert record == {**report.record, "weights_sha256": record["weights_sha256"]}
    assert record["host"]["fingerprint"] == tiny_host.ref.fingerprint
    [b] = record["bricks"]
    assert b["ref"] == "gains@unpublished" and b["gain"] == 0.25 and b["digest"].startswith("sha256:")
    assert record["about"] == {"manifest": "m"} and record["weights_sha256"].startswith("sha256:")


def test_bfloat16_export_is_close(tiny_host, tiny_host_dir, tmp_path):
    uses = _cases(tiny_host.ref)["mix"]
    ids = _ids(tiny_host)
    want, _ = _reference(tiny_host, uses, ids)
    export_model(str(tiny_host_dir), uses, tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(tmp_path / "bf16" / "model.safetensors", "pt") as f:
        assert f.get_tensor("model.layers.1.mlp.down_proj.weight").dtype == torch.bfloat16
    got, _ = _exported(tmp_path / "bf16", ids)  # upcast to fp32 on load: only the stored rounding differs
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_refuses_a_non_empty_folder_unless_forced(tiny_host, tiny_host_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    export_model(str(tiny_host_dir), [], out)  # an empty folder is fine
    with pytest.raises(InvalidInputError, match="--force"):
        export_model(str(tiny_host_dir), [BrickUse(gain_brick(tiny_host.ref))], out)
    assert json.loads((out / EXPORT_FILE).read_text())["bricks"] == []
    export_model(str(tiny_host_dir), [BrickUse(gain_brick(tiny_host.ref))], out, force=True)
    assert json.loads((out / EXPORT_FILE).read_text())["bricks"][0]["name"] == "gains"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folders left
    with pytest.raises(InvalidInputError, match="host model itself"):
        export_model(str(tiny_host_dir), [], tiny_host_dir, force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="not a folder"):
        export_model(str(tiny_host_dir), [], tmp_path / "file")


def test_a_failed_export_leaves_no_folder(tiny_host, tiny_host_dir, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_mod, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        export_model(str(tiny_host_dir), [], tmp_path / "new")
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("previous export")
    with pytest.raises(OSError, match="disk full"):
        export_model(str(tiny_host_dir), [], old, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"] and (old / "keep.txt").read_text() == "previous export"


_PLAIN_LOAD = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ids = torch.tensor([[int(t) for t in sys.argv[2].split(",")]])
with torch.no_grad():
    torch.save(model(ids).logits, sys.argv[3])
assert not [m for m in sys.modules if m.split(".")[0] in ("bricks", "registry", "router", "serving", "cli")]
"""


def test_a_process_without_brickwork_loads_it(tiny_host, tiny_host_dir, tmp_path):
    uses = _cases(tiny_host.ref)["mix"]
    ids = _ids(tiny_host)
    want, _ = _reference(tiny_host, uses, ids)
    export_model(str(tiny_host_dir), uses, tmp_path / "out")
    token_list = ",".join(str(t) for t in ids[0].tolist())
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", _PLAIN_LOAD, str(tmp_path / "out"), token_list, str(tmp_path / "l.pt")],
                   check=True, cwd=tmp_path, env=env, timeout=300)
    torch.testing.assert_close(torch.load(tmp_path / "l.pt"), want, atol=ATOL, rtol=0)


# --- the real host ------------------------------------------------------------------------------------------
def _real_bricks(ref):
    gen = torch.Generator().manual_seed(0)
    layers = {layer: torch.randperm(ref.d_ff, generator=gen)[: ref.d_ff // 20] for layer in range(8, 20)}
    emergent = neuron_brick("lang-like", ref, layers, gain=0.0, method="emergent", labels=["en", "fr"])
    for s in emergent.neurons.values():  # the evidence an emergent extraction records
        s.label_means = torch.rand(2, s.indices.numel(), generator=gen)
    mods = {}
    for layer in (3, 12, 25):
        for proj, (d_in, d_out) in (("q_proj", (576, 576)), ("v_proj", (576, 192)), ("down_proj", (1536, 576))):
            part = "mlp" if proj == "down_proj" else "self_attn"
            mods[f"model.layers.{layer}.{part}.{proj}"] = LoraModule(
                torch.randn(8, d_in, generator=gen) / d_in**0.5, torch.randn(d_out, 8, generator=gen) * 0.05, 16.0)
    lora = Brick(BrickMeta(name="tuned", kind="lora", host=ref), mods)
    lora.validate()
    idx = torch.randperm(ref.d_ff, generator=gen)[:32]
    steer = neuron_brick("steer", ref, {20: idx}, gain=1.0, offset={20: torch.randn(32, generator=gen) * 0.5})
    return [BrickUse(emergent, gain=0.5), BrickUse(lora), BrickUse(steer)]


def _real_ids(host):
    messages = [{"role": "user", "content": "Write a short story about a cat who learns to swim."}]
    return host.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                              return_dict=True)["input_ids"]


def _real_reference(host, uses, ids, new_tokens=24):
    with torch.no_grad(), assembly_applied(host.model, host.adapter, assemble(host.ref, uses)):
        logits = host.model(ids).logits
        tokens = host.model.generate(ids, max_new_tokens=new_tokens, do_sample=False,
                                     pad_token_id=host.tokenizer.pad_token_id)
    return logits, tokens


@pytest.mark.real
def test_real_host_export_generates_what_the_reference_engine_does(real_host, tmp_path):
    from bricks.constants import DEFAULT_HOST

    uses = _real_bricks(real_host.ref)
    ids = _real_ids(real_host)
    want_logits, want = _real_reference(real_host, uses, ids)
    with torch.no_grad():
        plain = real_host.model.generate(ids, max_new_tokens=24, do_sample=False,
                                         pad_token_id=real_host.tokenizer.pad_token_id)
    assert not torch.equal(plain, want)  # the bricks change the text: equality below means something
    export_model(DEFAULT_HOST, uses, tmp_path / "out")
    got_logits, got = _exported(tmp_path / "out", ids, new_tokens=24)
    assert (got_logits - want_logits).abs().max() < 1e-3
    assert torch.equal(got, want), (real_host.tokenizer.decode(got[0]), real_host.tokenizer.decode(want[0]))


# --- vLLM (not in the default suite: an engine takes ~1-2 min to start on a 2-core CPU) ----------------------
_VLLM_GREEDY = """
import json, sys

if __name__ == "__main__":  # vLLM spawns processes
    from vllm import LLM, SamplingParams

    llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, gpu_memory_utilization=0.3,
              max_model_len=512, enable_prefix_caching=False, seed=0)
    params = SamplingParams(max_tokens=int(sys.argv[3]), temperature=0.0, logprobs=0)
    [out] = llm.generate([{"prompt_token_ids": json.loads(sys.argv[2])}], params)
    step = out.outputs[0]
    logprobs = [lp[t].logprob for t, lp in zip(step.token_ids, step.logprobs)]
    loaded = sorted({m.split(".")[0] for m in sys.modules} & {"bricks", "registry", "router", "serving", "cli"})
    json.dump({"tokens": list(step.token_ids), "logprobs": logprobs, "brickwork": loaded}, open(sys.argv[4], "w"))
"""


@pytest.mark.real
@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_serves_the_exported_folder(real_host, tmp_path):
    """vLLM alone (no brickwork plugin: VLLM_PLUGINS="") loads the export with mlp_bias and grown neurons and
    generates the reference engine's greedy tokens with its logprobs. Run: pytest -m "vllm and slow" this file."""
    import os

    from bricks.constants import DEFAULT_HOST

    ref = real_host.ref
    uses = [*_real_bricks(ref), BrickUse(growth_brick_for(ref))]
    ids = _real_ids(real_host)
    _, want = _real_reference(real_host, uses, ids)
    export_model(DEFAULT_HOST, uses, tmp_path / "out")
    script = tmp_path / "vllm_greedy.py"
    script.write_text(_VLLM_GREEDY)
    n_new = want.shape[1] - ids.shape[1]
    env = {**os.environ, "VLLM_PLUGINS": "", "VLLM_CPU_KVCACHE_SPACE": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "out"), json.dumps(ids[0].tolist()), str(n_new),
                    str(tmp_path / "out.json")], check=True, cwd=tmp_path, env=env, timeout=600)
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["brickwork"] == []
    assert got["tokens"] == want[0, ids.shape[1]:].tolist()
    with torch.no_grad(), assembly_applied(real_host.model, real_host.adapter, assemble(ref, uses)):
        logp = torch.log_softmax(real_host.model(want).logits[0, ids.shape[1] - 1:-1], -1)
    ref_logprobs = logp.gather(1, want[0, ids.shape[1]:, None])[:, 0]
    assert (torch.tensor(got["logprobs"]) - ref_logprobs).abs().max() < 1e-2


def growth_brick_for(ref, k=4):
    gen = torch.Generator().manual_seed(5)
    d = ref.d_model
    parts = {layer: GrowthNeurons(torch.randn(k, d, generator=gen) / d**0.5, torch.randn(k, d, generator=gen) / d**0.5,
                                  torch.randn(d, k, generator=gen) * 0.05) for layer in (5, 15)}
    return Brick(BrickMeta(name="grown", kind="growth", host=ref), parts)
