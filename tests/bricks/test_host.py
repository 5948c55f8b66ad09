import json

import pytest

from bricks.errors import InvalidInputError
from bricks.host import host_fingerprint, host_ref, load_host


def test_tiny_host_shape_and_fingerprint(tiny_host, tiny_host_dir):
    r = tiny_host.ref
    assert (r.n_layers, r.d_model, r.d_ff, r.n_heads, r.n_kv_heads, r.head_dim) == (4, 64, 128, 4, 2, 16)
    assert r.fingerprint.startswith("sha256:") and len(r.fingerprint) == 71
    assert host_ref(str(tiny_host_dir)).fingerprint == r.fingerprint
    gate, up, down = tiny_host.adapter.ffn_weights(tiny_host.model, 0)
    assert gate.shape == (128, 64) and down.shape == (64, 128)


def test_fingerprint_changes_with_one_weight(tmp_path, tiny_host_dir, monkeypatch):
    from tests.conftest import build_tiny_host

    monkeypatch.setenv("BRICK_CACHE", str(tmp_path / "cache"))
    a = build_tiny_host(tmp_path / "a", seed=0)
    b = build_tiny_host(tmp_path / "b", seed=0)
    assert host_fingerprint(a) == host_fingerprint(b)  # same weights, other folder: same host
    from safetensors.torch import load_file, save_file

    w = load_file(b / "model.safetensors")
    w["model.layers.0.mlp.down_proj.weight"][0, 0] += 1e-3
    save_file(w, b / "model.safetensors", metadata={"format": "pt"})
    assert host_fingerprint(a) != host_fingerprint(b)


def test_unsupported_architectures_are_declared(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(InvalidInputError, match="c_fc"):
        host_ref(str(tmp_path))


def test_missing_host_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidInputError, match="neither a built-in host"):
        load_host(str(tmp_path / "nope"))


@pytest.mark.real
def test_real_smollm2_conversion_and_fingerprint(tmp_path, monkeypatch, real_host):
    """Convert the packaged GGUF into a fresh cache; the result is the same host, bit for bit."""
    monkeypatch.setenv("BRICK_CACHE", str(tmp_path))
    fresh = host_ref("smollm2-135m-instruct")
    assert fresh.fingerprint == real_host.ref.fingerprint
    assert (fresh.n_layers, fresh.d_model, fresh.d_ff, fresh.n_heads, fresh.n_kv_heads) == (30, 576, 1536, 9, 3)
    assert not list(tmp_path.glob("hosts/.smollm2*")), "the temp conversion folder was left behind"
    tok = real_host.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    out = real_host.model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])
