"""Grow: new FFN neurons trained on new facts while the host stays frozen, stored as a `growth` brick.

    result = grow_facts(host, read_facts("facts.jsonl"), {"method": "tpatcher"}, "velmora",
                        data_digest=file_digest("facts.jsonl"))

Per chosen layer, every fact owns `neurons_per_fact` new neurons (gate and up rows, down columns) that are
trained through the growth kind's own reference hook, so what is trained is exactly what is served:
y = W_down x' + down_new (silu(gate_new x) * (up_new x)). Only the new tensors are parameters.

Methods, registered by name with their paper and options (`@growth_method`):

- `tpatcher` (T-Patcher, arXiv 2301.09785): the edit loss (cross-entropy of the target given the prompt,
  and given each paraphrase) plus the paper's two locality terms on unrelated text, with the gate
  pre-activation a = gate_new x in the role of the patch activation: an activation loss that pushes a
  below a threshold beta on unrelated tokens (mean softplus(a - beta)), and a memory loss that asks each
  neuron's activation on its own fact to exceed its largest activation on unrelated text by a margin
  (mean relu(max_unrelated a - a_edit + margin)).
- `lm` (plain LM loss, as CaliNet trains its added FFN slots, arXiv 2210.03329): causal-LM loss on every
  token of each fact's text, nothing about unrelated text.

SmolLM2's FFN is SiLU-gated, so a new neuron below zero is not silent as a ReLU one is: silu(-3) = -0.14,
not 0, times whatever the up row reads. That is why the report measures locality (greedy-token agreement
with the plain host on unrelated prompts, held-out perplexity change on the shipped corpora) and the
activation margin instead of assuming them.

Unrelated text (the locality terms) is the shipped corpora's *train* split plus MEMORY_PROMPTS; the report
measures on the held-out split and on LOCALITY_PROMPTS, which training never sees. Because the host is
frozen, the unrelated text's MLP inputs at the grown layers are computed once with the plain host (the
neurons are meant to be silent there, so the patched model's inputs are the same), and the residual stream
entering the first grown layer is computed once for the facts: a step runs only the decoder above it.

Neurons start keyed to their fact: neuron i of fact j reads the mean MLP input at the positions that
predict target token i (over the fact's wordings), made orthogonal to the unrelated text's mean input, so
it starts at gate activation `init_activation` on its fact and 0 on average elsewhere; down starts at 0,
so training starts from the plain host exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, field_validator
from tqdm.auto import tqdm

from bricks.apply import assembly_applied
from bricks.compose import BrickUse, assemble
from bricks.corpus import Corpus, load_corpus
from bricks.errors import InvalidInputError
from bricks.extract.options import ExtractorOptions, MethodRegistry, MethodSpec, OptionWording, comma_list
from bricks.format import Brick, BrickMeta, RoutingKeys
from bricks.kinds.growth import KIND as GROWTH
from bricks.kinds.growth import GrowthNeurons
from bricks.ops.data import Fact
from bricks.ops.train import TrainingInterrupted
from bricks.profile import chunk_corpus, decoder
from bricks.refs import check_name

FACTS_DIR = Path(__file__).resolve().parents[1] / "data" / "facts"
SHIPPED_FACTS, SHIPPED_HELDOUT = FACTS_DIR / "facts.jsonl", FACTS_DIR / "heldout.jsonl"  # 36 fictional facts
DEFAULT_LAYER_FRACTIONS = (0.6, 0.7, 0.8)  # of the depth: layers 18, 21, 24 of SmolLM2's 30 (measured)
ROUTING_CAP = 256  # a grown brick's routing keys: its facts' prompts and paraphrases, at most this many
HELDOUT_SPLIT = (0.2, 0)  # the shipped corpora's held-out fraction and seed (the extractors' default split)

# Unrelated prompts in the facts' own templates (real things the host knows) and generic text. Training
# keeps the new neurons quiet on MEMORY_PROMPTS; the report measures on LOCALITY_PROMPTS, never trained on.
MEMORY_PROMPTS = [
    "The capital of France is", "The Eiffel Tower is located in", "The telephone was invented by",
    "The largest ocean on Earth is the", "The river that flows through London is the",
    "Romeo and Juliet was written by", "The currency of Japan is the", "The tallest mountain in the world is Mount",
    "The chemical symbol for gold is", "The first person to walk on the moon was", "The Mona Lisa was painted by",
    "The main language spoken in Brazil is", "The planet closest to the Sun is", "Water is made of hydrogen and",
    "The Great Wall is in", "The national animal of Australia is the", "A baker makes bread in an",
    "My favourite season of the year is", "Yesterday I went to the market and bought", "def fibonacci(n):",
    "La capitale de l'Allemagne est", "Die Hauptstadt von Italien ist", "The derivative of x squared is",
    "The founder of Microsoft is", "The symphony known as the Ninth was composed by",
]
LOCALITY_PROMPTS = [
    "The capital of Spain is", "The light bulb is usually credited to", "The longest river in Africa is the",
    "Pride and Prejudice was written by", "The currency of the United Kingdom is the",
    "The largest desert in the world is the", "The Statue of Liberty stands in",
    "The theory of relativity was developed by", "The fastest land animal is the",
    "The ceiling of the Sistine Chapel was painted by", "People in Mexico mostly speak",
    "The largest planet in our solar system is", "The boiling point of water is",
    "The headquarters of the United Nations are in", "The national flower of Japan is the",
    "The first president of the United States was", "A doctor works in a", "In the morning I like to drink",
    "The best way to learn to swim is", "for i in range(10):", "La tour Eiffel se trouve à",
    "Der längste Fluss Deutschlands ist der", "The square root of sixteen is", "The founder of Apple was",
]


# --- options -----------------------------------------------------------------------------------------------
class GrowOptions(ExtractorOptions):
    """What every growth method shares (`brick grow --opt KEY=VALUE`, or the named flags)."""

    method: str = Field("tpatcher", description="Growth method (tpatcher, lm).")
    layers: list[int] | None = Field(None, description="Layers that get new neurons (default: at 60%, 70% and "
                                     "80% of the depth: 18,21,24 on a 30-layer host).")
    neurons_per_fact: int = Field(4, ge=1, le=64, description="New neurons per fact in each chosen layer.")
    steps: int = Field(150, ge=1, le=100_000, description="Optimizer steps (Adam, all facts every step; on "
                       "SmolLM2 the edit loss is ~0 by step 25; the rest tightens locality: en held-out "
                       "perplexity +1.25% at 100 steps, +0.76% at 150).")
    lr: float = Field(1e-2, gt=0, le=1.0, description="Adam learning rate (constant).")
    seed: int = Field(0, ge=0, description="Seed of the neurons' initial noise and the unrelated-token sample.")
    train_paraphrases: bool = Field(True, description="Train on each fact's paraphrases too (false: only on "
                                    "its prompt, the paraphrases then measure generality).")
    init_activation: float = Field(3.0, gt=0, le=50, description="Gate activation a neuron starts with on its "
                                   "fact.")
    init_unrelated: float = Field(-4.0, ge=-50, le=0, description="Gate activation a neuron starts with on "
                                  "the mean unrelated token.")
    init_noise: float = Field(0.1, ge=0, le=1, description="Relative noise on the initial rows, so a fact's "
                              "neurons differ.")
    memory_docs: int = Field(8, ge=0, le=10_000, description="Unrelated documents per corpus label (the shipped "
                             "corpora's train split) the locality terms read, cut to 128 tokens.")
    memory_tokens: int = Field(2048, ge=16, le=1_000_000, description="Unrelated tokens sampled per step.")
    eval_docs: int = Field(8, ge=1, le=10_000, description="Held-out documents per corpus label the report "
                           "measures locality on (perplexity change, activation margin, token agreement).")

    @field_validator("layers", mode="before")
    @classmethod
    def _split_layers(cls, v: Any) -> Any:
        return comma_list(v)

    @field_validator("layers")
    @classmethod
    def _distinct(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("give at least one layer")
        return sorted(set(v))


class TPatcherOptions(GrowOptions):
    method: Literal["tpatcher"] = Field("tpatcher", description="T-Patcher: edit + activation + memory losses.")
    activation_weight: float = Field(1.0, ge=0, le=1000, description="Weight of the activation loss "
                                     "(gate activation below `threshold` on unrelated text).")
    memory_weight: float = Field(1.0, ge=0, le=1000, description="Weight of the memory loss (activation on "
                                 "the fact above the largest unrelated one by `margin`).")
    threshold: float = Field(-3.0, ge=-100, le=100, description="beta: the gate activation unrelated tokens "
                             "are pushed below (silu(-3) = -0.14).")
    margin: float = Field(4.0, ge=0, le=100, description="gamma: how far a neuron's activation on its fact "
                          "must exceed its largest one on unrelated text.")


class LmOptions(GrowOptions):
    method: Literal["lm"] = Field("lm", description="Plain causal-LM loss on the facts' text.")


# --- the registry ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GrowthMethod(MethodSpec):
    """A registered growth method: `fn(step, options) -> {name: weighted loss}`, summed, then minimised."""

    wording: ClassVar[OptionWording] = OptionWording(unknown="growth method {name} has no option {key!r}{suggestion}",
                                                     invalid="grow {name} option {key}={value!r}: {reason}")

    def parse(self, raw: dict[str, Any] | BaseModel | None = None) -> GrowOptions:
        """The method's options (its `method` is this one); every problem is one `InvalidInputError`."""
        if not isinstance(raw, self.options):
            values = raw.model_dump() if isinstance(raw, BaseModel) else dict(raw or {})
            raw = {**values, "method": self.name}
        return super().parse(raw)


GROWTH_METHODS = MethodRegistry("growth method", GrowthMethod)


def growth_method(name: str, reference_url: str, options: type[GrowOptions]) -> Callable:
    """Register a loss `fn(step, options) -> {name: weighted loss}` (summed, then minimised) under `name`."""
    return GROWTH_METHODS.register(name, reference_url, options)


def get_growth_method(name: str) -> GrowthMethod:
    return GROWTH_METHODS.lookup(name)


def grow_options(raw: dict[str, Any] | GrowOptions | None) -> GrowOptions:
    """The options of the method `raw` names (default tpatcher), validated."""
    if isinstance(raw, GrowOptions):
        return get_growth_method(raw.method).parse(raw)
    raw = dict(raw or {})
    return get_growth_method(str(raw.pop("method", "tpatcher"))).parse(raw)


# --- the facts as token sequences --------------------------------------------------------------------------
@dataclass
class FactSequences:
    """Each wording of each fact followed by its target, right-padded (causal attention never looks right,
    so padding needs no mask). Position t predicts token t + 1."""

    ids: torch.Tensor  # [B, T]
    target: torch.Tensor  # [B, T] bool: position t predicts a target token
    text: torch.Tensor  # [B, T] bool: position t predicts a token of the wording or the target
    target_index: torch.Tensor  # [B, T] which target token position t predicts (-1: none)
    fact: torch.Tensor  # [B] the fact each row states

    def labels(self) -> torch.Tensor:
        return torch.cat([self.ids[:, 1:], self.ids[:, -1:]], dim=1)


def wordings(fact: Fact, paraphrases: bool) -> list[str]:
    return [fact.prompt, *fact.paraphrases] if paraphrases else [fact.prompt]


def encode_facts(tokenizer, facts: list[Fact], paraphrases: bool) -> FactSequences:
    rows: list[tuple[list[int], int, int]] = []  # (ids, prompt length, fact)
    for j, fact in enumerate(facts):
        target = tokenizer(fact.target, add_special_tokens=False)["input_ids"]
        for text in wordings(fact, paraphrases):
            prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
            rows.append((prompt + target, len(prompt), j))
    width = max(len(ids) for ids, _, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    target_index = torch.full((len(rows), width), -1, dtype=torch.long)
    text = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, (seq, n_prompt, _) in enumerate(rows):
        ids[r, : len(seq)] = torch.tensor(seq)
        target_index[r, n_prompt - 1: len(seq) - 1] = torch.arange(len(seq) - n_prompt)
        text[r, : len(seq) - 1] = True
    return FactSequences(ids, target_index >= 0, text, target_index, torch.tensor([j for _, _, j in rows]))


# --- running the frozen host in parts ----------------------------------------------------------------------
class _Stop(Exception):
    """Raised by a hook once everything needed from a forward pass is captured."""


def residual_at(host, layer: int, ids: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """[B, T, d] residual stream entering decoder layer `layer` (no grad; the layers above never run)."""
    out = []

    def grab(module, args, kwargs):
        out.append((args[0] if args else kwargs["hidden_states"]).detach())
        raise _Stop

    handle = decoder(host.model).layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            for i in range(0, ids.shape[0], batch):
                try:
                    decoder(host.model)(input_ids=ids[i: i + batch], use_cache=False)
                except _Stop:
                    pass
    finally:
        handle.remove()
    return torch.cat(out)


def run_from(host, layer: int, hidden: torch.Tensor) -> torch.Tensor:
    """The decoder from layer `layer` up, given the residual stream entering it: its final normed hidden
    states. transformers' LlamaModel.forward (read from 5.19) runs `self.layers[:num_hidden_layers]` on
    `inputs_embeds` with its own causal mask and rotary positions, so the top of the decoder runs there as a
    shorter ModuleList (restored afterwards); a test checks it equals the whole forward."""
    dec = decoder(host.model)
    full = dec.layers
    dec.layers = torch.nn.ModuleList(list(full)[layer:])
    try:
        return dec(inputs_embeds=hidden, use_cache=False).last_hidden_state
    finally:
        dec.layers = full


def mlp_inputs(host, layers: list[int], texts: list[str], max_len: int = 128,
               uses: list[BrickUse] | None = None) -> dict[int, torch.Tensor]:
    """{layer: [N, d]} MLP inputs on every real token of `texts` (with `uses` applied), no grad."""
    tok = host.tokenizer
    seqs = [ids[:max_len] for ids in tok(texts, add_special_tokens=False)["input_ids"] if ids]
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    assembly = assemble(host.ref, list(uses or []))
    for i in range(0, len(seqs), 16):
        chunk = seqs[i: i + 16]
        ids = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for r, s in enumerate(chunk):
            ids[r, : len(s)], mask[r, : len(s)] = torch.tensor(s), True
        for layer, x in _captured(host, layers, ids, assembly).items():
            out[layer].append(x[mask])
    return {layer: torch.cat(xs) for layer, xs in out.items()}


def _captured(host, layers: list[int], ids: torch.Tensor, assembly) -> dict[int, torch.Tensor]:
    """{layer: [B, T, d]} MLP inputs of one right-padded batch; the forward stops after the last layer."""
    got: dict[int, torch.Tensor] = {}
    last = max(layers)

    def grab(layer):
        def hook(module, args):
            got[layer] = args[0].detach()
            if layer == last:
                raise _Stop

        return hook

    handles = [host.adapter.mlp(host.model, layer).register_forward_pre_hook(grab(layer)) for layer in layers]
    try:
        with torch.no_grad(), assembly_applied(host.model, host.adapter, assembly):
            decoder(host.model)(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return got


def unrelated_texts(split: Literal["train", "heldout"], docs_per_label: int) -> Corpus:
    """The shipped corpora's train or held-out documents (the extractors' split), `docs_per_label` each."""
    train, held = load_corpus("builtin").split(*HELDOUT_SPLIT)
    part = train if split == "train" else held
    return Corpus(d for lab in part.labels() for d in part.by_label(lab)[:docs_per_label])


# --- one training step -------------------------------------------------------------------------------------
@dataclass
class GrowStep:
    """What a method's loss sees at one step: the facts' batch with the new neurons active, and the
    unrelated tokens' MLP inputs."""

    seqs: FactSequences
    hidden: torch.Tensor  # [B, T, d] final normed hidden states
    head: torch.nn.Module  # the LM head
    inputs: dict[int, torch.Tensor]  # layer -> [B, T, d] MLP input, new neurons of lower layers active
    memory: dict[int, torch.Tensor]  # layer -> [M, d] MLP input on unrelated tokens (plain host)
    neurons: dict[int, GrowthNeurons]  # the trainable neurons
    owner: torch.Tensor  # [k] fact of each neuron (the same in every layer)

    def nll(self, where: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy at the positions `where` ([B, T] bool)."""
        logits = self.head(self.hidden[where]).float()
        return F.cross_entropy(logits, self.seqs.labels()[where])

    def edit_activation(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """([k] gate activation of each neuron on its own fact: per wording the largest over the positions
        that predict the target, averaged over the fact's wordings; [k] bool: its fact is in the batch)."""
        a = self.inputs[layer] @ self.neurons[layer].gate.T  # [B, T, k]
        a = a.masked_fill(~self.seqs.target[..., None], float("-inf")).amax(dim=1)  # [B, k]
        own = (self.seqs.fact[:, None] == self.owner[None, :]).float()  # [B, k]
        count = own.sum(0)
        return (a.nan_to_num(neginf=0.0) * own).sum(0) / count.clamp(min=1), count > 0

    def memory_activation(self, layer: int) -> torch.Tensor:
        """[M, k] gate activation of each neuron on the unrelated tokens."""
        return self.memory[layer] @ self.neurons[layer].gate.T


@growth_method("tpatcher", reference_url="https://arxiv.org/abs/2301.09785", options=TPatcherOptions)
def tpatcher_loss(step: GrowStep, opts: TPatcherOptions) -> dict[str, torch.Tensor]:
    """T-Patcher: edit loss on the targets, activation and memory losses keep the neurons quiet elsewhere."""
    activation, memory = [], []
    for layer in step.neurons:
        mem = step.memory_activation(layer)
        activation.append(F.softplus(mem - opts.threshold).mean())
        edit, present = step.edit_activation(layer)
        memory.append(F.relu(mem.amax(dim=0) - edit + opts.margin)[present].mean())
    return {"edit": step.nll(step.seqs.target),
            "activation": opts.activation_weight * torch.stack(activation).mean(),
            "memory": opts.memory_weight * torch.stack(memory).mean()}


@growth_method("lm", reference_url="https://arxiv.org/abs/2210.03329", options=LmOptions)
def lm_loss(step: GrowStep, opts: LmOptions) -> dict[str, torch.Tensor]:
    """Plain causal-LM loss on every token of the facts' text (CaliNet-style added FFN slots)."""
    return {"lm": step.nll(step.seqs.text)}


# --- growing -----------------------------------------------------------------------------------------------
@dataclass
class GrowResult:
    brick: Brick
    report: dict[str, Any]


def default_layers(n_layers: int) -> list[int]:
    return sorted({min(n_layers - 1, round(f * n_layers)) for f in DEFAULT_LAYER_FRACTIONS})


def check_facts(facts: list[Fact]) -> None:
    """Refuse what cannot be grown: no facts, or one wording given two different targets."""
    if not facts:
        raise InvalidInputError("there are no facts to grow", 'give a facts file with one {"prompt": ..., '
                                '"target": ..., "paraphrases": [...]} object per line')
    seen: dict[str, str] = {}
    for fact in facts:
        for text in wordings(fact, True):
            if seen.setdefault(text, fact.target) != fact.target:
                raise InvalidInputError(f"the wording {text!r} is given two targets, {seen[text]!r} and "
                                        f"{fact.target!r}", "keep one fact per wording")


def grow_facts(host, facts: list[Fact], options: dict | GrowOptions | None, name: str, *, data_digest: str,
               heldout: list[Fact] | None = None, description: str = "", progress: bool = True) -> GrowResult:
    """A `growth` brick holding new neurons trained on `facts`, and its report (also its metrics).
    `heldout`: other wordings of the same facts, never trained on, that the report measures generality on.
    Nothing is written anywhere; Ctrl-C raises TrainingInterrupted."""
    opts = grow_options(options)
    spec = get_growth_method(opts.method)
    check_name(name)
    check_facts(facts)
    layers = opts.layers or default_layers(host.n_layers)
    bad = [layer for layer in layers if not 0 <= layer < host.n_layers]
    if bad:
        raise InvalidInputError(f"layer {bad[0]} does not exist (the host has {host.n_layers} layers)",
                                f"use layers between 0 and {host.n_layers - 1}")
    opts = opts.model_copy(update={"layers": layers})
    show = progress and opts.progress
    seqs = encode_facts(host.tokenizer, facts, opts.train_paraphrases)
    memory_texts = [d.text for d in unrelated_texts("train", opts.memory_docs)] + MEMORY_PROMPTS
    memory = mlp_inputs(host, layers, memory_texts)
    neurons = init_neurons(host, layers, seqs, len(facts), memory, opts)
    fit = fit_neurons(host, spec, neurons, seqs, memory, opts, show)
    parts = {layer: GrowthNeurons(g.gate.detach().clone(), g.up.detach().clone(), g.down.detach().clone())
             for layer, g in neurons.items()}
    keys = [text for fact in facts for text in wordings(fact, True)][:ROUTING_CAP]
    meta = BrickMeta(name=name, kind="growth", host=host.ref, method=f"grow-{spec.name}",
                     params={**opts.params(), "data_digest": data_digest, "n_facts": len(facts)},
                     routing=RoutingKeys(texts=keys),
                     description=description or f"{len(facts)} facts grown with {spec.name}")
    brick = Brick(meta, parts)
    brick.validate(host.ref)
    report = {**grow_report(host, brick, facts, seqs, heldout, opts, progress=show), **fit}
    brick.meta.metrics = report
    return GrowResult(brick, report)


def init_neurons(host, layers: list[int], seqs: FactSequences, n_facts: int, memory: dict[int, torch.Tensor],
                 opts: GrowOptions) -> dict[int, GrowthNeurons]:
    """Neuron i of fact j keyed to x_ij, the mean MLP input at the positions predicting target token i
    (cycled over the target's tokens, averaged over the fact's wordings): its gate reads `init_activation`
    at x_ij and `init_unrelated` at the unrelated tokens' mean input mu (the shared component of
    RMS-normed inputs serves as the bias the growth format does not have); up reads 1 at x_ij and 0 at mu;
    down is 0, so training starts from the plain host exactly."""
    gen = torch.Generator().manual_seed(opts.seed)
    npf = opts.neurons_per_fact
    inputs = _captured(host, layers, seqs.ids, assemble(host.ref, []))
    out = {}
    for layer in layers:
        x, mu = inputs[layer].float(), memory[layer].float().mean(0)
        mu_dir = mu / (mu @ mu).clamp(min=1e-6)  # reads 1 at mu
        gates, ups = [], []
        for j in range(n_facts):
            mine = seqs.fact == j
            n_target = int(seqs.target_index[mine].max()) + 1
            for i in range(npf):
                key = x[mine[:, None] & (seqs.target_index == i % n_target)].mean(0)
                d = key - mu
                d = d - (d @ mu) * mu_dir  # orthogonal to mu
                d = d / (d @ d).clamp(min=1e-6)  # reads 1 at key - mu, 0 at mu
                on_mu = float(key @ mu_dir)  # what mu_dir reads at the key
                gates.append((opts.init_activation - opts.init_unrelated * on_mu) * d + opts.init_unrelated * mu_dir)
                ups.append(d)
        gate, up = torch.stack(gates), torch.stack(ups)
        noise = torch.randn(gate.shape, generator=gen) / math.sqrt(gate.shape[1])
        gate = gate + opts.init_noise * gate.norm(dim=1, keepdim=True) * noise
        down = torch.zeros(host.ref.d_model, gate.shape[0])
        out[layer] = GrowthNeurons(*(torch.nn.Parameter(t) for t in (gate, up, down)))
    return out


def fit_neurons(host, spec: GrowthMethod, neurons: dict[int, GrowthNeurons], seqs: FactSequences,
                memory: dict[int, torch.Tensor], opts: GrowOptions, progress: bool) -> dict[str, Any]:
    """Adam on the new neurons only; the host's own weights get no gradient."""
    layers = sorted(neurons)
    params = [p for g in neurons.values() for p in (g.gate, g.up, g.down)]
    optimizer = torch.optim.Adam(params, lr=opts.lr)
    gen = torch.Generator().manual_seed(opts.seed)
    owner = torch.arange(next(iter(neurons.values())).gate.shape[0]) // opts.neurons_per_fact
    cached = residual_at(host, layers[0], seqs.ids)
    captured: dict[int, torch.Tensor] = {}

    def grab(layer):
        def hook(module, args):
            captured[layer] = args[0]

        return hook

    mlps = [host.adapter.mlp(host.model, layer) for layer in layers]
    handles = [m.register_forward_pre_hook(grab(layer)) for m, layer in zip(mlps, layers, strict=True)]
    handles += GROWTH.hooks(host.model, host.adapter, {layer: [g] for layer, g in neurons.items()})
    frozen = [p for p in host.model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    bar = tqdm(total=opts.steps, desc=f"growing ({spec.name})", unit="step", disable=not progress)
    try:
        for _ in range(opts.steps):
            n_mem = next(iter(memory.values())).shape[0]
            pick = torch.randint(n_mem, (min(opts.memory_tokens, n_mem),), generator=gen)
            hidden = run_from(host, layers[0], cached)
            ctx = GrowStep(seqs, hidden, host.model.get_output_embeddings(), dict(captured),
                           {layer: m[pick] for layer, m in memory.items()}, neurons, owner)
            losses = spec.fn(ctx, opts)
            total = torch.stack(list(losses.values())).sum()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            history.append({k: float(v.detach()) for k, v in losses.items()})
            bar.set_postfix({k: f"{v:.3f}" for k, v in history[-1].items()})
            bar.update(1)
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"growing was interrupted at step {len(history)} of {opts.steps}; "
                                  "nothing was published",
                                  "run the command again (growing starts over; it takes minutes)") from None
    finally:
        bar.close()
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(True)
    seconds = time.perf_counter() - started
    last = history[-10:]
    return {"steps": len(history), "train_seconds": round(seconds, 2),
            "loss_first": {k: round(v, 4) for k, v in history[0].items()},
            "loss_last": {k: round(sum(h[k] for h in last) / len(last), 4) for k in history[0]}}


# --- the report --------------------------------------------------------------------------------------------
def complete(host, prompts: list[str], max_new_tokens: int, uses: list[BrickUse] | None = None,
             batch_size: int = 32) -> list[list[int]]:
    """Greedy continuations (token ids) of raw text prompts, with `uses` applied."""
    tok = host.tokenizer
    out: list[list[int]] = []
    side, tok.padding_side = tok.padding_side, "left"
    assembly = assemble(host.ref, list(uses or []))
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tok(prompts[i: i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode(), assembly_applied(host.model, host.adapter, assembly):
                gen = host.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=tok.pad_token_id)
            out += gen[:, enc.input_ids.shape[1]:].tolist()
    finally:
        tok.padding_side = side
    return out


def recall(host, prompts: list[str], targets: list[str], uses: list[BrickUse]) -> list[bool]:
    """Whether the greedy continuation of each prompt starts with its target (leading spaces aside)."""
    if not prompts:
        return []
    tok = host.tokenizer
    n = max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in targets) + 1
    got = [tok.decode(ids, skip_special_tokens=True) for ids in complete(host, prompts, n, uses)]
    return [g.lstrip().startswith(t.strip()) for g, t in zip(got, targets, strict=True)]


def token_agreement(host, prompts: list[str], uses: list[BrickUse], new_tokens: int = 16) -> float:
    """EasyEdit's locality: the plain host's greedy continuation, teacher-forced with the brick applied;
    the share of those tokens the patched model's argmax also predicts."""
    tok = host.tokenizer
    plain = complete(host, prompts, new_tokens)
    assembly = assemble(host.ref, uses)
    same = total = 0
    for prompt, cont in zip(prompts, plain, strict=True):
        cont = [t for t in cont if t != tok.pad_token_id] or cont[:1]
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        seq = torch.tensor([ids + cont])
        with torch.inference_mode(), assembly_applied(host.model, host.adapter, assembly):
            logits = host.model(input_ids=seq).logits[0, len(ids) - 1: -1]
        same += int((logits.argmax(-1) == torch.tensor(cont)).sum())
        total += len(cont)
    return same / max(total, 1)


def perplexity_change(host, corpus: Corpus, uses: list[BrickUse]) -> dict[str, Any]:
    from bricks.evaluate import label_nll

    base, grown = label_nll(host, corpus), label_nll(host, corpus, uses)
    per_label = {lab: 100 * (math.exp(grown[lab][0] / max(n, 1)) / math.exp(s / max(n, 1)) - 1)
                 for lab, (s, n) in base.items()}
    tokens = sum(n for _, n in base.values())
    pooled = 100 * (math.exp((sum(s for s, _ in grown.values()) - sum(s for s, _ in base.values())) / tokens) - 1)
    return {"heldout_ppl_delta_pct": round(pooled, 4),
            "heldout_ppl_delta_pct_by_label": {lab: round(v, 4) for lab, v in per_label.items()},
            "heldout_ppl_delta_pct_max_abs": round(max(abs(v) for v in per_label.values()), 4),
            "heldout_tokens": tokens}


def activation_margin(host, brick: Brick, seqs: FactSequences, unrelated: list[str],
                      npf: int) -> dict[str, Any]:
    """Each new neuron's gate activation on its own fact (as trained: the largest over the target positions,
    averaged over wordings) against its largest on unrelated held-out text; and how big the neurons'
    output coefficient silu(gate x) * (up x) is there, relative to on the facts."""
    layers = brick.layers()
    uses = [BrickUse(brick)]
    on_facts = _captured(host, layers, seqs.ids, assemble(host.ref, uses))
    elsewhere = mlp_inputs(host, layers, unrelated, max_len=256, uses=uses)
    margins, edit_means, max_unrelated, ratios = [], [], [], []
    for layer, g in brick.growth.items():
        owner = torch.arange(g.gate.shape[0]) // npf
        step = GrowStep(seqs, on_facts[layer], torch.nn.Identity(), on_facts, {layer: elsewhere[layer]},
                        {layer: g}, owner)
        edit, _ = step.edit_activation(layer)
        mem = step.memory_activation(layer)
        margins.append(edit - mem.amax(0))
        edit_means.append(edit)
        max_unrelated.append(mem.amax(0))
        x_f = on_facts[layer][seqs.target]
        coef_f = (F.silu(x_f @ g.gate.T) * (x_f @ g.up.T)).abs().mean()
        coef_u = (F.silu(mem) * (elsewhere[layer] @ g.up.T)).abs().mean()
        ratios.append(float(coef_u / coef_f.clamp(min=1e-12)))
    m = torch.cat(margins)
    return {"activation_edit_mean": round(float(torch.cat(edit_means).mean()), 3),
            "activation_unrelated_max_mean": round(float(torch.cat(max_unrelated).mean()), 3),
            "activation_margin_median": round(float(m.median()), 3),
            "activation_margin_min": round(float(m.min()), 3),
            "activation_margin_positive": round(float((m > 0).float().mean()), 4),
            "output_coefficient_ratio": round(sum(ratios) / len(ratios), 5),
            "unrelated_tokens": int(next(iter(elsewhere.values())).shape[0])}


def grow_report(host, brick: Brick, facts: list[Fact], seqs: FactSequences, heldout: list[Fact] | None,
                opts: GrowOptions, progress: bool = False) -> dict[str, Any]:
    """EasyEdit-style: reliability, generality, locality, and the new neurons' activation margin.
    `seqs`: the facts as training encoded them (the margin is measured at the positions it trained)."""
    uses = [BrickUse(brick)]
    bar = tqdm(total=5, desc="measuring", unit="part", disable=not progress, leave=False)
    out: dict[str, Any] = {"n_facts": len(facts), "neurons": brick.size(), "neurons_per_layer": brick.per_layer(),
                           "layers": brick.layers()}
    hits = recall(host, [f.prompt for f in facts], [f.target for f in facts], uses)
    out["reliability"] = _share(hits)
    out["reliability_plain_host"] = _share(recall(host, [f.prompt for f in facts], [f.target for f in facts], []))
    out["missed"] = [f.prompt for f, ok in zip(facts, hits, strict=True) if not ok][:10]
    bar.update(1)
    pairs = [(p, f.target) for f in facts for p in f.paraphrases]
    key = "generality_paraphrases_trained" if opts.train_paraphrases else "generality_paraphrases"
    out[key] = _share(recall(host, [p for p, _ in pairs], [t for _, t in pairs], uses)) if pairs else None
    if heldout:
        held = [(p, f.target) for f in heldout for p in wordings(f, True)]
        out["generality_heldout"] = _share(recall(host, [p for p, _ in held], [t for _, t in held], uses))
        out["n_heldout_wordings"] = len(held)
    bar.update(1)
    held_docs = unrelated_texts("heldout", opts.eval_docs)
    prefixes = [host.tokenizer.decode(host.tokenizer(d.text, add_special_tokens=False)["input_ids"][:24])
                for d in held_docs]
    out["locality_token_agreement"] = round(token_agreement(host, LOCALITY_PROMPTS + prefixes, uses), 4)
    bar.update(1)
    corpus = chunk_corpus(held_docs, host.tokenizer, 256)
    out.update(perplexity_change(host, corpus, uses))
    bar.update(1)
    out.update(activation_margin(host, brick, seqs, [d.text for d in corpus], opts.neurons_per_fact))
    bar.update(1)
    bar.close()
    return out


def _share(flags: list[bool]) -> float:
    return round(sum(flags) / max(len(flags), 1), 4)
