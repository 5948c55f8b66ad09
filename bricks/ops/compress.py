"""Compress: a smaller host whose FFN neurons are the parent's, so the parent's `neurons` bricks still fit.

    opts = compress_options({"method": "ngc", "keep": 0.8})
    ids, calib = calibration(host, "builtin", opts)  # 16 x 256 tokens and what the lineage records of them
    result = compress_host(host, input_grams(host, ids), opts, "out/smollm2-ngc80", calibration=calib)

A *group* is a set of weight matrices of one layer that read the same input: `ug` = gate_proj + up_proj
(the MLP input), `qkv` = q_proj + k_proj + v_proj (the attention input). Methods, registered by name with
their paper and options (`@compression_method`), all at the same parameter count:

- `ngc` (NGC, Neuronal Group Communication, arXiv 2510.16851, used here as post-hoc compression): the
  group's calibration outputs Y = X [W_1; W_2]^T stacked, a rank-r SVD Y ~ U S V^T; output states
  Q_out = V_r, shared input states Q_in = the least-squares solution of X Q_in = U_r S_r; each weight
  W_i ~ Q_out[rows_i] Q_in^T. One Q_in per group, so r(sum m_i + n) parameters instead of sum m_i * n.
- `asvd` (activation-aware SVD): the same SVD of calibration outputs, per matrix, nothing shared. It is
  `ngc` with groups of one, so the two differ only by the sharing.
- `svd`: per-matrix truncated SVD of W (no calibration data).

r comes from `keep`, the fraction of the compressed matrices' parameters kept (per factorisation:
r = floor(keep * M n / (M + n)), M the stacked rows). A group is swapped only where its relative output
error on the calibration data, ||X (W - W')^T|| / ||X W^T|| over its matrices, is at most `max_error`.

Everything is computed from the input Gram matrix G = X^T X per (layer, group input), accumulated on the
parent host (float64): with G = R^T R, ||X A^T|| = ||R A^T||, the SVD of Y is the SVD of R W^T up to an
orthogonal factor, and the least-squares Q_in is R^+ U_r S_r. So 16 x 256 calibration tokens cost one
forward pass and a 576 x 576 matrix per site, never a [tokens, 3072] one.

Neuron identities are kept: `ug` compresses the rows that produce neuron j (gate row j and up row j stay
row j of their matrix), down_proj is untouched and nothing is reordered. The output folder is a plain HF
Llama holding the dense products Q_out Q_in^T (what transformers and stock vLLM load; the parameter saving
is in `compression/factors.safetensors`, not in what a stock engine serves), plus a lineage file naming
the parent's fingerprint, the method, groups, ranks and the calibration data digest; its HostRef then
accepts the parent's `neurons` bricks (bricks.host, HostRef.runs).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, Field, field_validator
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from bricks.corpus import BUILTIN, Corpus, load_corpus
from bricks.errors import InvalidInputError
from bricks.extract.options import ExtractorOptions, MethodRegistry, MethodSpec, OptionWording, comma_list
from bricks.host import LINEAGE_FILE, host_ancestors, host_fingerprint
from bricks.ops.grow import HELDOUT_SPLIT
from bricks.profile import decoder

# group name -> (the layer's block holding it, its matrices in row order); every matrix of a group reads
# the same input (the normed residual stream the block sees)
GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ug": ("mlp", ("gate_proj", "up_proj")),
    "qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")),
}
KEEPS_KINDS = ["neurons"]  # brick kinds of the parent that stay valid: FFN neuron identities are kept
FACTORS_DIR = "compression"  # inside the output folder (not top level: engines load every *.safetensors there)
_EIG_FLOOR = 1e-10  # eigenvalues of G below this x the largest are treated as 0 (the pseudo-inverse)


# --- options -----------------------------------------------------------------------------------------------
class CompressOptions(ExtractorOptions):
    """What every compression method shares (`brick compress --opt KEY=VALUE`, or the named flags)."""

    method: str = Field("ngc", description="Compression method (ngc, svd, asvd).")
    keep: float = Field(0.8, gt=0, lt=1, description="Fraction of the compressed matrices' parameters kept "
                        "(0.8: 20% fewer); sets each factorisation's rank.")
    groups: list[Literal["ug", "qkv"]] = Field(["ug", "qkv"], description="Matrix groups to compress: ug "
                                               "(gate_proj+up_proj), qkv (q_proj+k_proj+v_proj).")
    layers: list[int] | None = Field(None, description="Layers to compress (default: all).")
    max_error: float | None = Field(0.5, gt=0, description="A group is swapped only where its relative output "
                                    "error on the calibration data is at most this (none: swap every group).")
    rank: int | None = Field(None, ge=1, description="A fixed rank for every factorisation instead of `keep` "
                             "(capped at full rank; full rank reproduces the weights).")
    calib_chunks: int = Field(16, ge=1, le=4096, description="Calibration sequences.")
    calib_tokens: int = Field(256, ge=8, le=8192, description="Tokens per calibration sequence.")

    @field_validator("groups", "layers", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return comma_list(v)

    @field_validator("groups")
    @classmethod
    def _some_groups(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one group")
        return list(dict.fromkeys(v))


class NgcOptions(CompressOptions):
    method: Literal["ngc"] = Field("ngc", description="Neuron-group compression: shared input states.")


class AsvdOptions(CompressOptions):
    method: Literal["asvd"] = Field("asvd", description="SVD of each matrix's calibration outputs.")


class SvdOptions(CompressOptions):
    method: Literal["svd"] = Field("svd", description="Truncated SVD of each weight matrix.")


# --- the registry ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompressionMethod(MethodSpec):
    """A registered method: `fn(W [M, n] float64, G [n, n]) -> (out [M, k], inp [n, k])`, columns by
    importance, so a rank-r factorisation is the first r columns. `shares_input`: one factorisation per
    group (else one per matrix)."""

    shares_input: bool = False

    wording: ClassVar[OptionWording] = OptionWording(
        unknown="compression method {name} has no option {key!r}{suggestion}",
        invalid="compress {name} option {where}={value!r}: {reason}")

    def parse(self, raw: dict[str, Any] | BaseModel | None = None) -> CompressOptions:
        """The method's options (its `method` is this one); every problem is one `InvalidInputError`."""
        if not isinstance(raw, self.options):
            values = raw.model_dump() if isinstance(raw, BaseModel) else dict(raw or {})
            raw = {**values, "method": self.name}
        return super().parse(raw)


COMPRESSION_METHODS = MethodRegistry("compression method", CompressionMethod)


def compression_method(name: str, reference_url: str, options: type[CompressOptions], shares_input: bool) -> Callable:
    """Register a factorisation `fn(W, G) -> (out, inp)` under `name`."""
    return COMPRESSION_METHODS.register(name, reference_url, options, shares_input=shares_input)


def compress_options(raw: dict[str, Any] | CompressOptions | None) -> CompressOptions:
    """The options of the method `raw` names (default ngc), validated."""
    if isinstance(raw, CompressOptions):
        return COMPRESSION_METHODS.lookup(raw.method).parse(raw)
    raw = dict(raw or {})
    return COMPRESSION_METHODS.lookup(str(raw.pop("method", "ngc"))).parse(raw)


def output_states(w: torch.Tensor, gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SVD of the calibration outputs Y = X W^T: (Q_out = V, Q_in = lstsq(X, U S)), from G = X^T X alone."""
    evals, evecs = torch.linalg.eigh(gram)
    live = evals > evals.max().clamp(min=1e-300) * _EIG_FLOOR
    root = evals[live].sqrt()
    r = (evecs[:, live] * root).T  # [k, n], R^T R = G: X = Q R for some orthonormal Q
    u, s, vh = torch.linalg.svd(r @ w.T, full_matrices=False)  # R W^T = U S V^T, so Y = (Q U) S V^T
    q_in = (evecs[:, live] / root) @ (u * s)  # R^+ U S: the min-norm least-squares solution of X Q_in = Q U S
    return vh.T, q_in


@compression_method("ngc", "https://arxiv.org/abs/2510.16851", NgcOptions, shares_input=True)
def ngc(w: torch.Tensor, gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NGC: one SVD of a group's stacked calibration outputs, input states shared by the group."""
    return output_states(w, gram)


@compression_method("asvd", "https://arxiv.org/abs/2312.05821", AsvdOptions, shares_input=False)
def asvd(w: torch.Tensor, gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Activation-aware SVD: the SVD of each matrix's calibration outputs, nothing shared."""
    return output_states(w, gram)


@compression_method("svd", "https://en.wikipedia.org/wiki/Low-rank_approximation", SvdOptions, shares_input=False)
def svd(w: torch.Tensor, gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD of each weight matrix (Eckart-Young; no calibration data)."""
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return u * s, vh.T


# --- calibration -------------------------------------------------------------------------------------------
def calibration_corpus(source: str) -> Corpus:
    """`builtin`: the shipped corpora's training split (their held-out documents stay unseen, as for the
    extractors); else JSONL / text files or a folder of them (bricks.corpus.load_corpus)."""
    if source == BUILTIN:
        return load_corpus(BUILTIN).split(*HELDOUT_SPLIT)[0]
    if not Path(source).expanduser().exists():
        raise InvalidInputError(f"calibration data {source} does not exist",
                                "pass --calib builtin, or a JSONL / text file or folder of text")
    return load_corpus(str(Path(source).expanduser()))


def calibration(host, source: str, opts: CompressOptions) -> tuple[torch.Tensor, dict[str, Any]]:
    """The calibration token ids of `source` and what the lineage records of them."""
    corpus = calibration_corpus(source)
    ids = calibration_ids(host.tokenizer, corpus, opts.calib_chunks, opts.calib_tokens)
    return ids, {"source": source, "corpus_digest": corpus.digest(), "tokens_digest": ids_digest(ids),
                 "chunks": opts.calib_chunks, "tokens_per_chunk": opts.calib_tokens}


def calibration_ids(tokenizer, corpus: Corpus, chunks: int = 16, tokens: int = 256) -> torch.Tensor:
    """[chunks, tokens] token ids: the corpus as one stream (an EOS after each document) cut into windows,
    `chunks` of them spread evenly over it (so every label of a corpus ordered by label is seen)."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer([d.text for d in corpus], add_special_tokens=False)["input_ids"]:
        stream += ids + ([eos] if eos is not None else [])
    windows = len(stream) // tokens
    if windows < chunks:
        raise InvalidInputError(f"the calibration data has {len(stream)} tokens, fewer than calib_chunks x "
                                f"calib_tokens = {chunks} x {tokens}",
                                "give more text, or lower --opt calib_chunks / calib_tokens")
    pick = torch.linspace(0, windows - 1, chunks).round().long().tolist()
    return torch.tensor([stream[i * tokens: (i + 1) * tokens] for i in pick])


def ids_digest(ids: torch.Tensor) -> str:
    """sha256 of the calibration token ids: what the lineage records as the data compression saw."""
    return "sha256:" + hashlib.sha256(ids.to(torch.int64).numpy().tobytes()).hexdigest()


def group_modules(model: torch.nn.Module, layer: int, group: str) -> list[torch.nn.Linear]:
    block, names = GROUPS[group]
    parent = getattr(decoder(model).layers[layer], block)
    return [getattr(parent, name) for name in names]


def input_grams(host, ids: torch.Tensor, groups: list[str] | None = None, layers: list[int] | None = None,
                batch: int = 4, progress: bool = True) -> dict[tuple[int, str], torch.Tensor]:
    """{(layer, group): G = X^T X} (float64) of every group's input over the token ids `ids` [B, T]."""
    groups = list(groups or GROUPS)
    layers = check_layers(layers, host.n_layers)
    grams: dict[tuple[int, str], torch.Tensor] = {}

    def hook(key):
        def add(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            grams[key] = grams[key] + x.T @ x if key in grams else x.T @ x

        return add

    handles = [group_modules(host.model, layer, g)[0].register_forward_pre_hook(hook((layer, g)))
               for layer in layers for g in groups]
    bar = tqdm(total=ids.shape[0], desc="calibration", unit="seq", disable=not progress, leave=False)
    try:
        with torch.inference_mode():
            for i in range(0, ids.shape[0], batch):
                decoder(host.model)(input_ids=ids[i: i + batch], use_cache=False)
                bar.update(min(batch, ids.shape[0] - i))
    finally:
        bar.close()
        for h in handles:
            h.remove()
    return grams


# --- compressing -------------------------------------------------------------------------------------------
@dataclass
class Factorisation:
    """One low-rank factorisation: the matrices it covers (stacked rows), Q_out [M, r] and Q_in [n, r]."""

    names: list[str]  # state-dict weight names, in row order
    rows: list[int]
    q_out: torch.Tensor
    q_in: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.q_in.shape[1])

    @property
    def params(self) -> int:
        return self.q_out.numel() + self.q_in.numel()

    def weights(self) -> dict[str, torch.Tensor]:
        """Each covered weight, Q_out[rows_i] Q_in^T (float32)."""
        dense = (self.q_out @ self.q_in.T).float()
        return dict(zip(self.names, torch.split(dense, self.rows), strict=True))


@dataclass
class GroupResult:
    layer: int
    group: str
    factorisations: list[Factorisation]
    dense_params: int
    error: float  # relative output error on the calibration data, over the group's matrices
    errors: dict[str, float]  # per matrix
    swapped: bool

    @property
    def params(self) -> int:
        return sum(f.params for f in self.factorisations)

    def summary(self) -> dict[str, Any]:
        return {"layer": self.layer, "group": self.group, "swapped": self.swapped,
                "ranks": [f.rank for f in self.factorisations], "params": self.params,
                "dense_params": self.dense_params, "calib_error": round(self.error, 5),
                "matrices": [n for f in self.factorisations for n in f.names]}


@dataclass
class Compression:
    method: str
    options: CompressOptions
    groups: list[GroupResult]

    def weights(self) -> dict[str, torch.Tensor]:
        """{weight name: its compressed value} of every swapped group."""
        return {k: v for g in self.groups if g.swapped for f in g.factorisations for k, v in f.weights().items()}

    def params(self) -> dict[str, Any]:
        """Parameter counts of the swapped matrices (and of every targeted one)."""
        done = [g for g in self.groups if g.swapped]
        dense, low = sum(g.dense_params for g in done), sum(g.params for g in done)
        return {"dense": dense, "compressed": low, "kept_fraction": round(low / dense, 5) if dense else None,
                "groups_swapped": len(done), "groups_targeted": len(self.groups),
                "targeted_dense": sum(g.dense_params for g in self.groups)}

    def report(self) -> dict[str, Any]:
        errors = [e for g in self.groups for e in g.errors.values()]
        return {"method": self.method, "options": self.options.params(), "params": self.params(),
                "calib_error_median": round(_median(errors), 5), "groups": [g.summary() for g in self.groups]}


def _median(values: list[float]) -> float:
    return float(torch.tensor(values).median()) if values else float("nan")


def rank_for(rows: int, cols: int, keep: float) -> int:
    """The rank whose factors r (rows + cols) hold at most `keep` of the rows x cols parameters."""
    return max(1, min(rows, cols, math.floor(keep * rows * cols / (rows + cols))))


def relative_errors(original: dict[str, torch.Tensor], approx: dict[str, torch.Tensor],
                    gram: torch.Tensor) -> tuple[dict[str, float], float]:
    """Per matrix ||X (W - W')^T|| / ||X W^T|| from G = X^T X, and the same over all of them."""
    num, den, out = 0.0, 0.0, {}
    for name, w in original.items():
        w = w.double()
        d = w - approx[name].double()
        n_i, d_i = float(((d @ gram) * d).sum()), float(((w @ gram) * w).sum())
        out[name] = math.sqrt(max(n_i, 0.0) / max(d_i, 1e-300))
        num, den = num + n_i, den + d_i
    return out, math.sqrt(max(num, 0.0) / max(den, 1e-300))


def compress_weights(host, grams: dict[tuple[int, str], torch.Tensor], options: dict | CompressOptions | None,
                     cache: dict | None = None, progress: bool = True) -> Compression:
    """Factorise every targeted group with the method's factorisation at the rank `keep` (or `rank`) gives;
    `cache` (a dict the caller keeps) reuses decompositions across ranks. The host is not changed."""
    opts = compress_options(options)
    spec = COMPRESSION_METHODS.lookup(opts.method)
    layers = check_layers(opts.layers, host.n_layers)
    cache = {} if cache is None else cache
    names = {id(m): n for n, m in host.model.named_modules()}
    todo = [(layer, g) for layer in layers for g in opts.groups]
    missing = [k for k in todo if k not in grams]
    if missing:
        raise InvalidInputError(f"no calibration statistics for layer {missing[0][0]} group {missing[0][1]}",
                                "compute input_grams for the layers and groups being compressed")
    results = []
    for layer, group in tqdm(todo, desc=f"compressing ({spec.name})", unit="group", disable=not progress,
                             leave=False):
        mods = group_modules(host.model, layer, group)
        original = {f"{names[id(m)]}.weight": m.weight.detach() for m in mods}
        units = [list(original)] if spec.shares_input else [[n] for n in original]
        facts = []
        for unit in units:
            key = (spec.fn.__name__, unit[0], len(unit))
            if key not in cache:
                w = torch.cat([original[n] for n in unit]).double()
                cache[key] = spec.fn(w, grams[(layer, group)])
            out, inp = cache[key]
            rows = [original[n].shape[0] for n in unit]
            full = min(sum(rows), inp.shape[0], inp.shape[1])
            r = min(opts.rank, full) if opts.rank else min(rank_for(sum(rows), inp.shape[0], opts.keep), full)
            facts.append(Factorisation(unit, rows, out[:, :r].contiguous(), inp[:, :r].contiguous()))
        approx = {k: v for f in facts for k, v in f.weights().items()}
        errors, error = relative_errors(original, approx, grams[(layer, group)])
        swapped = opts.max_error is None or error <= opts.max_error
        dense = sum(w.numel() for w in original.values())
        results.append(GroupResult(layer, group, facts, dense, error, errors, swapped))
    return Compression(spec.name, opts, results)


def check_layers(layers: list[int] | None, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise InvalidInputError(f"layer {bad[0]} does not exist (the host has {n_layers} layers)",
                                f"use layers between 0 and {n_layers - 1}")
    return sorted(set(layers))


@contextmanager
def weights_swapped(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """The model with `weights` (state-dict names) in place of its own, restored afterwards."""
    params = dict(model.named_parameters())
    saved = {name: params[name].detach().clone() for name in weights}
    try:
        with torch.no_grad():
            for name, w in weights.items():
                params[name].copy_(w.to(params[name].dtype))
        yield
    finally:
        with torch.no_grad():
            for name, w in saved.items():
                params[name].copy_(w)


# --- the derived host --------------------------------------------------------------------------------------
@dataclass
class CompressResult:
    path: Path
    fingerprint: str
    lineage: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)


def check_out_dir(out: str | os.PathLike, host_path: Path | None = None) -> Path:
    """Refuse an output folder that exists (nothing is ever written over) or is inside the parent host."""
    out = Path(out).expanduser()
    if out.exists():
        raise InvalidInputError(f"output folder {out} already exists", "choose a new folder (it is created)")
    if host_path is not None and host_path.resolve() in out.resolve().parents:
        raise InvalidInputError(f"output folder {out} is inside the parent host's folder {host_path}",
                                "write the compressed host somewhere else")
    return out


def compress_host(host, grams: dict[tuple[int, str], torch.Tensor], options: dict | CompressOptions | None,
                  out: str | os.PathLike, *, calibration: dict[str, Any], cache: dict | None = None,
                  progress: bool = True) -> CompressResult:
    """Compress `host` and write the derived host to `out` (a new folder, written whole or not at all):
    the HF model with the compressed weights, their factors, the lineage file, a report and a plot.
    `calibration`: what the lineage records of the calibration data (source, digest, chunks, tokens);
    `cache`: as for compress_weights."""
    out = check_out_dir(out, host.path)
    compression = compress_weights(host, grams, options, cache=cache, progress=progress)
    lineage = lineage_record(host, compression, calibration)
    report = compression.report()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    os.chmod(tmp, 0o755)
    try:
        write_host_folder(host.path, compression, lineage, report, tmp)
        if out.exists():
            raise InvalidInputError(f"output folder {out} appeared while compressing", "choose a new folder")
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fingerprint = host_fingerprint(out)
    report["fingerprint"] = fingerprint
    return CompressResult(out, fingerprint, lineage, report)


def lineage_record(host, compression: Compression, calibration: dict[str, Any]) -> dict[str, Any]:
    """What the derived host says of itself: parent, ancestors (with the kinds still valid), method,
    groups and ranks, calibration data."""
    from importlib.metadata import version

    ref = host.ref
    operation = f"compress-{compression.method}"
    parent = {"fingerprint": ref.fingerprint, "name": ref.name, "operation": operation, "keeps": KEEPS_KINDS}
    older = [{**a.model_dump(), "keeps": [k for k in a.keeps if k in KEEPS_KINDS]} for a in ref.derived_from]
    return {"format": 1, "operation": operation, "parent": {"fingerprint": ref.fingerprint, "name": ref.name,
                                                            "path": str(host.path)},
            "derived_from": [parent, *older], "method": compression.method,
            "options": compression.options.params(), "params": compression.params(),
            "groups": [g.summary() for g in compression.groups], "calibration": calibration,
            "created": datetime.now(timezone.utc).isoformat(), "brickwork": version("brickwork")}


def write_host_folder(parent: Path, compression: Compression, lineage: dict, report: dict, folder: Path) -> None:
    """Fill `folder`: the parent's config and tokenizer files, model.safetensors with the compressed weights
    (in the parent's dtype), compression/{factors.safetensors, report.json, errors.png}, the lineage file."""
    for f in parent.iterdir():
        skip = f.suffix == ".safetensors" or f.name.endswith(".index.json") or f.name == LINEAGE_FILE
        if f.is_file() and not skip:
            shutil.copy2(f, folder / f.name)
    weights: dict[str, torch.Tensor] = {}
    for f in sorted(parent.glob("*.safetensors")):
        weights.update(load_file(f))
    dtype = next(iter(weights.values())).dtype
    for name, w in compression.weights().items():
        weights[name] = w.to(weights[name].dtype).contiguous()
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    factors = {}
    for g in compression.groups:
        for f in g.factorisations if g.swapped else []:
            stem = "+".join(f.names)
            factors[f"{stem}.q_out"] = f.q_out.to(dtype).contiguous()
            factors[f"{stem}.q_in"] = f.q_in.to(dtype).contiguous()
    (folder / FACTORS_DIR).mkdir()
    save_file(factors, folder / FACTORS_DIR / "factors.safetensors",
              metadata={"brickwork": json.dumps({"rows": {"+".join(f.names): f.rows for g in compression.groups
                                                          if g.swapped for f in g.factorisations}})})
    (folder / FACTORS_DIR / "report.json").write_text(json.dumps(report, indent=2))
    plot_errors(compression, folder / FACTORS_DIR / "errors.png")
    (folder / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2))
    host_ancestors(folder)  # what was written reads back as a valid lineage


def plot_errors(compression: Compression, path: Path) -> Path:
    """Relative calibration output error per layer and group, and the swap threshold."""
    from bricks.analysis.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for group in compression.options.groups:
        rows = [g for g in compression.groups if g.group == group]
        ax.plot([g.layer for g in rows], [g.error for g in rows], marker="o", label=group)
    if compression.options.max_error is not None:
        ax.axhline(compression.options.max_error, color="grey", linestyle="--", label="max_error")
    ax.set_xlabel("layer")
    ax.set_ylabel("relative output error (calibration)")
    ax.set_title(f"{compression.method}, keep {compression.options.keep:g}")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
