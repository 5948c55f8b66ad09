"""The brick file: safetensors tensors plus one JSON metadata entry in the safetensors header.

A brick is its metadata plus the parts of its kind (bricks/kinds/: `neurons`, `lora`, `growth`), keyed by
owner (a layer or a LoRA target module); tensor keys are `KIND.OWNER.TENSOR`. A file holds exactly one
brick version; loading checks every tensor's shape against the host the brick was built for, so a
truncated or hand-edited file fails with a message, not later.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from bricks.errors import HostMismatchError, InvalidInputError
from bricks.kinds import KINDS, Kind, kind_of
from bricks.kinds.base import bad_brick
from bricks.refs import check_name

FORMAT_VERSION = 1
META_KEY = "brickwork"


class DerivedFrom(BaseModel):
    """An ancestor of a derived host (e.g. a compressed one): its fingerprint, the operation that made the
    derived host, and the brick kinds whose bricks built for the ancestor stay valid on it (`neurons` when
    FFN neuron identities were kept). Read from the host folder's lineage file (bricks.host)."""

    model_config = ConfigDict(extra="forbid")
    fingerprint: str
    name: str = ""
    operation: str
    keeps: list[str] = Field(default_factory=list)


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
    derived_from: list[DerivedFrom] = Field(default_factory=list)

    def short(self) -> str:
        return self.fingerprint.split(":")[-1][:12]

    def runs(self, built: HostRef, kind: str) -> bool:
        """Whether a `kind` brick built for host `built` runs on this host: the same host, or an ancestor
        this host was derived from keeping that kind valid."""
        if built.fingerprint == self.fingerprint:
            return True
        return any(a.fingerprint == built.fingerprint and kind in a.keeps for a in self.derived_from)


class RoutingKeys(BaseModel):
    """How the retrieval router finds a brick: example texts (embedded by the router)."""

    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(default_factory=list)
    label: str | None = None


class BrickMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: int = FORMAT_VERSION
    name: str
    kind: str
    host: HostRef
    method: str = "manual"
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list)
    routing: RoutingKeys = Field(default_factory=RoutingKeys)
    description: str = ""
    profile: dict[str, Any] | None = None
    created: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    @field_validator("kind")
    @classmethod
    def _kind_known(cls, v: str) -> str:
        if v not in KINDS:
            raise ValueError(f"brick kind {v!r} is unknown; use one of: {', '.join(KINDS)}")
        return v

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        try:
            return check_name(v)
        except InvalidInputError as e:  # the registry's and the ref grammar's words, as a ValueError for pydantic
            raise ValueError(f"{e.problem}: {e.fix}") from None


@dataclass
class Brick:
    """Metadata plus the parts of the brick's kind: {layer: NeuronSet}, {module: LoraModule}, {layer: GrowthNeurons}."""

    meta: BrickMeta
    parts: dict[Any, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def kind(self) -> str:
        return self.meta.kind

    @property
    def spec(self) -> Kind:
        """The brick's kind: what its parts are, how they validate, compose, apply and compile."""
        return kind_of(self.meta.kind)

    # Typed views for code that handles one kind (a brick of another kind has none of these parts).
    @property
    def neurons(self) -> dict:
        return self.parts if self.kind == "neurons" else {}

    @property
    def lora(self) -> dict:
        return self.parts if self.kind == "lora" else {}

    @property
    def growth(self) -> dict:
        return self.parts if self.kind == "growth" else {}

    def per_layer(self) -> dict[int, int]:
        """{layer: size there}, in the kind's unit, sorted by layer."""
        spec, out = self.spec, {}
        for owner, part in self.parts.items():
            layer = spec.layer_of(owner)
            out[layer] = out.get(layer, 0) + spec.part_size(part)
        return dict(sorted(out.items()))

    def layers(self) -> list[int]:
        return list(self.per_layer())

    def size(self) -> int:
        """Neurons touched (neurons), grown neurons (growth) or summed rank (lora): `spec.unit`."""
        return sum(self.spec.part_size(p) for p in self.parts.values())

    def growth_slots(self) -> int:
        return self.spec.growth_slots(self.parts)

    # --- serialisation -------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        spec, out = self.spec, {}
        for owner, part in self.parts.items():
            for tname, t in spec.part_tensors(part).items():
                out[f"{spec.name}.{spec.owner_key(owner)}.{tname}"] = t
        return {k: v.detach().contiguous().cpu() for k, v in out.items()}

    def to_bytes(self) -> bytes:
        self.validate()
        meta = {META_KEY: self.meta.model_dump_json()}
        return st_save(self.tensors(), metadata=meta)

    def validate(self, host: HostRef | None = None) -> None:
        """Check the tensors agree with the metadata and (if given) with the host's shapes."""
        validate_brick(self, host)


def validate_brick(brick: Brick, host: HostRef | None = None) -> None:
    src = f"brick {brick.meta.name!r}"
    h = brick.meta.host
    if host is not None and not host.runs(h, brick.kind):
        raise HostMismatchError(
            f"{src} was built for host {h.name or h.arch} ({h.short()}), "
            f"not for {host.name or host.arch} ({host.short()})",
            "use a brick extracted from this host model, or serve the host the brick was built for",
        )
    if not brick.parts:
        raise bad_brick(src, f"kind is {brick.kind!r} but it holds no tensors of that kind")
    spec = brick.spec
    strangers = sorted({type(p).__name__ for p in brick.parts.values() if not isinstance(p, spec.part_type)})
    if strangers:
        raise bad_brick(src, f"kind is {brick.kind!r} but it holds {', '.join(strangers)} parts, not "
                             f"{spec.part_type.__name__}")
    for owner, part in brick.parts.items():
        spec.check_part(src, owner, part, h, brick)


# --- reading -------------------------------------------------------------------------------------
def brick_from_bytes(data: bytes, source: str = "brick file", host: HostRef | None = None) -> Brick:
    """Parse and validate one brick; every failure is an InvalidInputError naming `source`."""
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        raw_meta = header.get("__metadata__", {}).get(META_KEY)
    except (SafetensorError, ValueError, UnicodeDecodeError, OSError) as e:
        raise bad_brick(source, f"not a readable safetensors file ({e}); it may be truncated",
                   "re-download or re-export the brick") from None
    if raw_meta is None:
        raise bad_brick(source, "has no brickwork metadata: it is a safetensors file but not a brick",
                   "create bricks with brickwork (or import PEFT adapters with the import command)")
    try:
        meta = BrickMeta.model_validate_json(raw_meta)
    except ValidationError as e:
        raise bad_brick(source, f"metadata is invalid: {e.errors()[0]['msg']} at {e.errors()[0]['loc']}") from None
    if meta.format > FORMAT_VERSION:
        raise bad_brick(source, f"was written by a newer brickwork (format {meta.format})", "upgrade brickwork")
    brick = _assemble(meta, tensors, source)
    validate_brick(brick, host)
    return brick


def _assemble(meta: BrickMeta, tensors: dict[str, torch.Tensor], source: str) -> Brick:
    groups: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        kind, _, rest = key.partition(".")
        owner, _, part = rest.rpartition(".")
        if kind not in KINDS or not owner:
            raise bad_brick(source, f"unexpected tensor {key!r}")
        groups.setdefault((kind, owner), {})[part] = t
    if any(kind != meta.kind for kind, _ in groups):
        raise bad_brick(source, f"kind is {meta.kind!r} but it holds tensors of kinds "
                                f"{sorted({kind for kind, _ in groups})}")
    spec = kind_of(meta.kind)
    try:
        parts = {spec.parse_owner(owner): spec.part_from_tensors(ts) for (_, owner), ts in groups.items()}
    except (KeyError, ValueError) as e:
        raise bad_brick(source, f"a tensor is missing or misnamed ({e})") from None
    return Brick(meta, parts)


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
