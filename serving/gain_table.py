"""The gain table: per-assembly rows of (gain, offset) per layer x FFN neuron, and the per-token row index
that the FFN op reads. Pure torch + numpy (no vLLM): the vLLM plugin (serving/vllm_model.py), the GPU
check (bench/gpu_check.py) and the tests share it.

    h[t] <- h[t] * G[token_rows[t], layer] + O[token_rows[t], layer]      for t < h.shape[0]

- Rows: G, O are [max_rows, n_layers, width] on the model's device. Row 0 is the identity, except on the
  gated columns (the slots of resident growth bricks, engine.growth_path: gain_table), where every row's
  default gain is 0: a request whose assembly does not route a resident brick gets an exactly zero
  contribution from it. Rows are filled from assembly row files on first use and recycled LRU, never
  while a running request uses them (reference counts).
- Tensor parallelism: gate_up_proj is column-parallel and down_proj row-parallel, so tensor-parallel rank
  r of tp holds FFN neurons [r*d_ff/tp, (r+1)*d_ff/tp) and the op sees only those. Each rank's table is
  that slice of every row (`columns`), filled from the same full-width row files; every rank receives the
  same scheduler output, so row assignment (and every token's row) is the same on every rank.
- Phases: a staged assembly (another neuron map at generated tokens, bricks/kinds/neurons.py) holds two
  rows, and each token reads the row of its phase: position < prompt length -> the prompt row.
- Token rows: capture-safe the way vLLM's own LoRA is (read from vLLM 0.32: PunicaWrapperBase in
  lora/punica_wrapper/punica_base.py, LoRAKernelMeta in lora/ops/triton_ops/lora_kernel_metadata.py):
  ONE persistent device tensor sized for the largest batch (max_num_batched_tokens), filled in place
  before every forward, outside the model and outside any CUDA graph (`fill_token_rows`). The op body
  (`neuron_affine`) has no branches, no host reads and no data-dependent shapes, so a CUDA graph captured
  with it replays the affine with whatever the buffer and the table hold at replay time. Tokens past the
  batch (CUDA-graph padding) read row 0: after every fill, `token_rows[n:]` is all zeros.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

DEFAULT_MAX_TOKENS = 8192


class RowsExhausted(RuntimeError):
    pass


class GainTable:
    def __init__(self, max_rows: int, n_layers: int, width: int, device, dtype=torch.float32,
                 gated: tuple[int, int] | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
                 columns: tuple[int, int] | None = None):
        """`width` is the served FFN width (d_ff plus reserved slots); `columns` = [first, end) of it that
        this table holds (a tensor-parallel rank's shard, `shard_columns`); default: all of it. `gated` is
        in full-width coordinates."""
        self.columns = tuple(columns) if columns else (0, width)
        lo, hi = self.columns
        if not 0 <= lo < hi <= width:
            raise ValueError(f"columns {self.columns} are not a slice of the FFN width {width}")
        self.width = hi - lo
        self.gain = torch.ones(max_rows, n_layers, self.width, device=device, dtype=dtype)
        self.offset = torch.zeros(max_rows, n_layers, self.width, device=device, dtype=dtype)
        self.gated = None  # this shard's columns [first, end) whose default gain is 0 (local coordinates)
        if gated:
            first, end = max(gated[0], lo) - lo, min(gated[1], hi) - lo
            self.gated = (first, end) if first < end else None
        if self.gated:
            self.gain[:, :, slice(*self.gated)] = 0.0
        self._rows: OrderedDict[str, int] = OrderedDict()  # assembly id -> row, LRU order
        self._refs = [0] * max_rows
        self._free = list(range(max_rows - 1, 0, -1))
        self._lock = threading.Lock()
        self.loads = 0
        # The persistent per-token row index (what the op reads) and how much of it the last fill wrote:
        # token_rows[filled:] is always zero, so each fill only clears what the previous one left.
        self.token_rows = torch.zeros(max_tokens, dtype=torch.long, device=device)
        self._filled = 0
        self._pin = self.token_rows.device.type == "cuda"
        # V1 runner only: the row of each persistent-batch slot, kept by serving.vllm_model.BrickRowTracker.
        self.request_rows = np.zeros(0, dtype=np.int64)
        self.generated_rows = np.zeros(0, dtype=np.int64)  # ... and of its generated tokens (staged assemblies)

    # --- rows ----------------------------------------------------------------------------------------
    def acquire(self, aid: str | None, path: str | None) -> int:
        if not aid:
            return 0
        with self._lock:
            row = self._rows.get(aid)
            if row is None:
                row = self._take_row()
                self._fill(row, path)
                self._rows[aid] = row
            self._rows.move_to_end(aid)
            self._refs[row] += 1
            return row

    def release(self, row: int) -> None:
        if row:
            with self._lock:
                self._refs[row] = max(0, self._refs[row] - 1)

    def _take_row(self) -> int:
        if self._free:
            return self._free.pop()
        for aid, row in self._rows.items():  # least recently used first
            if self._refs[row] == 0:
                del self._rows[aid]
                return row
        raise RowsExhausted("every gain-table row is in use by a running request; raise engine.max_assemblies")

    def _fill(self, row: int, path: str | None) -> None:
        from safetensors.torch import load_file

        t = load_file(path)
        self.write_row(row, t["gain"], t["offset"])
        self.loads += 1

    def write_row(self, row: int, gain: torch.Tensor, offset: torch.Tensor) -> None:
        """Set one row in place from full-width [n_layers, w] gains and offsets (w <= full width: the rest
        is the default); this table takes its `columns` of them. In place, so a captured CUDA graph reads
        the new values; the caller guarantees no running request uses the row (acquire recycles only rows
        with no references)."""
        lo, hi = self.columns
        w = max(0, min(gain.shape[1], hi) - lo)
        self.gain[row].fill_(1.0)
        if self.gated:
            self.gain[row, :, slice(*self.gated)] = 0.0
        self.offset[row].zero_()
        self.gain[row, :, :w].copy_(gain[:, lo : lo + w])
        self.offset[row, :, :w].copy_(offset[:, lo : lo + w])

    def acquire_phases(self, aid: str | None, path: str | None, generated_path: str | None) -> tuple[int, int]:
        """The rows of a request: (prompt-token row, generated-token row); the same row unless the assembly
        is staged (then its generated map is a second row, `aid` + GENERATED_SUFFIX)."""
        row = self.acquire(aid, path)
        if not aid or not generated_path:
            return row, row
        return row, self.acquire(aid + GENERATED_SUFFIX, generated_path)

    def release_phases(self, rows: tuple[int, int]) -> None:
        self.release(rows[0])
        if rows[1] != rows[0]:
            self.release(rows[1])

    # --- per-token rows ------------------------------------------------------------------------------
    def fill_token_rows(self, request_rows: Sequence[int] | np.ndarray, query_start_loc: Sequence[int] | np.ndarray,
                        generated_rows: Sequence[int] | np.ndarray | None = None,
                        num_computed: Sequence[int] | np.ndarray | None = None,
                        prompt_lens: Sequence[int] | np.ndarray | None = None) -> None:
        """Write this step's per-token rows into the persistent buffer, before the forward and outside any
        graph. `request_rows[i]` is the row of the batch's i-th request, whose tokens are
        query_start_loc[i]:query_start_loc[i+1] (host arrays: the runners keep both on the host, so
        nothing here reads the device). Tokens past the batch read row 0.

        Staged requests (`generated_rows[i] != request_rows[i]`): a token at position >= the request's
        prompt length (a generated token fed back, also when a preempted request recomputes it) reads
        `generated_rows[i]`; its position is `num_computed[i]` (tokens already in the KV cache, prefix-cache
        hits included) plus its offset in this step's chunk, so chunked prefill splits where it should."""
        qsl = np.asarray(query_start_loc, dtype=np.int64)
        num_reqs = len(qsl) - 1
        rows = _per_request(request_rows, num_reqs)
        counts = np.diff(qsl)
        per_token = np.repeat(rows, counts)
        if generated_rows is not None:
            gen = _per_request(generated_rows, num_reqs)
            if (gen != rows).any():
                per_token = self._phase_rows(per_token, gen, qsl, counts, num_computed, prompt_lens)
        n = len(per_token)
        if n > self.token_rows.shape[0]:
            raise ValueError(f"{n} tokens in one step, but the gain table's token buffer holds "
                             f"{self.token_rows.shape[0]} (max_num_batched_tokens)")
        if n:
            host = torch.from_numpy(per_token)
            if self._pin:  # a fresh pinned block per step: the caching host allocator keeps it alive until
                host = host.pin_memory()  # the async copy has run, so the next fill cannot overwrite it
            self.token_rows[:n].copy_(host, non_blocking=self._pin)
        if self._filled > n:
            self.token_rows[n : self._filled].zero_()
        self._filled = n

    @staticmethod
    def _phase_rows(per_token: np.ndarray, gen: np.ndarray, qsl: np.ndarray, counts: np.ndarray,
                    num_computed, prompt_lens) -> np.ndarray:
        if num_computed is None or prompt_lens is None:
            raise ValueError("staged rows need each request's computed-token count and prompt length")
        num_reqs = len(counts)
        req = np.repeat(np.arange(num_reqs), counts)
        computed = np.asarray(num_computed, dtype=np.int64)[:num_reqs]
        plen = np.asarray(prompt_lens, dtype=np.int64)[:num_reqs]
        pos = computed[req] + np.arange(len(req)) - qsl[req]
        return np.where(pos >= plen[req], gen[req], per_token)


def shard_columns(width: int, rank: int, world_size: int) -> tuple[int, int]:
    """The FFN neurons [first, end) that tensor-parallel rank `rank` of `world_size` holds: vLLM's
    MergedColumnParallelLinear gives each rank an equal contiguous slice of gate_proj's and up_proj's
    outputs, so the activation the op sees on that rank is that slice of the neurons."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not a rank of a tensor-parallel group of {world_size}")
    if width % world_size:
        raise ValueError(f"the FFN width {width} does not split evenly over {world_size} tensor-parallel ranks")
    size = width // world_size
    return rank * size, (rank + 1) * size


GENERATED_SUFFIX = "@generated"  # the table id of a staged assembly's generated-token row


def _per_request(values, num_reqs: int) -> np.ndarray:
    out = np.zeros(num_reqs, dtype=np.int64)
    given = np.asarray(values, dtype=np.int64)[:num_reqs]
    out[: len(given)] = given
    return out


def neuron_affine(table: GainTable, h: torch.Tensor, layer: int) -> None:
    """The op body: h (tokens x width) <- h * G[row, layer] + O[row, layer], each token on its row.
    No branches, no host reads, no shapes that depend on values: safe inside a CUDA graph."""
    rows = table.token_rows[: h.shape[0]]
    h.mul_(torch.index_select(table.gain[:, layer], 0, rows))
    h.add_(torch.index_select(table.offset[:, layer], 0, rows))
