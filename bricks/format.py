"""The brick file: safetensors tensors plus one JSON metadata entry in the safetensors header.

Three kinds (DESIGN.md):
- ``neurons``: per layer, neuron indices S, a gain (scalar or per neuron) and an optional offset,
  plus the per-label mean activations of S as evidence. Applied as ``h[S] <- g * h[S] + v``.
- ``lora``: per target module (PEFT names), A ``[r, d_in]``, B ``[d_out, r]`` and alpha.
- ``growth``: per layer, k new FFN neurons (gate rows, up rows, down columns).

A file holds exactly one brick version; loading checks every tensor's shape against the host
the brick was built for, so a truncated or hand-edited file fails with a message, not later.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from bricks.errors import HostMismatchError, InvalidInputError

FORMAT_VERSION = 1
META_KEY = "brickwork"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
BrickKind = Literal["neurons", "lora", "growth"]
LORA_MODULES = ("gate_proj", "up_proj", "down_proj", "q_proj", "k_proj", "v_proj", "o_proj")
LORA_MODULE_RE = re.compile(r"^model\.layers\.(\d+)\.(mlp|self_attn)\.(\w+)$")


class HostRef(BaseModel):
    """What a brick knows of the host it was built for."""

    model_config = ConfigDict(extra="forbid")
    fingerprint: str
    arch: str
    n_layers: int
    d_model: int
    d_ff: int
    n_heads: int = 0
    n_kv_heads: int = 0
    head_dim: int = 0
    name: str = ""

    def short(self) -> str:
        return self.fingerprint.split(":")[-1][:12]


class RoutingKeys(BaseModel):
    """How the retrieval router finds a brick: example texts (embedded by the router)."""

    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(default_factory=list)
    label: str | None = None


class BrickMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: int = FORMAT_VERSION
    name: str
    kind: BrickKind
    host: HostRef
    method: str = "manual"
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list)
    routing: RoutingKeys = Field(default_factory=RoutingKeys)
    description: str = ""
    profile: dict[str, Any] | None = None
    created: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(
                f"brick name {v!r} is not allowed: use lowercase letters, digits, '.', '_' or '-' "
                "(1-64 characters, starting with a letter or digit)"
            )
        return v


@dataclass
class NeuronSet:
    """Neurons of one layer and the affine map applied to them."""

    indices: torch.Tensor  # int64 [r], sorted, unique
    gain: torch.Tensor  # float32 [r] (a scalar gain is stored expanded)
    offset: torch.Tensor | None = None  # float32 [r]
    label_means: torch.Tensor | None = None  # float32 [n_labels, r]


@dataclass
class LoraModule:
    A: torch.Tensor  # [r, d_in]
    B: torch.Tensor  # [d_out, r]
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


@dataclass
class GrowthNeurons:
    gate: torch.Tensor  # [k, d_model]
    up: torch.Tensor  # [k, d_model]
    down: torch.Tensor  # [d_model, k]


@dataclass
class Brick:
    meta: BrickMeta
    neurons: dict[int, NeuronSet] = field(default_factory=dict)
    lora: dict[str, LoraModule] = field(default_factory=dict)
    growth: dict[int, GrowthNeurons] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def kind(self) -> str:
        return self.meta.kind

    def layers(self) -> list[int]:
        if self.kind == "neurons":
            return sorted(self.neurons)
        if self.kind == "growth":
            return sorted(self.growth)
        return sorted({int(LORA_MODULE_RE.match(m).group(1)) for m in self.lora})

    def size(self) -> int:
        """Neurons touched (neurons), grown neurons (growth) or summed rank (lora)."""
        if self.kind == "neurons":
            return sum(int(s.indices.numel()) for s in self.neurons.values())
        if self.kind == "growth":
            return sum(int(g.gate.shape[0]) for g in self.growth.values())
        return sum(m.rank for m in self.lora.values())

    def growth_slots(self) -> int:
        return max((int(g.gate.shape[0]) for g in self.growth.values()), default=0)

    # --- serialisation -------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for layer, s in self.neurons.items():
            out[f"neurons.{layer}.indices"] = s.indices
            out[f"neurons.{layer}.gain"] = s.gain
            if s.offset is not None:
                out[f"neurons.{layer}.offset"] = s.offset
            if s.label_means is not None:
                out[f"neurons.{layer}.label_means"] = s.label_means
        for mod, m in self.lora.items():
            out[f"lora.{mod}.A"] = m.A
            out[f"lora.{mod}.B"] = m.B
            out[f"lora.{mod}.alpha"] = torch.tensor([m.alpha], dtype=torch.float32)
        for layer, g in self.growth.items():
            out[f"growth.{layer}.gate"] = g.gate
            out[f"growth.{layer}.up"] = g.up
            out[f"growth.{layer}.down"] = g.down
        return {k: v.detach().contiguous().cpu() for k, v in out.items()}

    def to_bytes(self) -> bytes:
        self.validate()
        meta = {META_KEY: self.meta.model_dump_json()}
        return st_save(self.tensors(), metadata=meta)

    def validate(self, host: HostRef | None = None) -> None:
        """Check the tensors agree with the metadata and (if given) with the host's shapes."""
        validate_brick(self, host)


def _bad(source: str, problem: str, fix: str = "re-create the brick or re-export it") -> InvalidInputError:
    return InvalidInputError(f"{source}: {problem}", fix)


def validate_brick(brick: Brick, host: HostRef | None = None) -> None:
    src = f"brick {brick.meta.name!r}"
    h = brick.meta.host
    if host is not None and host.fingerprint != h.fingerprint:
        raise HostMismatchError(
            f"{src} was built for host {h.name or h.arch} ({h.short()}), "
            f"not for {host.name or host.arch} ({host.short()})",
            "use a brick extracted from this host model, or serve the host the brick was built for",
        )
    present = {"neurons": bool(brick.neurons), "lora": bool(brick.lora), "growth": bool(brick.growth)}
    if not present[brick.kind] or any(v for k, v in present.items() if k != brick.kind):
        raise _bad(src, f"kind is {brick.kind!r} but it holds tensors of kinds "
                        f"{[k for k, v in present.items() if v]}")
    for layer, s in brick.neurons.items():
        _check_neurons(src, layer, s, h, len(brick.meta.labels))
    for mod, m in brick.lora.items():
        _check_lora(src, mod, m, h)
    for layer, g in brick.growth.items():
        _check_growth(src, layer, g, h)


def _check_layer(src: str, layer: int, h: HostRef) -> None:
    if not 0 <= layer < h.n_layers:
        raise _bad(src, f"layer {layer} does not exist (host has {h.n_layers} layers)")


def _check_neurons(src: str, layer: int, s: NeuronSet, h: HostRef, n_labels: int) -> None:
    _check_layer(src, layer, h)
    idx = s.indices
    if idx.dtype != torch.int64 or idx.dim() != 1 or idx.numel() == 0:
        raise _bad(src, f"layer {layer}: indices must be a non-empty 1-D int64 tensor")
    if int(idx.min()) < 0 or int(idx.max()) >= h.d_ff:
        raise _bad(src, f"layer {layer}: neuron index out of range [0, {h.d_ff})")
    if idx.unique().numel() != idx.numel():
        raise _bad(src, f"layer {layer}: neuron indices repeat")
    r = idx.numel()
    for name, t in (("gain", s.gain), ("offset", s.offset)):
        if t is not None and (t.shape != (r,) or not t.is_floating_point()):
            raise _bad(src, f"layer {layer}: {name} must be a float tensor of shape [{r}], got {tuple(t.shape)}")
        if t is not None and not torch.isfinite(t).all():
            raise _bad(src, f"layer {layer}: {name} holds NaN or inf")
    if s.label_means is not None and s.label_means.shape != (n_labels, r):
        raise _bad(src, f"layer {layer}: label_means must be [{n_labels} labels, {r}], "
                        f"got {tuple(s.label_means.shape)}")


def lora_module_shape(mod: str, h: HostRef) -> tuple[int, int]:
    """(d_in, d_out) of a LoRA target module on the host."""
    m = LORA_MODULE_RE.match(mod)
    if not m or m.group(3) not in LORA_MODULES:
        raise InvalidInputError(f"LoRA module {mod!r} is not a known target",
                                f"use names like model.layers.3.mlp.down_proj ({', '.join(LORA_MODULES)})")
    kv = h.n_kv_heads * h.head_dim
    shapes = {
        "gate_proj": (h.d_model, h.d_ff), "up_proj": (h.d_model, h.d_ff), "down_proj": (h.d_ff, h.d_model),
        "q_proj": (h.d_model, h.n_heads * h.head_dim), "k_proj": (h.d_model, kv),
        "v_proj": (h.d_model, kv), "o_proj": (h.n_heads * h.head_dim, h.d_model),
    }
    return shapes[m.group(3)]


def _check_lora(src: str, mod: str, m: LoraModule, h: HostRef) -> None:
    d_in, d_out = lora_module_shape(mod, h)
    _check_layer(src, int(LORA_MODULE_RE.match(mod).group(1)), h)
    r = m.A.shape[0] if m.A.dim() == 2 else -1
    if m.A.shape != (r, d_in) or m.B.shape != (d_out, r) or r < 1:
        raise _bad(src, f"{mod}: A must be [r, {d_in}] and B [{d_out}, r], got "
                        f"{tuple(m.A.shape)} and {tuple(m.B.shape)}")
    if not (torch.isfinite(m.A).all() and torch.isfinite(m.B).all()):
        raise _bad(src, f"{mod}: A or B holds NaN or inf")


def _check_growth(src: str, layer: int, g: GrowthNeurons, h: HostRef) -> None:
    _check_layer(src, layer, h)
    k = g.gate.shape[0]
    if g.gate.shape != (k, h.d_model) or g.up.shape != (k, h.d_model) or g.down.shape != (h.d_model, k):
        raise _bad(src, f"layer {layer}: growth needs gate/up [k, {h.d_model}] and down [{h.d_model}, k], got "
                        f"{tuple(g.gate.shape)}, {tuple(g.up.shape)}, {tuple(g.down.shape)}")


# --- reading -------------------------------------------------------------------------------------
def brick_from_bytes(data: bytes, source: str = "brick file", host: HostRef | None = None) -> Brick:
    """Parse and validate one brick; every failure is an InvalidInputError naming `source`."""
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        raw_meta = header.get("__metadata__", {}).get(META_KEY)
    except (SafetensorError, ValueError, UnicodeDecodeError, OSError) as e:
        raise _bad(source, f"not a readable safetensors file ({e}); it may be truncated",
                   "re-download or re-export the brick") from None
    if raw_meta is None:
        raise _bad(source, "has no brickwork metadata: it is a safetensors file but not a brick",
                   "create bricks with brickwork (or import PEFT adapters with the import command)")
    try:
        meta = BrickMeta.model_validate_json(raw_meta)
    except ValidationError as e:
        raise _bad(source, f"metadata is invalid: {e.errors()[0]['msg']} at {e.errors()[0]['loc']}") from None
    if meta.format > FORMAT_VERSION:
        raise _bad(source, f"was written by a newer brickwork (format {meta.format})", "upgrade brickwork")
    brick = _assemble(meta, tensors, source)
    validate_brick(brick, host)
    return brick


def _assemble(meta: BrickMeta, tensors: dict[str, torch.Tensor], source: str) -> Brick:
    brick = Brick(meta=meta)
    groups: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        kind, _, rest = key.partition(".")
        owner, _, part = rest.rpartition(".")
        if kind not in ("neurons", "lora", "growth") or not owner:
            raise _bad(source, f"unexpected tensor {key!r}")
        groups.setdefault((kind, owner), {})[part] = t
    try:
        for (kind, owner), parts in groups.items():
            if kind == "neurons":
                brick.neurons[int(owner)] = NeuronSet(parts["indices"], parts["gain"], parts.get("offset"),
                                                      parts.get("label_means"))
            elif kind == "lora":
                brick.lora[owner] = LoraModule(parts["A"], parts["B"], float(parts["alpha"].reshape(-1)[0]))
            else:
                brick.growth[int(owner)] = GrowthNeurons(parts["gate"], parts["up"], parts["down"])
    except (KeyError, ValueError) as e:
        raise _bad(source, f"a tensor is missing or misnamed ({e})") from None
    return brick


def save_brick(brick: Brick, path: str | os.PathLike) -> Path:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, brick.to_bytes())
    return path


def load_brick(path: str | os.PathLike, host: HostRef | None = None) -> Brick:
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"brick file {path} does not exist", "check the path")
    return brick_from_bytes(path.read_bytes(), source=str(path), host=host)


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- constructors ----------------------------------------------------------------------------------
def neuron_brick(name: str, host: HostRef, layers: dict[int, Any], gain: float | torch.Tensor = 0.0,
                 offset: dict[int, torch.Tensor] | None = None, **meta: Any) -> Brick:
    """Build a neurons brick from {layer: indices}; a scalar gain is expanded per neuron."""
    sets = {}
    for layer, idx in layers.items():
        idx, order = torch.sort(torch.as_tensor(idx, dtype=torch.int64).reshape(-1))
        g = torch.as_tensor(gain, dtype=torch.float32)
        g = g.expand(idx.numel()).clone() if g.dim() == 0 else g.float()[order]
        off = None if offset is None or layer not in offset else torch.as_tensor(offset[layer]).float()[order]
        sets[int(layer)] = NeuronSet(idx, g, off)
    brick = Brick(meta=BrickMeta(name=name, kind="neurons", host=host, **meta), neurons=sets)
    brick.validate()
    return brick
