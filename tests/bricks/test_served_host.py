"""Growth slots: the served copy of a host has zero FFN neurons appended, and nothing else changes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file

from bricks.host import served_host_path


def fake_host(tmp_path):
    folder = tmp_path / "host"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"intermediate_size": 4, "hidden_size": 3}))
    weights = {
        "model.layers.0.mlp.gate_proj.weight": torch.randn(4, 3),
        "model.layers.0.mlp.up_proj.weight": torch.randn(4, 3),
        "model.layers.0.mlp.down_proj.weight": torch.randn(3, 4),
        "model.embed_tokens.weight": torch.randn(5, 3),
    }
    save_file(weights, folder / "model.safetensors")
    return SimpleNamespace(path=folder, ref=SimpleNamespace(short=lambda: "abc123")), weights


def test_no_slots_serves_the_host_itself(tmp_path):
    host, _ = fake_host(tmp_path)
    assert served_host_path(host, 0) == host.path


def test_slots_widen_the_ffn_with_zeros(tmp_path, monkeypatch):
    monkeypatch.setenv("BRICK_CACHE", str(tmp_path / "cache"))
    host, before = fake_host(tmp_path)
    folder = served_host_path(host, 2)
    after = load_file(folder / "model.safetensors")
    gate, down = after["model.layers.0.mlp.gate_proj.weight"], after["model.layers.0.mlp.down_proj.weight"]
    assert gate.shape == (6, 3) and down.shape == (3, 6)
    assert torch.equal(gate[:4], before["model.layers.0.mlp.gate_proj.weight"]) and not gate[4:].any()
    assert torch.equal(down[:, :4], before["model.layers.0.mlp.down_proj.weight"]) and not down[:, 4:].any()
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    assert json.loads((folder / "config.json").read_text())["intermediate_size"] == 6
    assert served_host_path(host, 2) == folder  # built once, then reused
