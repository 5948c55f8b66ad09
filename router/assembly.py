"""Assemblies: which bricks a request runs with, their identity, and the built artefacts, cached.

An assembly's identity is a hash of (host fingerprint, brick digests, gains, offset scales). The
brick list is sorted first unless two bricks set offsets on the same neuron (then order matters:
composition is not commutative). So an id never means two different assemblies, and the same set
asked in any order is built once.

Built artefacts per assembly: a gain-table row (the composed neuron map, and gain 1 on the slots of the
resident growth bricks it routes; written to disk so the vLLM engine process can load it) and, when it
has LoRA bricks, non-resident growth bricks or runs neurons on the LoRA path, one PEFT adapter folder.
Both are cached in memory (LRU) and on disk (bounded, LRU by mtime).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bricks.compose import Assembly, BrickUse, assemble, order_matters
from bricks.errors import InvalidInputError
from bricks.format import HostRef
from bricks.kinds.growth import ResidentGrowth
from bricks.kinds.neurons import NeuronMap
from bricks.lora import Adapter, assembly_adapter, write_peft
from registry import Registry


@dataclass(frozen=True)
class BrickChoice:
    """A brick as a request or manifest asks for it."""

    ref: str
    gain: float | None = None
    offset_scale: float = 1.0
    phase: str = "all"  # all | prompt | generated (neuron bricks)
    generated_offset_scale: float | None = None  # the offset scale at generated tokens (default: offset_scale)

    def options(self) -> tuple:
        """How the brick is used, as the assembly identity records it (the digest is added by the caller)."""
        return (self.gain, self.offset_scale, self.phase, self.generated_offset_scale)


@dataclass
class BuiltAssembly:
    id: str
    refs: list[str]  # exact name@version, in composition order
    assembly: Assembly
    row_path: Path | None  # gain-table row on disk (None: identity); a staged assembly's prompt-token row
    adapter_path: Path | None  # PEFT folder (None: no LoRA part)
    adapter: Adapter | None
    build_ms: float
    lora_int_id: int = 0
    resident: list[str] = field(default_factory=list)  # refs served from the host's slots (gain table), not LoRA
    extra: dict = field(default_factory=dict)
    generated_row_path: Path | None = None  # a staged assembly's generated-token row (None: not staged)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    build_ms_total: float = 0.0
    last_build_ms: float = 0.0


class AssemblyCache:
    """Resolve choices -> identity -> built assembly, with memory and disk LRU bounds.

    `resident`: growth bricks written into the served host's slots (engine.growth_path: gain_table); an
    assembly routes them through its gain-table row. Any other growth brick goes into its adapter."""

    def __init__(self, registry: Registry, host: HostRef, cache_dir: Path, *, max_rank: int = 16,
                 max_error: float = 0.05, reserved: int = 0, neuron_path: str = "gain_table",
                 w_down: dict[int, torch.Tensor] | None = None, resident: ResidentGrowth | None = None,
                 max_memory: int = 256, max_disk: int = 1024):
        self.registry, self.host, self.dir = registry, host, Path(cache_dir)
        self.max_rank, self.max_error, self.reserved = max_rank, max_error, reserved
        self.neuron_path, self.w_down = neuron_path, w_down
        self.resident = resident if resident is not None and resident.width else None
        self.max_memory, self.max_disk = max_memory, max_disk
        self._mem: OrderedDict[str, BuiltAssembly] = OrderedDict()
        self._by_request: OrderedDict[tuple, str] = OrderedDict()
        self._lock = threading.Lock()
        self._disk_count: int | None = None  # assembly folders on disk, once counted (_evict_disk)
        self.stats = CacheStats()
        if neuron_path == "lora" and w_down is None:
            raise InvalidInputError("neuron_path 'lora' needs the host's down_proj weights", "pass w_down")

    def get(self, choices: list[BrickChoice]) -> BuiltAssembly:
        """The built assembly for these choices; refs are re-resolved every time, so a newly
        published version is used by the next request."""
        versions = [self.registry.resolve(c.ref) for c in choices]
        key = tuple((v.digest, *c.options()) for v, c in zip(versions, choices))
        with self._lock:
            aid = self._by_request.get(key)
            if aid is not None and aid in self._mem:
                self._mem.move_to_end(aid)
                self.stats.hits += 1
                return self._mem[aid]
        built = self._build(choices, versions)
        with self._lock:
            if built.id in self._mem:  # another order of the same set, or a concurrent build
                built = self._mem[built.id]
                self.stats.hits += 1
            else:
                self.stats.misses += 1
                self.stats.build_ms_total += built.build_ms
                self.stats.last_build_ms = built.build_ms
                self._mem[built.id] = built
                self._evict_memory()
            self._by_request[key] = built.id
            while len(self._by_request) > 4 * self.max_memory:
                self._by_request.popitem(last=False)
        return built

    def _build(self, choices: list[BrickChoice], versions) -> BuiltAssembly:
        uses = [BrickUse(self.registry.get(v.ref), *c.options()) for v, c in zip(versions, choices)]
        return self.build_uses(uses, [v.digest for v in versions], [v.ref for v in versions])

    def build_uses(self, uses: list[BrickUse], digests: list[str] | None = None,
                   refs: list[str] | None = None) -> BuiltAssembly:
        """Build from bricks in memory (probes, tests); not entered in the request cache."""
        t0 = time.perf_counter()
        if digests is None:
            digests = ["sha256:" + hashlib.sha256(u.brick.to_bytes()).hexdigest() for u in uses]
        refs = refs or [u.brick.name for u in uses]
        order = _canonical_order(uses, digests)
        uses = [uses[i] for i in order]
        refs = [refs[i] for i in order]
        digests = [digests[i] for i in order]
        items = [(d, *_use_options(u)) for d, u in zip(digests, uses)]
        aid = assembly_id(self.host, items, self.neuron_path, self.reserved, self.resident)
        asm = assemble(self.host, uses)
        resident = [i for i, d in enumerate(digests) if self.resident is not None and d in self.resident.slots]
        # The adapter holds everything but the resident growth bricks (the reference applies them all).
        lora_asm = assemble(self.host, [u for i, u in enumerate(uses) if i not in resident]) if resident else asm
        folder = self.dir / aid
        new_folder = not folder.is_dir()
        gates = [digests[i] for i in resident]
        row_path, generated_row = self._rows(folder, asm.neuron_map, gates)
        adapter, adapter_path = self._adapter(folder, lora_asm)
        _touch(folder)
        self._evict_disk(new_folder and folder.is_dir())
        # The LoRA id follows from the identity, so caches sharing an engine never give one id two adapters.
        lora_id = int(aid[:14], 16) + 1 if adapter_path is not None else 0
        return BuiltAssembly(aid, refs, asm, row_path, adapter_path, adapter, (time.perf_counter() - t0) * 1e3,
                             lora_int_id=lora_id, resident=[refs[i] for i in resident],
                             generated_row_path=generated_row)

    def _rows(self, folder: Path, nmap: NeuronMap, resident: list[str]) -> tuple[Path | None, Path | None]:
        """The gain-table rows: the neuron map (on the gain-table neuron path) and the resident growth gates;
        a staged map has a second row for generated tokens (both are written, identity or not)."""
        if self.neuron_path != "gain_table":
            nmap = NeuronMap.identity(*nmap.gain.shape)
        if nmap.is_identity() and not resident:
            return None, None
        prompt = self._row(folder, "row", nmap, resident)
        if nmap.generated is None:
            return prompt, None
        return prompt, self._row(folder, "row-generated", nmap.generated, resident)

    def _row(self, folder: Path, name: str, nmap: NeuronMap, resident: list[str]) -> Path:
        gain, offset = nmap.gain, nmap.offset
        if self.resident is not None:  # the row also sets the gated slot columns: 1 where routed, else 0
            gates = self.resident.gates(resident)
            gain, offset = torch.cat([gain, gates], 1), torch.cat([offset, torch.zeros_like(gates)], 1)
        path = folder / f"{name}.safetensors"
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{name}.tmp"
            save_file({"gain": gain.contiguous(), "offset": offset.contiguous()}, tmp)
            tmp.replace(path)
        return path

    def _adapter(self, folder: Path, asm: Assembly) -> tuple[Adapter | None, Path | None]:
        w_down = self.w_down if self.neuron_path == "lora" else None
        start = self.resident.width if self.resident is not None else 0
        adapter = assembly_adapter(asm, self.max_rank, self.reserved, w_down, growth_start=start)
        if not adapter.modules:
            return None, None
        if adapter.max_error() > self.max_error:
            raise InvalidInputError(
                f"assembly {'+'.join(asm.brick_names)} needs rank {adapter.needed_rank} > engine.max_lora_rank "
                f"{self.max_rank}; truncating it costs {adapter.max_error():.1%} relative error "
                f"(limit {self.max_error:.1%})", "raise engine.max_lora_rank or engine.max_lora_error, "
                "or use fewer trained bricks together")
        path = folder / "adapter"
        if not (path / "adapter_model.safetensors").is_file():
            tmp = folder / ".adapter.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            write_peft(adapter, tmp, pad_to=self.max_rank)
            shutil.rmtree(path, ignore_errors=True)
            tmp.replace(path)
        return adapter, path

    def _evict_memory(self) -> None:
        while len(self._mem) > self.max_memory:
            self._mem.popitem(last=False)

    def _evict_disk(self, added: bool) -> None:
        """At most max_disk assembly folders on disk, oldest removed first. The folder is scanned only when
        the count (kept as folders are added) goes over, and then trimmed to 7/8 of max_disk, so a stream of
        new assemblies costs one scan per max_disk/8 builds, not one per build (a stat of every folder)."""
        with self._lock:
            if self._disk_count is not None:
                self._disk_count += added
                if self._disk_count <= self.max_disk:
                    return
            if not self.dir.is_dir():
                return
            folders = sorted((p for p in self.dir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
            keep = len(folders) if len(folders) <= self.max_disk else max(1, self.max_disk * 7 // 8)
            live = set(self._mem)
            removed = 0
            for p in folders[: len(folders) - keep]:
                if p.name not in live:
                    shutil.rmtree(p, ignore_errors=True)
                    removed += 1
            self._disk_count = len(folders) - removed


def _canonical_order(uses: list[BrickUse], digests: list[str]) -> list[int]:
    """Sorted by digest unless the order changes the result (then the given order is the meaning)."""
    if order_matters(uses):
        return list(range(len(uses)))
    return sorted(range(len(uses)), key=lambda i: (digests[i], i))


def _use_options(u: BrickUse) -> tuple:
    """A use's options in the identity; a use with the defaults of phase and generated_offset_scale hashes as
    it did before they existed, so the ids of existing assemblies do not change."""
    if u.phase == "all" and u.generated_offset_scale is None:
        return (u.gain, u.offset_scale)
    return (u.gain, u.offset_scale, u.phase, u.generated_offset_scale)


def assembly_id(host: HostRef, items: list[tuple], neuron_path: str, reserved: int,
                resident: ResidentGrowth | None = None) -> str:
    fields = {"host": host.fingerprint, "bricks": items, "path": neuron_path, "reserved": reserved}
    if resident is not None:  # the same bricks build another row and adapter when some are resident
        fields["resident"] = resident.digest()
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:24]


def load_row(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    t = load_file(path)
    return t["gain"], t["offset"]


def _touch(folder: Path) -> None:
    if folder.is_dir():
        folder.touch()
