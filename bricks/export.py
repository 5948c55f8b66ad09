"""A fixed assembly exported as a plain Hugging Face model folder: its bricks merged into the host's weights.

The folder loads with transformers' `AutoModelForCausalLM.from_pretrained` or `vllm serve` alone, with no
brickwork installed. What the reference hooks (bricks/apply.py) do at run time becomes weights, per FFN
layer, with (g, v) the layer's composed neuron map and ΔW the LoRA deltas:

- every LoRA target module: W <- W + scaling * B A (each brick's delta; deltas add);
- down_proj reads h' = g * h + v, and so does its LoRA delta, hence
  W_down <- (W_down + ΔW_down) diag(g) and bias_down = (W_down + ΔW_down) v. Any offset turns on the
  config's `mlp_bias` (Llama only: it adds biases to gate, up and down; gate's and up's stay zero);
  without offsets mlp_bias stays off and the folder has the host's exact layout;
- growth neurons: their gate/up rows and down columns are appended to the layer, and every layer is
  padded with zero neurons (zero rows and columns: an exact zero contribution) up to the widest layer;
  `intermediate_size` grows by that width. The neuron map and down_proj's LoRA delta never touch grown
  neurons: the reference adds them beside down_proj, not through it.

The arithmetic runs in fp32. The weights are saved in fp32 by default (`dtype="float32"`): logits then equal
the reference engine's (the host loaded in fp32, hooks on) up to fp32 rounding. bfloat16/float16 halve the
folder at that dtype's rounding of the merged weights. Beside the weights lie the host's tokenizer files,
chat template and generation config, and `brickwork-export.json`: which brick versions (with digests) went
in, with what gains, on which host fingerprint. The folder is written whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bricks.compose import Assembly, BrickUse, assemble
from bricks.errors import InvalidInputError
from bricks.host import host_ref, resolve_host_path
from bricks.kinds.growth import GrowthNeurons
from bricks.kinds.lora import FFN_MODULES, module_name

EXPORT_FILE = "brickwork-export.json"
EXPORT_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
EXPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The host's weights are rewritten; everything else in its folder (tokenizer, chat template, generation
# config) is copied as is. An export's own record is written anew, so an exported folder can be a host too.
_NOT_COPIED = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.index.json", EXPORT_FILE)


@dataclass(frozen=True)
class ExportedBrick:
    """Where a brick of the export came from: its exact registry version and content digest."""

    name: str
    version: str
    kind: str
    digest: str
    gain: float | None = None
    offset_scale: float = 1.0

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass
class MergedWeights:
    """The host's state dict with an assembly merged in (fp32), and the config changes it needs."""

    weights: dict[str, torch.Tensor]
    intermediate_size: int
    mlp_bias: bool
    growth_padding: dict[int, int] = field(default_factory=dict)  # layer -> zero neurons added there


@dataclass
class ExportReport:
    path: Path
    host: str
    bricks: list[ExportedBrick]
    dtype: str
    intermediate_size: int
    host_intermediate_size: int
    mlp_bias: bool
    record: dict[str, Any]


def exported_brick(use: BrickUse, version: str = "unpublished", digest: str | None = None) -> ExportedBrick:
    """The provenance of a brick in memory; a registry version passes its own version and digest."""
    if digest is None:
        digest = "sha256:" + hashlib.sha256(use.brick.to_bytes()).hexdigest()
    return ExportedBrick(use.brick.name, version, use.brick.kind, digest, use.gain, use.offset_scale)


# --- the merge (pure: tensors in, tensors out) ------------------------------------------------------------
def merge_assembly(weights: dict[str, torch.Tensor], asm: Assembly, cfg: dict[str, Any]) -> MergedWeights:
    """Merge every brick of `asm` into the host state dict `weights` (stored names, any dtype), in fp32."""
    w = {name: t.float() for name, t in weights.items()}
    present = asm.present()
    for mod, mods in present.get("lora", {}).items():
        key = _key(w, f"{mod}.weight", mod)
        for m in mods:
            w[key] = w[key] + m.scaling * (m.B.float() @ m.A.float())
    nmap = asm.neuron_map
    mlp_bias = nmap.has_offset()
    if mlp_bias and cfg.get("model_type") != "llama":
        raise InvalidInputError(
            f"the assembly sets neuron offsets, which export as down_proj biases (LlamaConfig.mlp_bias); a "
            f"{cfg.get('model_type')!r} host has no MLP biases",
            "export without the offset bricks (or with offset_scale: 0), or use a Llama host")
    growth = present.get("growth", {})
    width = {layer: sum(g.gate.shape[0] for g in groups) for layer, groups in growth.items()}
    extra = max(width.values(), default=0)
    for layer in range(asm.host.n_layers):
        _fold_neuron_map(w, layer, nmap.gain[layer], nmap.offset[layer] if mlp_bias else None)
        if extra:
            _append_growth(w, layer, growth.get(layer, []), extra)
    padding = {layer: extra - width.get(layer, 0) for layer in range(asm.host.n_layers)} if extra else {}
    bad = [name for name, t in w.items() if not torch.isfinite(t).all()]
    if bad:
        raise InvalidInputError(f"merged weights hold NaN or inf ({', '.join(bad[:3])})",
                                "check the bricks' tensors and gains")
    return MergedWeights(w, asm.host.d_ff + extra, mlp_bias, padding)


def _key(w: dict[str, torch.Tensor], key: str, what: str) -> str:
    if key not in w:
        raise InvalidInputError(f"the host's weights have no {key} (for {what})", "export from a host saved by "
                                "transformers (weight names like model.layers.0.mlp.down_proj.weight)")
    return key


def _fold_neuron_map(w: dict[str, torch.Tensor], layer: int, gain: torch.Tensor, offset: torch.Tensor | None) -> None:
    """down(g*h + v) = (W diag(g)) h + W v, W already holding down_proj's LoRA delta (it reads g*h + v too)."""
    down = _key(w, f"{module_name(layer, 'down_proj')}.weight", f"layer {layer}")
    W = w[down]
    if offset is not None:
        w[f"{module_name(layer, 'down_proj')}.bias"] = W @ offset.float()
        for proj in ("gate_proj", "up_proj"):
            w[f"{module_name(layer, proj)}.bias"] = torch.zeros(W.shape[1])
    w[down] = W * gain.float()  # scales column j by g_j; a gain of 1 leaves it bit-identical


def _append_growth(w: dict[str, torch.Tensor], layer: int, groups: list[GrowthNeurons], extra: int) -> None:
    """Grown neurons after the host's, then zero neurons up to `extra` (gate/up rows, down columns)."""
    gate, up, down = (f"{module_name(layer, p)}" for p in FFN_MODULES)
    d_model = w[f"{down}.weight"].shape[0]
    pad = extra - sum(g.gate.shape[0] for g in groups)
    for mod, rows in ((gate, [g.gate for g in groups]), (up, [g.up for g in groups])):
        w[f"{mod}.weight"] = torch.cat([w[f"{mod}.weight"], *(r.float() for r in rows), torch.zeros(pad, d_model)])
        if f"{mod}.bias" in w:
            w[f"{mod}.bias"] = torch.cat([w[f"{mod}.bias"], torch.zeros(extra)])
    cols = [g.down.float() for g in groups]
    w[f"{down}.weight"] = torch.cat([w[f"{down}.weight"], *cols, torch.zeros(d_model, pad)], 1)


# --- the folder -------------------------------------------------------------------------------------------
def export_model(host_spec: str, uses: list[BrickUse], out: str | os.PathLike, *, dtype: str = "float32",
                 force: bool = False, sources: list[ExportedBrick] | None = None,
                 about: dict[str, Any] | None = None) -> ExportReport:
    """Write `uses` (in assembly order) merged into host `host_spec` as an HF model folder `out`.

    `sources` says where each brick came from (one per use; default: its in-memory digest, version
    "unpublished"); `about` is recorded as is in brickwork-export.json (e.g. the manifest it came from).
    `out` must be absent or empty unless `force`; it is written in a temporary folder beside it, then renamed.
    """
    if dtype not in EXPORT_DTYPES:
        raise InvalidInputError(f"dtype {dtype!r} is not an export dtype", f"use one of: {', '.join(EXPORT_DTYPES)}")
    out = Path(out)
    host_path = resolve_host_path(host_spec)
    _check_target(out, host_path, force)
    ref = host_ref(host_spec)
    asm = assemble(ref, uses)
    sources = sources if sources is not None else [exported_brick(u) for u in uses]
    if len(sources) != len(uses):
        raise ValueError("export_model needs one source per brick use")
    cfg = json.loads((host_path / "config.json").read_text())
    weights: dict[str, torch.Tensor] = {}
    for f in sorted(host_path.glob("*.safetensors")):
        weights.update(load_file(f))
    merged = merge_assembly(weights, asm, cfg)
    del weights
    record = {
        "format": EXPORT_FORMAT, "created": datetime.now(timezone.utc).isoformat(), "brickwork": _version(),
        "host": {"name": ref.name, "fingerprint": ref.fingerprint, "arch": ref.arch, "path": str(host_path)},
        "bricks": [{"ref": s.ref, "name": s.name, "version": s.version, "kind": s.kind, "digest": s.digest,
                    "gain": s.gain, "offset_scale": s.offset_scale} for s in sources],
        "dtype": dtype, "mlp_bias": merged.mlp_bias,
        "intermediate_size": {"host": ref.d_ff, "exported": merged.intermediate_size},
        "growth_padding": {str(k): v for k, v in merged.growth_padding.items()},
        **({"about": about} if about else {}),
    }
    _write_atomically(out, lambda tmp: _fill(tmp, host_path, cfg, merged, dtype, record))
    return ExportReport(out, ref.name or str(host_path), list(sources), dtype, merged.intermediate_size, ref.d_ff,
                        merged.mlp_bias, record)


def _fill(tmp: Path, host_path: Path, cfg: dict[str, Any], merged: MergedWeights, dtype: str,
          record: dict[str, Any]) -> None:
    shutil.copytree(host_path, tmp, ignore=shutil.ignore_patterns(*_NOT_COPIED), dirs_exist_ok=True)
    target = EXPORT_DTYPES[dtype]
    weights = {name: t.to(target).contiguous() for name, t in merged.weights.items()}
    save_file(weights, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
    _fsync(tmp / WEIGHTS_FILE)
    cfg = dict(cfg)
    cfg["intermediate_size"] = merged.intermediate_size
    if merged.mlp_bias or "mlp_bias" in cfg:
        cfg["mlp_bias"] = merged.mlp_bias
    cfg["dtype"] = dtype
    if "torch_dtype" in cfg:  # older transformers wrote this name
        cfg["torch_dtype"] = dtype
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    record = {**record, "weights_sha256": _sha256(tmp / WEIGHTS_FILE)}
    (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")


def _check_target(out: Path, host_path: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} exists and is not a folder", "choose another output folder")
    resolved, host = out.resolve(), host_path.resolve()
    if resolved == host or resolved in host.parents:
        raise InvalidInputError(f"{out} holds the host model itself ({host_path})", "export into another folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InvalidInputError(f"{out} exists and is not empty",
                                "choose an empty folder, or pass --force to replace it")


def _write_atomically(out: Path, fill: Callable[[Path], None]) -> None:
    """Fill a temporary folder beside `out`, then rename it into place: never a half-written `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    os.chmod(tmp, 0o755)
    try:
        fill(tmp)
        if not out.exists():
            os.rename(tmp, out)
            return
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.rename(out, old / "previous")  # out is gone for the instant between the two renames only
        try:
            os.rename(tmp, out)
        except OSError:
            os.rename(old / "previous", out)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("brickwork")
    except PackageNotFoundError:
        return "unknown"
