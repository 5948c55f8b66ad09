"""Steering variants of label bricks, and how to measure them on generations.

A label brick stores its neurons' mean h on every label (`NeuronSet.label_means`), so it can be turned
into a steering brick:
- form ``diff``: gain 1, offset k * (mean on target - mean on the dominant language);
- form ``mean``: gain 0, offset k * mean on target (the neurons are clamped to a scaled target mean).
`steering_variant` builds either, optionally on a subset of layers. `steered(host, bricks, positions)`
applies a variant at every position, at generated tokens only, or only while the prompt is read; a
`Setting` may use one variant for the prompt and another for generated tokens ("staged").

`steer_sweep` measures settings on greedy replies to dominant-language prompts: the share of
target-language words (`language_shares`), repetition (`repetition`), known words (`known_word_rate`),
fluency (the unmodified host's perplexity of the replies) and the dominant language's perplexity under
the generation-time and the prompt-time variant.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass

import torch

from bricks.apply import neuron_map_applied
from bricks.compose import BrickUse, assemble
from bricks.corpus import Corpus
from bricks.errors import InvalidInputError
from bricks.evaluate import label_perplexity
from bricks.format import Brick, NeuronSet

FORMS = ("diff", "mean")
POSITIONS = ("all", "generated", "prompt")

# Frequent function words; a word in two lists is dropped from both (see _EXCLUSIVE), so every listed
# word votes for one language only.
_WORDS = {
    "en": """the of and to in is was that for it with as his on be at by this had not are but from or have an
        they which one you were her all she there would their we him been has when who will more no if out so
        said what up its about into than them can only other new some could time these two may then do first
        any my now such like our over man me even most made after also did many before must through back
        years where much your way well down should because each just those people how too little state good
        very make world still own see men work long get here between both life being under never day same
        another know while last might us great old year off come since against go came right used take three
        i it's don't think want there's what's he she we they them your yours being does doesn't isn't
        a son car i'm you're that's let's""",
    "fr": """le la les de des du un une et est en que qui dans pour pas sur au aux avec ce cette ces il elle
        ils elles nous vous je tu on ne se sa son ses leur leurs mais ou où donc car plus par été être avoir
        fait faire comme tout tous toute toutes aussi bien très peu sans sous entre après avant depuis chez
        encore alors déjà ici là y a ont sont était étaient sera peut doit faut quand comment pourquoi parce
        lui eux moi toi mon ma mes ton ta tes notre nos votre vos quel quelle quels quelles dont ceci cela
        ça c'est d'un d'une l'on qu'il jour temps monde chose fois deux trois beaucoup toujours jamais rien
        personne autre autres même mêmes ainsi puis enfin non oui avait avons avez suis es sommes êtes""",
    "de": """der die das und ist nicht ein eine einen einem einer eines zu den dem des mit sich auf für von
        im ins am auch es sie er wir ihr ich du man wird werden wurde wurden sind war waren hat haben hatte
        hatten kann können muss müssen soll sollen noch nur schon sehr mehr wie wo wann warum weil dass wenn
        aber oder doch dann denn also bei nach aus über unter vor zwischen durch gegen ohne um bis seit
        dieser diese dieses jeder jede jedes kein keine keinen mein meine sein seine ihre unser unsere euer
        was wer welche welcher hier dort heute immer wieder nichts etwas alle alles viel viele zwei drei
        jahr jahre zeit tag mann frau kind haus welt leben ja nein gibt gut neue neuen großen""",
}
_ACCENTS = {"fr": set("éèêëàâçîïôûùœ"), "de": set("äöüß")}
_WORD_RE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


def _exclusive() -> dict[str, set[str]]:
    sets = {lang: set(words.split()) for lang, words in _WORDS.items()}
    return {lang: s - set().union(*(o for other, o in sets.items() if other != lang)) for lang, s in sets.items()}


_EXCLUSIVE = _exclusive()


def word_language(word: str) -> str | None:
    """The language a word votes for: a listed function word, else a language-specific letter."""
    w = word.lower()
    for lang, words in _EXCLUSIVE.items():
        if w in words:
            return lang
    for lang, letters in _ACCENTS.items():
        if any(ch in letters for ch in w):
            return lang
    return None


def language_shares(text: str) -> dict[str, float]:
    """Share of each language among a text's identifiable words, plus `coverage` (identified / all
    words). A content word such as "table" identifies nothing; function words make up ~40% of
    running text in all three languages, enough to tell them apart on a sentence."""
    words = _WORD_RE.findall(text)
    votes = [lang for lang in map(word_language, words) if lang is not None]
    shares = {lang: (votes.count(lang) / len(votes) if votes else 0.0) for lang in _WORDS}
    shares["coverage"] = len(votes) / len(words) if words else 0.0
    return shares


def word_vocab(corpus: Corpus) -> set[str]:
    """Every word of a corpus, lowercased: a dictionary for `known_word_rate`."""
    return {w.lower() for d in corpus for w in _WORD_RE.findall(d.text)}


def known_word_rate(text: str, vocab: set[str]) -> float:
    """Share of a text's words found in `vocab`: broken output ("toujouté", "onleur") scores low where
    the language share alone cannot tell it from real French. A small vocabulary misses rare real
    words too, so compare settings with each other and with the unsteered row, not with 1."""
    words = [w.lower() for w in _WORD_RE.findall(text)]
    return sum(w in vocab for w in words) / len(words) if words else 0.0


def repetition(text: str, n: int = 3) -> float:
    """Repeated n-gram rate over words: 1 - distinct/total n-grams (0 = no repeats, ~1 = one loop)."""
    words = text.lower().split()
    grams = [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


# --- steering bricks ---------------------------------------------------------------------------------------
def steering_variant(brick: Brick, target: str, form: str = "diff", k: float = 1.0, dominant: str = "en",
                     layers: list[int] | None = None) -> Brick:
    """A copy of a label brick that steers toward `target` (see the module docstring)."""
    if form not in FORMS:
        raise InvalidInputError(f"unknown steering form {form!r}", f"use one of: {', '.join(FORMS)}")
    labels = brick.meta.labels
    for lab in (target, dominant):
        if lab not in labels:
            raise InvalidInputError(f"brick {brick.name!r} has no mean activations for label {lab!r} "
                                    f"(it has: {', '.join(labels) or 'none'})",
                                    "steer toward a label the brick was extracted with")
    t, d = labels.index(target), labels.index(dominant)
    sets = {}
    for layer, s in brick.neurons.items():
        if layers is not None and layer not in layers:
            continue
        if s.label_means is None:
            raise InvalidInputError(f"brick {brick.name!r} stores no label means in layer {layer}",
                                    "re-extract it with `brick extract emergent`")
        m = s.label_means
        offset = k * (m[t] - m[d]) if form == "diff" else k * m[t]
        gain = torch.full_like(offset, 1.0 if form == "diff" else 0.0)
        sets[layer] = NeuronSet(s.indices.clone(), gain, offset.float(), s.label_means.clone())
    if not sets:
        raise InvalidInputError(f"brick {brick.name!r} touches none of layers {layers}", "pick layers it touches")
    meta = brick.meta.model_copy(deep=True)
    meta.name = f"{brick.name}-steer-{target}"[:64]
    meta.params = {**meta.params, "steering": {"target": target, "form": form, "k": k, "dominant": dominant,
                                               "layers": sorted(sets)}}
    out = Brick(meta, sets)
    out.validate()
    return out


# --- applying at chosen positions ----------------------------------------------------------------------------
@contextmanager
def steered(host, bricks: list[Brick], positions: str = "all") -> Iterator[None]:
    """Apply bricks (composed as an assembly) at every position; only at generated positions (forward
    passes of one new token per row: the decode steps of `generate`); or only while the prompt is read
    (the prefill), so that generation itself runs on the unmodified model in a context that now reads
    as the target language."""
    if positions not in POSITIONS:
        raise InvalidInputError(f"unknown positions {positions!r}", f"use one of: {', '.join(POSITIONS)}")
    nmap = assemble(host.ref, [BrickUse(b) for b in bricks]).neuron_map
    if positions == "all":
        with neuron_map_applied(host.model, host.adapter, nmap):
            yield
        return
    handles = []
    try:
        for layer in nmap.touched_layers():
            handles.append(host.adapter.down_proj(host.model, layer).register_forward_pre_hook(
                _positions_hook(nmap.gain[layer], nmap.offset[layer], decode=positions == "generated")))
        yield
    finally:
        for h in handles:
            h.remove()


def _positions_hook(gain: torch.Tensor, offset: torch.Tensor, decode: bool):
    def hook(module, args):
        h = args[0]
        if (h.shape[1] == 1) != decode:  # a one-token forward is a decode step; longer ones read the prompt
            return None
        return (h * gain.to(h.dtype) + offset.to(h.dtype), *args[1:])

    return hook


# --- generation and scoring ------------------------------------------------------------------------------------
DEFAULT_PROMPTS = [
    "Tell me about your favourite season and why you like it.",
    "What do you usually eat for breakfast?",
    "Describe the town where you grew up.",
    "Give me some advice for a job interview.",
    "What is the best way to learn to cook?",
    "Write a short story about a lost dog.",
    "Why do people enjoy travelling?",
    "Explain how to plant a tree in a garden.",
    "What makes a good friend?",
    "Describe a rainy afternoon in the city.",
]


def generate(host, prompts: list[str], max_new_tokens: int = 48) -> list[str]:
    """Greedy replies to chat prompts, batched with left padding."""
    tok = host.tokenizer
    texts = [_chat(tok, p) for p in prompts]
    side, tok.padding_side = tok.padding_side, "left"
    try:
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = side
    with torch.inference_mode():
        out = host.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return [tok.decode(row[enc.input_ids.shape[1]:], skip_special_tokens=True) for row in out]


def _chat(tok, prompt: str) -> str:
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
    return prompt


def text_perplexity(host, texts: list[str]) -> float:
    """The unmodified host's perplexity of `texts` (a fluency proxy for generated text)."""
    corpus = Corpus()
    from bricks.corpus import Doc

    corpus.extend(Doc(t, "gen") for t in texts if t.strip())
    return label_perplexity(host, corpus)["gen"] if corpus else float("nan")


@dataclass(frozen=True)
class Setting:
    """One steering setting: the variant applied while the prompt is read and the one applied at generated
    tokens, each (form, k) or None; `all` positions is the same variant in both."""

    prompt: tuple[str, float] | None
    generated: tuple[str, float] | None
    layers: str = "all"

    @staticmethod
    def describe(part: tuple[str, float] | None) -> str:
        return "-" if part is None else f"{part[0]} k={part[1]:g}"


def grid(forms, ks, positions=POSITIONS, layer_names=("all",)) -> list[Setting]:
    """Every form x k x positions x layer set, the same variant at the chosen positions."""
    out = []
    for form in forms:
        for k in ks:
            for lname in layer_names:
                for pos in positions:
                    part = (form, float(k))
                    out.append(Setting(part if pos in ("all", "prompt") else None,
                                       part if pos in ("all", "generated") else None, lname))
    return out


@dataclass
class SteerResult:
    prompt: str  # variant while the prompt is read ("-": none)
    generated: str  # variant at generated tokens
    layers: str
    target_share: float  # share of identifiable words in the target language (mean over prompts)
    dominant_share: float
    coverage: float  # identifiable / all words
    repetition: float  # repeated 3-gram rate (mean over prompts)
    known_words: float  # share of words found in the target + dominant corpora's vocabulary
    gen_ppl: float  # unmodified host's perplexity of the generations (fluency)
    dominant_ppl_ratio: float  # dominant-language PPL under the generation-time variant / without
    prompt_variant_ppl_ratio: float  # the same for the prompt-time variant (what reading the prompt costs)
    sample: str

    def to_dict(self) -> dict:
        return asdict(self)


def score_generations(texts: list[str], target: str, dominant: str, vocab: set[str] | None = None,
                      ) -> dict[str, float]:
    shares = [language_shares(t) for t in texts]
    n = max(len(texts), 1)
    mean = lambda key: sum(s[key] for s in shares) / n  # noqa: E731
    return {"target_share": mean(target), "dominant_share": mean(dominant), "coverage": mean("coverage"),
            "repetition": sum(repetition(t) for t in texts) / n,
            "known_words": sum(known_word_rate(t, vocab) for t in texts) / n if vocab else float("nan")}


def layer_sets(brick: Brick) -> dict[str, list[int] | None]:
    """Candidate layer restrictions: all of the brick's layers, its lower half, its upper half."""
    layers = sorted(brick.neurons)
    mid = len(layers) // 2
    out: dict[str, list[int] | None] = {"all": None}
    if mid:
        out[f"L{layers[0]}-{layers[mid - 1]}"] = layers[:mid]
        out[f"L{layers[mid]}-{layers[-1]}"] = layers[mid:]
    return out


class _Sweep:
    """Generation and cost measurements for one brick, with the dominant-language costs cached per variant."""

    def __init__(self, host, brick: Brick, target: str, dominant: str, dominant_corpus: Corpus,
                 layers: dict[str, list[int] | None], vocab: set[str] | None):
        self.host, self.brick, self.target, self.dominant = host, brick, target, dominant
        self.corpus, self.layers, self.vocab = dominant_corpus, layers, vocab
        self.base_ppl = label_perplexity(host, dominant_corpus)[dominant]
        self.costs: dict = {}

    def variant(self, part: tuple[str, float], lname: str) -> Brick:
        return steering_variant(self.brick, self.target, part[0], part[1], self.dominant, self.layers[lname])

    def cost(self, part: tuple[str, float] | None, lname: str) -> float:
        """Teacher-forced dominant-language PPL with the variant at every position, over the unmodified PPL."""
        if part is None:
            return 1.0
        if (part, lname) not in self.costs:
            with steered(self.host, [self.variant(part, lname)], "all"):
                ppl = label_perplexity(self.host, self.corpus)[self.dominant]
            self.costs[part, lname] = ppl / self.base_ppl
        return self.costs[part, lname]

    def run(self, setting: Setting, prompts: list[str], max_new_tokens: int) -> SteerResult:
        with ExitStack() as stack:
            for part, pos in ((setting.prompt, "prompt"), (setting.generated, "generated")):
                if part is not None:
                    stack.enter_context(steered(self.host, [self.variant(part, setting.layers)], pos))
            texts = generate(self.host, prompts, max_new_tokens)
        return SteerResult(Setting.describe(setting.prompt), Setting.describe(setting.generated), setting.layers,
                           gen_ppl=text_perplexity(self.host, texts),
                           dominant_ppl_ratio=self.cost(setting.generated, setting.layers),
                           prompt_variant_ppl_ratio=self.cost(setting.prompt, setting.layers), sample=texts[0][:160],
                           **score_generations(texts, self.target, self.dominant, self.vocab))


def steer_sweep(host, brick: Brick, target: str, dominant_corpus: Corpus, settings: list[Setting],
                layers: dict[str, list[int] | None] | None = None, dominant: str = "en",
                prompts: list[str] | None = None, max_new_tokens: int = 48, vocab: set[str] | None = None,
                progress: bool = True) -> list[SteerResult]:
    """Measure every setting (see `grid`; `layers` maps the settings' layer-set names to layers) on greedy
    replies to dominant-language `prompts`; the first row is the unsteered host."""
    from tqdm.auto import tqdm

    sweep = _Sweep(host, brick, target, dominant, dominant_corpus, layers or {"all": None}, vocab)
    settings = [Setting(None, None, "-")] + list(settings)
    return [sweep.run(s, prompts or DEFAULT_PROMPTS, max_new_tokens)
            for s in tqdm(settings, desc="steering settings", disable=not progress)]


def render_steer_table(results: list[SteerResult], title: str = "steering"):
    from rich.table import Table

    t = Table(title=title)
    for col in ("prompt", "generated", "layers", "target %", "dominant %", "known %", "repeat3", "gen PPL",
                "dom PPL x (gen)", "dom PPL x (prompt)", "sample"):
        t.add_column(col, overflow="fold")
    for r in results:
        t.add_row(r.prompt, r.generated, r.layers, f"{100 * r.target_share:.0f}", f"{100 * r.dominant_share:.0f}",
                  _g(100 * r.known_words, ".0f"), f"{r.repetition:.2f}", _g(r.gen_ppl),
                  f"{r.dominant_ppl_ratio:.2f}", f"{r.prompt_variant_ppl_ratio:.2f}", r.sample[:60].replace("\n", " "))
    return t


def _g(v: float, spec: str = ".1f") -> str:
    return "-" if math.isnan(v) else format(v, spec)
