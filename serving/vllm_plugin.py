"""vLLM plugin entry point (`vllm.general_plugins`): registers brickwork's Llama under its own name.

vLLM loads general plugins in every process it starts; registering is lazy (a "module:Class"
string), so nothing heavy is imported until a model with architecture `BrickLlamaForCausalLM` is
built. brickwork selects it per engine with `hf_overrides={"architectures": [ARCH]}`; other models
served by the same vLLM install are untouched.
"""

from __future__ import annotations

ARCH = "BrickLlamaForCausalLM"


def register() -> None:
    from vllm import ModelRegistry

    if ARCH not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCH, "serving.vllm_model:BrickLlamaForCausalLM")
