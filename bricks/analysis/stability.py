"""`stability`: how much each layer contracts or expands a small perturbation of the residual stream.

For a text, perturb every token's input embedding e_t by eps * ||e_t|| * u_t (u_t a random unit vector), run
the clean and the perturbed input through the model together, and take per layer

    lambda_l = mean over tokens of log(||h'_l - h_l|| / ||h'_(l-1) - h_(l-1)||)

where h_l is the residual stream after decoder layer l (h_0 the embeddings). lambda_l < 0: layer l contracts
the perturbation; > 0: it expands it; the sum over layers is the log amplification end to end. Texts are
averaged (the report keeps the spread over texts). Because the residual stream itself grows with depth, the
report also gives `lambda_relative`, the same for ||dh_l|| / ||h_l|| (the stream's own growth taken out).

This is brickwork's own finite-time Lyapunov-style estimate, in the spirit of the stability measure of
activation dynamics in Neuronal Group Communication (arXiv 2510.16851), whose exact formula is not public:
numbers from here are comparable with each other (host vs assembly vs compressed host, same options), not with
that paper's. It is measured for the host, and with an assembly applied through the reference hooks
(bricks/apply.py), e.g. does amplifying a brick x4 destabilise the model? Any host spec works (a compressed
host is an HF folder like any other).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator
from tqdm.auto import tqdm

from bricks.analysis.metrics import MetricOptions, MetricResult, metric
from bricks.analysis.plots import pyplot, save_figure
from bricks.errors import InvalidInputError
from bricks.extract.options import comma_list

NOTE = ("brickwork's own finite-time Lyapunov-style estimate (per-layer log growth of an input-embedding "
        "perturbation), in the spirit of the NGC stability metric (arXiv 2510.16851) whose exact formula is not "
        "public; compare runs of this metric with the same options, not with the paper's numbers")


class StabilityOptions(MetricOptions):
    eps: float = Field(1e-3, gt=0, le=1, description="Perturbation size, relative to each token's embedding norm.")
    texts: int = Field(8, ge=1, description="Texts averaged over (taken in turn from each label of the corpus).")
    max_tokens: int = Field(64, ge=2, description="Tokens per text (longer texts are cut).")
    data: list[str] = Field(["builtin"], description="Corpus the texts come from: JSONL/text files or folders, "
                            "or builtin.")
    seed: int = Field(0, description="Seed of the perturbation directions.")

    @field_validator("data", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return comma_list(v)


@metric("stability", reference_url="https://arxiv.org/abs/2510.16851", options=StabilityOptions)
def measure_stability(host, uses: list, options: StabilityOptions, plot: Path | None = None) -> MetricResult:
    """Per-layer contraction of an input perturbation (a finite-time Lyapunov-style estimate), host vs assembly."""
    from bricks.compose import assemble

    texts = stability_texts(host.tokenizer, options)
    runs = {"host": None}
    if uses:
        runs["assembly"] = assemble(host.ref, uses)
    bar = tqdm(total=len(texts) * len(runs), desc="stability", unit="text", disable=not options.progress)
    report: dict[str, Any] = {"metric": "stability", "host_name": host.ref.name, "fingerprint": host.ref.fingerprint,
                              "eps": options.eps, "texts": len(texts), "tokens": int(sum(t.numel() for t in texts)),
                              "layers": list(range(1, host.n_layers + 1)), "note": NOTE}
    for run, assembly in runs.items():
        per_text = np.stack([_text_lambdas(host, ids, options.eps, options.seed + i, assembly, bar)
                             for i, ids in enumerate(texts)])
        report[run] = summarise(per_text)
    bar.close()
    if uses:
        report["assembly"]["bricks"] = [{"brick": u.brick.name, "gain": u.gain} for u in uses]
        report["sum_change"] = report["assembly"]["sum"] - report["host"]["sum"]
    figures = {} if plot is None else {"stability": plot_stability(report, plot)}
    return MetricResult(report, figures)


def stability_texts(tokenizer, options: StabilityOptions) -> list[torch.Tensor]:
    """`options.texts` token-id rows [1, T], cut to `max_tokens`, one label after another (texts under 2 tokens
    are skipped: a single token has no dynamics to compare)."""
    from bricks.corpus import load_corpus

    corpus = load_corpus(options.data)
    by_label = [corpus.by_label(lab) for lab in corpus.labels()]
    rows = []
    for i in range(max(len(docs) for docs in by_label) if by_label else 0):
        for docs in by_label:
            if i < len(docs) and len(rows) < options.texts:
                ids = tokenizer(docs[i].text, return_tensors="pt").input_ids[:, : options.max_tokens]
                if ids.shape[1] >= 2:
                    rows.append(ids)
    if not rows:
        raise InvalidInputError(f"stability: no text of 2 tokens or more in {', '.join(options.data)}",
                                "pass --opt data=FILE with some text (JSONL or plain text), or data=builtin")
    return rows


def layer_lambdas(model, adapter, ids: torch.Tensor, eps: float, seed: int) -> np.ndarray:
    """lambda_l for l = 1..n_layers on one text: the mean over its tokens of the log growth of the perturbation
    through layer l."""
    return layer_growth(model, adapter, ids, eps, seed)[0]


@torch.no_grad()
def layer_growth(model, adapter, ids: torch.Tensor, eps: float, seed: int) -> np.ndarray:
    """[2, n_layers]: lambda_l (as `layer_lambdas`) and the same for the relative perturbation
    ||dh_l|| / ||h_l|| (the residual stream's own growth taken out). Clean and perturbed inputs run as one batch
    of two, so their difference is the perturbation's alone."""
    emb = model.get_input_embeddings()(ids)[0]  # [T, d]
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(emb.shape, generator=gen, dtype=emb.dtype)
    delta = eps * emb.norm(dim=-1, keepdim=True) * u / u.norm(dim=-1, keepdim=True)
    outputs: list[torch.Tensor] = []

    def keep(_module, _inputs, out):
        outputs.append(out[0] if isinstance(out, tuple) else out)

    handles = [layer.register_forward_hook(keep) for layer in adapter.layers(model)]
    try:
        pair = torch.stack([emb, emb + delta])
        model(inputs_embeds=pair, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    tiny = torch.finfo(torch.float32).tiny
    states = [pair, *outputs]
    diffs = torch.stack([(h[1] - h[0]).float().norm(dim=-1) for h in states]).clamp_min(tiny)  # [L+1, T]
    sizes = torch.stack([h[0].float().norm(dim=-1) for h in states]).clamp_min(tiny)
    growth = torch.log(diffs[1:] / diffs[:-1])  # the rounded input difference, not delta, starts the chain
    relative = growth - torch.log(sizes[1:] / sizes[:-1])
    return torch.stack([growth.mean(dim=1), relative.mean(dim=1)]).numpy()


def _text_lambdas(host, ids, eps, seed, assembly, bar) -> np.ndarray:
    from bricks.apply import assembly_applied

    if assembly is None:
        out = layer_growth(host.model, host.adapter, ids, eps, seed)
    else:
        with assembly_applied(host.model, host.adapter, assembly):
            out = layer_growth(host.model, host.adapter, ids, eps, seed)
    bar.update()
    return out


def summarise(per_text: np.ndarray) -> dict[str, Any]:
    """Per-layer lambda (mean and spread over texts) and the figures a reader compares: the mean over layers,
    the sum (log amplification end to end), the largest layer and how many layers contract; and lambda of the
    relative perturbation (per_text is [texts, 2, layers] from `layer_growth`)."""
    lam, rel = per_text[:, 0].mean(axis=0), per_text[:, 1].mean(axis=0)
    return {"lambda": [round(float(x), 5) for x in lam],
            "lambda_std": [round(float(x), 5) for x in per_text[:, 0].std(axis=0)],
            "mean": float(lam.mean()), "sum": float(lam.sum()), "max": float(lam.max()),
            "max_layer": int(lam.argmax()) + 1, "contracting_layers": int((lam < 0).sum()),
            "lambda_relative": [round(float(x), 5) for x in rel], "sum_relative": float(rel.sum()),
            "contracting_layers_relative": int((rel < 0).sum())}


def plot_stability(report: dict[str, Any], path: str | Path) -> Path:
    """lambda per layer, host and (when measured) assembly, with their spread over texts (PNG)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    layers = np.array(report["layers"])
    for run, colour in (("host", "C0"), ("assembly", "C3")):
        if run not in report:
            continue
        lam, std = np.array(report[run]["lambda"]), np.array(report[run]["lambda_std"])
        label = run if run == "host" else "assembly: " + ", ".join(
            f"{b['brick']}" + ("" if b["gain"] is None else f" x{b['gain']:g}") for b in report[run]["bricks"])
        ax.plot(layers, lam, "o-", ms=3, color=colour, label=f"{label} (sum {report[run]['sum']:+.2f})")
        ax.fill_between(layers, lam - std, lam + std, color=colour, alpha=0.15)
        ax.plot(layers, report[run]["lambda_relative"], "--", lw=1, color=colour, label=f"{run}, relative to |h_l|")
    ax.axhline(0, color="0.4", lw=0.8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer")
    ax.set_ylabel("lambda = mean log(|dh_l| / |dh_(l-1)|)")
    ax.set_title(f"stability of {report['host_name']} (eps {report['eps']:g}, {report['texts']} texts)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
