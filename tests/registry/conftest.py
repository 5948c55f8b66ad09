"""Tiny bricks and a fresh registry per test; nothing here loads a real model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bricks.format import Brick, BrickMeta, HostRef
from bricks.kinds.lora import LoraModule
from bricks.kinds.neurons import neuron_brick
from registry import Registry

HOST = HostRef(fingerprint="sha256:" + "ab" * 32, arch="llama", n_layers=4, d_model=64, d_ff=128, n_heads=4,
               n_kv_heads=2, head_dim=16, name="tiny")


def make_neurons(name: str, indices: list[int] | None = None, layer: int = 0, gain: float = 0.0) -> Brick:
    return neuron_brick(name, HOST, {layer: indices or [1, 2, 3]}, gain=gain)


def make_lora(name: str, rank: int = 2, seed: int = 0) -> Brick:
    g = torch.Generator().manual_seed(seed)
    module = LoraModule(torch.randn(rank, HOST.d_ff, generator=g), torch.randn(HOST.d_model, rank, generator=g), 8.0)
    meta = BrickMeta(name=name, kind="lora", host=HOST)
    return Brick(meta, {"model.layers.0.mlp.down_proj": module})


def blob_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "blobs" / "sha256").glob("*/*") if not p.name.startswith("."))


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "reg")
