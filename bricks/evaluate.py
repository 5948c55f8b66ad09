"""Does a brick do something specific? Perplexity per label with bricks applied, selectivity, stability.

- `label_perplexity(host, corpus, uses)`: perplexity per label on (held-out) text with an assembly
  applied through the reference hooks (`bricks.apply`): gain 0 ablates, an offset mean-ablates or steers.
- `selectivity_report(host, corpus, bricks, random_sets=5)`: for each brick, ΔPPL% on every label when it
  is applied, and the same for random neuron sets with the same count per layer; `own` is the brick's
  label (`meta.routing.label`). Rendered as a rich table, JSON or a heatmap PNG.
- `host_spec_for(bricks)` / `evaluation_corpus(...)`: the host and the (held-out) text to evaluate on.
- `jaccard(a, b)` / `stability(...)`: overlap of bricks re-extracted on two disjoint halves of a corpus.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bricks.analysis.plots import pyplot, save_figure
from bricks.apply import assembly_applied
from bricks.compose import BrickUse, assemble
from bricks.constants import BUILTIN_HOSTS, DEFAULT_HOST
from bricks.corpus import Corpus, batches
from bricks.errors import InvalidInputError
from bricks.format import Brick
from bricks.kinds.neurons import neuron_brick
from bricks.profile import decoder

_LOGIT_CHUNK = 1024  # positions per LM-head call: [1024, vocab] fp32 is ~200 MB on SmolLM2


# --- perplexity ------------------------------------------------------------------------------------
def _batch_nll(host, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL per row; logits only for real positions, chunked (never [B, T, vocab])."""
    hidden = decoder(host.model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
    valid = (attention_mask[:, 1:] * attention_mask[:, :-1]).bool()
    rows = torch.arange(input_ids.shape[0])[:, None].expand_as(valid)[valid]
    h, target = hidden[:, :-1][valid], input_ids[:, 1:][valid]
    head = host.model.get_output_embeddings()
    out = torch.zeros(input_ids.shape[0], dtype=torch.float64)
    for i in range(0, h.shape[0], _LOGIT_CHUNK):
        nll = F.cross_entropy(head(h[i: i + _LOGIT_CHUNK]).float(), target[i: i + _LOGIT_CHUNK], reduction="none")
        out.index_add_(0, rows[i: i + _LOGIT_CHUNK], nll.double())
    return out


def label_nll(host, corpus: Corpus, uses: list[BrickUse] | None = None, batch_tokens: int = 4096,
              max_len: int = 256, progress: bool = False, bar: tqdm | None = None) -> dict[str, tuple[float, int]]:
    """{label: (summed NLL, predicted tokens)} with the assembly of `uses` applied. A `bar` given is advanced
    instead of a bar of its own: a phase of several passes shows one bar."""
    assembly = assemble(host.ref, list(uses or []))
    sums: dict[str, list] = {lab: [0.0, 0] for lab in corpus.labels()}
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=len(corpus), desc="perplexity", unit="doc", disable=not progress, leave=False)
    with torch.inference_mode(), assembly_applied(host.model, host.adapter, assembly):
        for b in batches(corpus, host.tokenizer, batch_tokens=batch_tokens, max_len=max_len):
            nll = _batch_nll(host, b.input_ids, b.attention_mask)
            for lab, v, n in zip(b.labels, nll.tolist(), (b.attention_mask.sum(1) - 1).tolist(), strict=True):
                sums[lab][0] += v
                sums[lab][1] += max(n, 0)
            bar.update(len(b.labels))
    if own_bar:
        bar.close()
    return {lab: (s, n) for lab, (s, n) in sums.items()}


def label_perplexity(host, corpus: Corpus, uses: list[BrickUse] | None = None, **kw) -> dict[str, float]:
    return {lab: math.exp(s / max(n, 1)) for lab, (s, n) in label_nll(host, corpus, uses, **kw).items()}


def delta_pct(ppl: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    return {lab: 100.0 * (ppl[lab] / base[lab] - 1.0) for lab in base}


# --- random baselines --------------------------------------------------------------------------------
def random_like(brick: Brick, seed: int, d_ff: int | None = None) -> Brick:
    """Random neurons with the same count per layer (and the same gain, no offset) as `brick`."""
    d_ff = d_ff or brick.meta.host.d_ff
    gen = torch.Generator().manual_seed(seed)
    layers = {layer: torch.randperm(d_ff, generator=gen)[: s.indices.numel()] for layer, s in brick.neurons.items()}
    gain = float(next(iter(brick.neurons.values())).gain.mean()) if brick.neurons else 0.0
    return neuron_brick(f"random-{seed}", brick.meta.host, layers, gain=gain, method="random")


def own_label(brick: Brick) -> str | None:
    return brick.meta.routing.label or brick.meta.params.get("label")


# --- selectivity ---------------------------------------------------------------------------------------
@dataclass
class BrickSelectivity:
    name: str
    own: str | None
    size: int
    delta: dict[str, float]  # label -> ΔPPL% with the brick applied
    random: list[dict[str, float]] = field(default_factory=list)  # one dict per random set

    def _rand(self, label: str) -> list[float]:
        return [r[label] for r in self.random if label in r]

    def summary(self) -> dict[str, float | None]:
        if self.own is None or self.own not in self.delta:
            return {}
        own = self.delta[self.own]
        others = [v for lab, v in self.delta.items() if lab != self.own]
        other = sum(others) / len(others) if others else 0.0
        rand = self._rand(self.own)
        rand_mean = sum(rand) / len(rand) if rand else None
        return {"own": own, "mean_other": other, "max_other": max(others, default=0.0),
                "own_over_other": _ratio(own, other), "random_own": rand_mean,
                "own_over_random": _ratio(own, rand_mean) if rand_mean is not None else None}


def _ratio(a: float, b: float) -> float:
    """a / b with b floored at 0.1 percentage points: a brick that leaves others unchanged (or helps
    them) is maximally selective, not infinitely or negatively so."""
    return a / max(b, 0.1)


@dataclass
class SelectivityReport:
    labels: list[str]
    baseline: dict[str, float]  # label -> perplexity without bricks
    bricks: list[BrickSelectivity]
    tokens: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"labels": self.labels, "baseline_ppl": self.baseline, "tokens": self.tokens,
                "bricks": [{**asdict(b), "summary": b.summary()} for b in self.bricks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def selectivity_report(host, corpus: Corpus, bricks: list[Brick], random_sets: int = 5, seed: int = 0,
                       random_labels: str = "all", progress: bool = True, **kw) -> SelectivityReport:
    """ΔPPL% per label for each brick (as stored: its gain and offset) and for `random_sets` random
    same-shape sets. `random_labels="own"` scores random sets on the brick's own label only (faster)."""
    if random_labels not in ("all", "own"):
        raise InvalidInputError(f"random_labels={random_labels!r}", "use 'all' or 'own'")
    if random_sets < 0:
        raise InvalidInputError(f"{random_sets} random sets is negative", "use 0 or more (5 for a report)")
    nll = label_nll(host, corpus, progress=progress, **kw)
    base = {lab: math.exp(s / max(n, 1)) for lab, (s, n) in nll.items()}
    out = []
    for brick in bricks:
        delta = delta_pct(label_perplexity(host, corpus, [BrickUse(brick)], progress=progress, **kw), base)
        own = own_label(brick)
        rand_corpus = corpus.by_label(own) if random_labels == "own" and own in base else corpus
        rand = [delta_pct(label_perplexity(host, rand_corpus, [BrickUse(random_like(brick, seed + i))], **kw),
                          {lab: base[lab] for lab in rand_corpus.labels()}) for i in range(random_sets)]
        out.append(BrickSelectivity(brick.name, own, brick.size(), delta, rand))
    return SelectivityReport(sorted(base), base, out, {lab: n for lab, (_, n) in nll.items()})


# --- what to evaluate on --------------------------------------------------------------------------
def host_spec_for(bricks: list[Brick]) -> str:
    """The host the bricks were extracted on, as `load_host` takes it (a built-in name or a folder here)."""
    names = {b.meta.host.fingerprint: b.meta.host.name for b in bricks}
    if len(names) > 1:
        raise InvalidInputError("the bricks were built for different hosts", "evaluate bricks of one host at a time")
    name = next(iter(names.values())) or DEFAULT_HOST
    if name not in BUILTIN_HOSTS and not Path(name).is_dir():
        raise InvalidInputError(f"the bricks' host {name!r} is not a built-in host or a folder here",
                                "run from the folder holding the host model, or re-extract on a built-in host")
    return name


def evaluation_corpus(bricks: list[Brick], corpus: Corpus, tokenizer, held_out_only: bool = True) -> Corpus:
    """The text to evaluate bricks on, chunked like profiling: with `held_out_only`, only the documents the
    first brick's extraction held out (by the split it recorded), so no brick is judged on text it saw."""
    from bricks.profile import chunk_corpus

    params = bricks[0].meta.params
    if held_out_only:
        frac, seed = params.get("held_out"), params.get("split_seed", 0)
        if not frac:
            raise InvalidInputError(f"brick {bricks[0].name!r} records no held-out split",
                                    "pass --split all with evaluation data the extractor did not see")
        corpus = corpus.split(float(frac), seed=int(seed))[1]
        if not corpus:
            raise InvalidInputError("the held-out split of the data is empty", "pass more data or --split all")
    return chunk_corpus(corpus, tokenizer, int(params.get("max_len", 256)))


# --- rendering ---------------------------------------------------------------------------------------
def render_table(report: SelectivityReport):
    """A rich Table: one row per brick, ΔPPL% per label (own label bold), random mean on the own label."""
    from rich.table import Table

    t = Table(title="ΔPPL% when each brick is applied (held-out text)")
    for col in ("brick", "own", "size", *report.labels, "mean other", "random own", "own/other", "own/random"):
        t.add_column(col, justify="right" if col not in ("brick", "own") else "left")
    for b in report.bricks:
        s = b.summary()
        cells = [f"[bold]{b.delta[lab]:+.1f}[/bold]" if lab == b.own else f"{b.delta[lab]:+.1f}"
                 for lab in report.labels]
        t.add_row(b.name, b.own or "-", str(b.size), *cells, _fmt(s.get("mean_other"), "+.1f"),
                  _fmt(s.get("random_own"), "+.2f"), _fmt(s.get("own_over_other"), ".1f"),
                  _fmt(s.get("own_over_random"), ".0f"))
    return t


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def heatmap_png(report: SelectivityReport, path: str | Path) -> Path:
    """Bricks x labels ΔPPL% (symmetric log colour scale), plus each brick's random-set mean row."""
    from matplotlib.colors import SymLogNorm

    plt = pyplot()

    rows, names = [], []
    for b in report.bricks:
        rows.append([b.delta[lab] for lab in report.labels])
        names.append(f"{b.name} ({b.size})")
        if b.random:
            rows.append([_mean(b._rand(lab)) for lab in report.labels])
            names.append(f"  random x{len(b.random)}")
    data = torch.tensor(rows, dtype=torch.float64).numpy()
    top = max(100.0, float(torch.tensor(rows, dtype=torch.float64).nan_to_num(0).max()))
    fig, ax = plt.subplots(figsize=(1.1 * len(report.labels) + 3.5, 0.4 * len(rows) + 1.5))
    im = ax.imshow(data, cmap="RdBu_r", aspect="auto", norm=SymLogNorm(linthresh=1.0, vmin=-top, vmax=top))
    ax.set_xticks(range(len(report.labels)), report.labels)
    ax.set_yticks(range(len(names)), names)
    for (i, j), v in _cells(data):
        ax.text(j, i, "" if v != v else f"{v:+.0f}" if abs(v) >= 10 else f"{v:+.1f}", ha="center", va="center",
                fontsize=8)
    fig.colorbar(im, ax=ax, label="ΔPPL %")
    ax.set_title("Perplexity change per label when the brick is applied")
    fig.tight_layout()
    return save_figure(fig, path)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _cells(data):
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            yield (i, j), float(data[i, j])


# --- stability ---------------------------------------------------------------------------------------
def neuron_keys(brick: Brick) -> set[tuple[int, int]]:
    return {(layer, int(i)) for layer, s in brick.neurons.items() for i in s.indices.tolist()}


def jaccard(a: Brick, b: Brick) -> float:
    ka, kb = neuron_keys(a), neuron_keys(b)
    return len(ka & kb) / max(len(ka | kb), 1)


def stability(host, corpus: Corpus, method: str = "emergent", seed: int = 1, **options) -> dict[str, float]:
    """Extract on two disjoint halves of `corpus` (no held-out check, every candidate kept) and return
    the Jaccard overlap of the two bricks of each label."""
    from bricks.extract import get_extractor

    spec = get_extractor(method)
    half_a, half_b = corpus.halves(seed=seed)
    got = [spec.run(host, half, name="stability", held_out=0.0, force=True, **options) for half in (half_a, half_b)]
    by_label = [{own_label(b): b for b in ex.bricks} for ex in got]
    return {lab: jaccard(by_label[0][lab], by_label[1][lab]) for lab in sorted(by_label[0]) if lab in by_label[1]}
