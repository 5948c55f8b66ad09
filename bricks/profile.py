"""Activation profiles: per-neuron FFN statistics of a labelled corpus, streamed through the host.

h is the input of down_proj, h = act(gate x) * (up x); a neuron is *active* on a token when its gate
pre-activation (gate_proj's output) is > 0, as in LAPE. Padding never counts. Nothing per token is
kept: per label we keep sums, per document its mean |h| (what FuncScore ranks).

Stable API (extractors build on it)::

    prof = profile_corpus(host, corpus, batch_tokens=4096, max_len=256,
                          checkpoint=None, save_every=0, progress=True)
    prof.labels            list[str], sorted; label i is row i of every [n_labels, ...] tensor
    prof.tokens            int64   [n_labels]              tokens counted per label
    prof.active            float64 [n_labels, L, d_ff]     tokens with gate pre-activation > 0 (an exact 0.0 counts 1/2)
    prof.abs_sum           float64 [n_labels, L, d_ff]     sum of |h|
    prof.h_sum             float64 [n_labels, L, d_ff]     sum of h
    prof.sq_sum            float64 [n_labels, L, d_ff]     sum of h^2
    prof.doc_mean_abs      float16 [n_docs, L, d_ff]       per-document mean |h|
    prof.doc_label         int64   [n_docs]                label index of each document
    prof.doc_key           int64   [n_docs]                Doc.key() (as signed int64): what resume skips
    prof.doc_tokens        int64   [n_docs]
    prof.act_prob() / mean_abs() / mean() / mean_sq() / var()   -> float64 [n_labels, L, d_ff]
    prof.overall_mean()    float64 [L, d_ff]  token-weighted mean h over every label (mean-ablation)
    prof.label_index(label), prof.doc_is(label) -> bool [n_docs], prof.n_docs, prof.n_layers, prof.d_ff
    prof.save(path) / Profile.load(path)   safetensors + JSON metadata (never pickle)
    prof.merge(other) -> Profile           profiles of disjoint documents of the same host
    chunk_corpus(corpus, tokenizer, max_len) -> Corpus   long documents cut into <= max_len-token windows
    profile_corpus(..., checkpoint=path, save_every=N)  resumes from `path` when it exists (documents
        already counted are skipped by content hash) and saves there every N batches and at the end.

For statistics a profile does not hold (zones, co-activation), stream raw activations yourself:

    for batch, acts in iter_activations(host, corpus, layers=[29]):   # acts[layer]: h [B, T, d_ff]
        mask = batch.attention_mask.bool()                              # padding rows are garbage
    with ffn_capture(host, layers) as acts: host.model(...)             # acts filled per forward
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from tqdm.auto import tqdm

from bricks.corpus import Batch, Corpus, Doc, batches
from bricks.errors import HostMismatchError, InvalidInputError
from bricks.format import atomic_write

PROFILE_FORMAT = 1
_META_KEY = "brickwork_profile"
_LABEL_STATS = ("active", "abs_sum", "h_sum", "sq_sum")
_DOC_FIELDS = ("doc_mean_abs", "doc_label", "doc_key", "doc_tokens")


def signed_key(key: int) -> int:
    """Doc.key() is an unsigned 64-bit hash; tensors hold it as signed int64."""
    return key - (1 << 64) if key >= (1 << 63) else key


@dataclass
class Profile:
    host_fingerprint: str
    labels: list[str]
    n_layers: int
    d_ff: int
    max_len: int
    tokens: torch.Tensor
    active: torch.Tensor
    abs_sum: torch.Tensor
    h_sum: torch.Tensor
    sq_sum: torch.Tensor
    doc_mean_abs: torch.Tensor
    doc_label: torch.Tensor
    doc_key: torch.Tensor
    doc_tokens: torch.Tensor
    info: dict = field(default_factory=dict)  # free-form JSON (host name, corpus digests...)

    @classmethod
    def empty(cls, host_fingerprint: str, labels: list[str], n_layers: int, d_ff: int, max_len: int,
              doc_dtype: torch.dtype = torch.float16) -> Profile:
        z = torch.zeros(len(labels), n_layers, d_ff, dtype=torch.float64)
        return cls(host_fingerprint, list(labels), n_layers, d_ff, max_len,
                   tokens=torch.zeros(len(labels), dtype=torch.int64), active=z.clone(), abs_sum=z.clone(),
                   h_sum=z.clone(), sq_sum=z.clone(), doc_mean_abs=torch.zeros(0, n_layers, d_ff, dtype=doc_dtype),
                   doc_label=torch.zeros(0, dtype=torch.int64), doc_key=torch.zeros(0, dtype=torch.int64),
                   doc_tokens=torch.zeros(0, dtype=torch.int64))

    # --- derived statistics ------------------------------------------------------------------------
    @property
    def n_docs(self) -> int:
        return int(self.doc_key.numel())

    def label_index(self, label: str) -> int:
        if label not in self.labels:
            raise InvalidInputError(f"label {label!r} is not in the profile (labels: {', '.join(self.labels)})",
                                    "use one of the profiled labels or profile a corpus that has it")
        return self.labels.index(label)

    def doc_is(self, label: str) -> torch.Tensor:
        return self.doc_label == self.label_index(label)

    def _per_token(self, t: torch.Tensor) -> torch.Tensor:
        return t / self.tokens.clamp(min=1).to(torch.float64)[:, None, None]

    def act_prob(self) -> torch.Tensor:
        return self._per_token(self.active)

    def mean_abs(self) -> torch.Tensor:
        return self._per_token(self.abs_sum)

    def mean(self) -> torch.Tensor:
        return self._per_token(self.h_sum)

    def mean_sq(self) -> torch.Tensor:
        return self._per_token(self.sq_sum)

    def var(self) -> torch.Tensor:
        return (self.mean_sq() - self.mean() ** 2).clamp(min=0)

    def overall_mean(self) -> torch.Tensor:
        return self.h_sum.sum(0) / max(int(self.tokens.sum()), 1)

    # --- combining -------------------------------------------------------------------------------
    def with_labels(self, labels: list[str]) -> Profile:
        """The same statistics re-indexed to a superset of labels (new labels get zero counts)."""
        missing = set(self.labels) - set(labels)
        if missing:
            raise InvalidInputError(f"cannot drop labels {sorted(missing)} from a profile", "pass a superset")
        pos = torch.tensor([labels.index(lab) for lab in self.labels], dtype=torch.int64)
        out = Profile.empty(self.host_fingerprint, labels, self.n_layers, self.d_ff, self.max_len,
                            self.doc_mean_abs.dtype)
        out.tokens.index_add_(0, pos, self.tokens)
        for name in _LABEL_STATS:
            getattr(out, name).index_add_(0, pos, getattr(self, name))
        out.doc_mean_abs, out.doc_key, out.doc_tokens = self.doc_mean_abs, self.doc_key, self.doc_tokens
        out.doc_label = pos[self.doc_label] if self.n_docs else self.doc_label
        out.info = dict(self.info)
        return out

    def merge(self, other: Profile) -> Profile:
        """Statistics of both profiles' documents; they must be disjoint and of the same host."""
        self._check_compatible(other)
        overlap = set(self.doc_key.tolist()) & set(other.doc_key.tolist())
        if overlap:
            raise InvalidInputError(f"the profiles share {len(overlap)} documents, which would count twice",
                                    "merge profiles of disjoint corpora (resume skips counted documents)")
        labels = sorted(set(self.labels) | set(other.labels))
        a, b = self.with_labels(labels), other.with_labels(labels)
        a.tokens = a.tokens + b.tokens
        for name in _LABEL_STATS:
            setattr(a, name, getattr(a, name) + getattr(b, name))
        a.doc_mean_abs = torch.cat([a.doc_mean_abs, b.doc_mean_abs.to(a.doc_mean_abs.dtype)])
        for name in ("doc_label", "doc_key", "doc_tokens"):
            setattr(a, name, torch.cat([getattr(a, name), getattr(b, name)]))
        a.info = {**other.info, **self.info}
        return a

    def _check_compatible(self, other: Profile) -> None:
        if other.host_fingerprint != self.host_fingerprint:
            raise HostMismatchError("the profiles come from different host models",
                                    "merge only profiles of the same host")
        if (other.n_layers, other.d_ff, other.max_len) != (self.n_layers, self.d_ff, self.max_len):
            raise InvalidInputError(
                f"profiles differ in shape or max_len ({other.n_layers}x{other.d_ff}, max_len {other.max_len} vs "
                f"{self.n_layers}x{self.d_ff}, max_len {self.max_len})", "profile both with the same settings")

    # --- files -----------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        names = ("tokens", *_LABEL_STATS, *_DOC_FIELDS)
        return {n: getattr(self, n).contiguous() for n in names}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": PROFILE_FORMAT, "host_fingerprint": self.host_fingerprint, "labels": self.labels,
                "n_layers": self.n_layers, "d_ff": self.d_ff, "max_len": self.max_len, "info": self.info}
        atomic_write(path, st_save(self.tensors(), metadata={_META_KEY: json.dumps(meta)}))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Profile:
        path = Path(path)
        if not path.is_file():
            raise InvalidInputError(f"profile {path} does not exist", "check the path or profile the corpus first")
        data = path.read_bytes()
        try:
            tensors = st_load(data)
            header = json.loads(data[8: 8 + int.from_bytes(data[:8], "little")])
            meta = json.loads(header["__metadata__"][_META_KEY])
        except (SafetensorError, ValueError, KeyError, TypeError) as e:
            raise InvalidInputError(f"{path} is not a brickwork profile ({e})", "re-run the profiling") from None
        prof = cls(meta["host_fingerprint"], meta["labels"], meta["n_layers"], meta["d_ff"], meta["max_len"],
                   info=meta.get("info", {}), **{k: tensors[k] for k in ("tokens", *_LABEL_STATS, *_DOC_FIELDS)})
        prof._check_shapes(str(path))
        return prof

    def _check_shapes(self, source: str) -> None:
        nl, shape = len(self.labels), (len(self.labels), self.n_layers, self.d_ff)
        ok = self.tokens.shape == (nl,) and all(getattr(self, n).shape == shape for n in _LABEL_STATS)
        ok = ok and self.doc_mean_abs.shape == (self.n_docs, self.n_layers, self.d_ff)
        ok = ok and all(getattr(self, n).shape == (self.n_docs,) for n in ("doc_label", "doc_tokens"))
        if not ok:
            raise InvalidInputError(f"{source}: profile tensors do not match its metadata", "re-run the profiling")


# --- capturing activations ---------------------------------------------------------------------------
@contextmanager
def ffn_capture(host, layers: list[int] | None = None, gate: bool = False) -> Iterator[dict]:
    """Hooks that store each forward's h (and, with gate=True, the gate pre-activation) per layer.

    Yields a dict filled on every forward: {layer: h} and, with gate, {("gate", layer): g}.
    """
    layers = list(range(host.n_layers)) if layers is None else list(layers)
    acts: dict = {}
    handles = []

    def keep_h(layer):
        return lambda module, args: acts.__setitem__(layer, args[0])

    def keep_gate(layer):
        return lambda module, args, out: acts.__setitem__(("gate", layer), out)

    try:
        for layer in layers:
            handles.append(host.adapter.down_proj(host.model, layer).register_forward_pre_hook(keep_h(layer)))
            if gate:
                mlp = host.adapter.mlp(host.model, layer)
                handles.append(mlp.gate_proj.register_forward_hook(keep_gate(layer)))
        yield acts
    finally:
        for h in handles:
            h.remove()


def decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer without the LM head: profiling needs no logits (the head is ~20% of SmolLM2's FLOPs)."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, torch.nn.Module) and base is not model else model


def iter_activations(host, corpus: Corpus, layers: list[int] | None = None, batch_tokens: int = 4096,
                     max_len: int = 256, gate: bool = False, progress: bool = False,
                     ) -> Iterator[tuple[Batch, dict]]:
    """Yield (batch, acts) with acts as in `ffn_capture`; the tensors are only valid until the next step."""
    base = decoder(host.model)
    bar = tqdm(total=len(corpus), desc="activations", unit="doc", disable=not progress)
    with torch.inference_mode(), ffn_capture(host, layers, gate=gate) as acts:
        for batch in batches(corpus, host.tokenizer, batch_tokens=batch_tokens, max_len=max_len):
            base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
            yield batch, acts
            bar.update(len(batch.labels))
    bar.close()


def chunk_corpus(corpus: Corpus, tokenizer, max_len: int = 256) -> Corpus:
    """Cut documents longer than `max_len` tokens into near-equal windows (as text), so nothing is
    lost to truncation and every window is a sequence of its own. Split held-out data *before*
    chunking, so windows of one document never land on both sides."""
    out = Corpus()
    for doc in corpus:
        ids = tokenizer(doc.text, add_special_tokens=False).input_ids
        n = -(-len(ids) // max_len) if ids else 0
        if n <= 1:
            out.append(doc)
            continue
        width = -(-len(ids) // n)
        out.extend(Doc(tokenizer.decode(ids[i: i + width]), doc.label) for i in range(0, len(ids), width))
    return out


# --- profiling -------------------------------------------------------------------------------------
class _Accumulator:
    """Per-batch reductions done inside the hooks, so no [B, T, d_ff] tensor outlives its layer.

    Elementwise results go to one reused scratch buffer: fresh 25 MB temporaries per layer cost
    more in page faults than the arithmetic (measured ~2x on the statistics).
    """

    def __init__(self, n_layers: int):
        self.rows: dict[str, list] = {k: [None] * n_layers for k in _LABEL_STATS}
        self.mask: torch.Tensor | None = None  # [B, 1, T] float
        self.ntok: torch.Tensor | None = None  # [B, 1] float
        self._scratch = torch.empty(0)

    def start(self, attention_mask: torch.Tensor) -> None:
        self.mask = attention_mask.to(torch.float32).unsqueeze(1)
        self.ntok = self.mask.sum(2)

    def scratch(self, like: torch.Tensor) -> torch.Tensor:
        if self._scratch.numel() < like.numel() or self._scratch.dtype != like.dtype:
            self._scratch = torch.empty(like.numel(), dtype=like.dtype)
        return self._scratch[: like.numel()].view(like.shape)

    def masked_sum(self, t: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.mask, t).squeeze(1)

    def hooks(self, layer: int):
        def on_h(module, args):
            h, buf = args[0], self.scratch(args[0])
            self.rows["h_sum"][layer] = self.masked_sum(h)
            self.rows["abs_sum"][layer] = self.masked_sum(torch.abs(h, out=buf))
            self.rows["sq_sum"][layer] = self.masked_sum(torch.mul(h, h, out=buf))

        def on_gate(module, args, out):
            # sum(sign) = active - inactive over real tokens, so active = (sum(sign) + n) / 2; one
            # elementwise pass instead of compare + cast (an exact 0.0 pre-activation counts 1/2).
            signs = self.masked_sum(torch.sign(out, out=self.scratch(out)))
            self.rows["active"][layer] = (signs + self.ntok) / 2

        return on_h, on_gate

    def take(self) -> dict[str, torch.Tensor]:
        """{stat: [B, L, d_ff]} for the batch just run."""
        return {k: torch.stack(v, dim=1) for k, v in self.rows.items()}

@contextmanager
def _profile_hooks(host, acc: _Accumulator) -> Iterator[None]:
    handles = []
    try:
        for layer in range(host.n_layers):
            on_h, on_gate = acc.hooks(layer)
            handles.append(host.adapter.down_proj(host.model, layer).register_forward_pre_hook(on_h))
            handles.append(host.adapter.mlp(host.model, layer).gate_proj.register_forward_hook(on_gate))
        yield
    finally:
        for h in handles:
            h.remove()


class _Builder:
    """A profile under construction: label sums in place, per-document rows collected in chunks."""

    def __init__(self, base: Profile):
        self.prof = base
        self.docs: dict[str, list[torch.Tensor]] = {k: [getattr(base, k)] for k in _DOC_FIELDS}

    def add(self, stats: dict[str, torch.Tensor], labels: torch.Tensor, keys: torch.Tensor,
            ntok: torch.Tensor) -> None:
        p = self.prof
        p.tokens.index_add_(0, labels, ntok)
        for name in _LABEL_STATS:
            getattr(p, name).index_add_(0, labels, stats[name].to(torch.float64))
        mean_abs = stats["abs_sum"] / ntok.clamp(min=1).to(stats["abs_sum"].dtype)[:, None, None]
        for name, t in zip(_DOC_FIELDS, (mean_abs.to(p.doc_mean_abs.dtype), labels, keys, ntok), strict=True):
            self.docs[name].append(t)

    def snapshot(self) -> Profile:
        for name, chunks in self.docs.items():
            setattr(self.prof, name, torch.cat(chunks))
            self.docs[name] = [getattr(self.prof, name)]
        return self.prof


def _start_profile(host, labels: list[str], max_len: int, checkpoint: Path | None,
                   doc_dtype: torch.dtype) -> Profile:
    fresh = Profile.empty(host.ref.fingerprint, labels, host.n_layers, host.d_ff, max_len, doc_dtype)
    fresh.info = {"host": host.ref.name or host.ref.arch}
    if checkpoint is None or not checkpoint.is_file():
        return fresh
    old = Profile.load(checkpoint)
    fresh._check_compatible(old)
    return old.with_labels(sorted(set(old.labels) | set(labels)))


def _new_docs(corpus: Corpus, done: set[int]) -> Corpus:
    """Documents not counted yet; a text that repeats is counted once (documents are keyed by content)."""
    todo, seen = Corpus(), set(done)
    for d in corpus:
        k = signed_key(d.key())
        if k not in seen:
            seen.add(k)
            todo.append(d)
    return todo


def profile_corpus(host, corpus: Corpus, batch_tokens: int = 4096, max_len: int = 256,
                   checkpoint: str | os.PathLike | None = None, save_every: int = 0, progress: bool = True,
                   doc_dtype: torch.dtype = torch.float16) -> Profile:
    """Stream `corpus` through `host` and return its activation profile (see the module docstring)."""
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    builder = _Builder(_start_profile(host, corpus.labels(), max_len, checkpoint, doc_dtype))
    todo = _new_docs(corpus, set(builder.prof.doc_key.tolist()))
    label_pos = {lab: i for i, lab in enumerate(builder.prof.labels)}
    acc = _Accumulator(host.n_layers)
    base = decoder(host.model)
    bar = tqdm(total=len(todo), desc=f"profiling {host.ref.name or 'host'}", unit="doc", disable=not progress)
    with torch.inference_mode(), _profile_hooks(host, acc):
        for step, batch in enumerate(batches(todo, host.tokenizer, batch_tokens=batch_tokens, max_len=max_len), 1):
            acc.start(batch.attention_mask)
            base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
            labels = torch.tensor([label_pos[lab] for lab in batch.labels], dtype=torch.int64)
            keys = torch.tensor([signed_key(todo[i].key()) for i in batch.doc_index], dtype=torch.int64)
            builder.add(acc.take(), labels, keys, batch.attention_mask.sum(1))
            bar.update(len(batch.labels))
            if checkpoint is not None and save_every and step % save_every == 0:
                builder.snapshot().save(checkpoint)
    bar.close()
    prof = builder.snapshot()
    if checkpoint is not None:
        prof.save(checkpoint)
    return prof
