"""Steering settings and the sweep that measures them on generations.

A `Setting` names the variant applied while the prompt is read and the one applied at generated tokens
(the same in both: every position; different: "staged"). `steer_sweep` measures settings on greedy
replies to dominant-language prompts; `SteerPlan` and `steer_bricks` do that for several bricks from
settings written as text.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace

from bricks.corpus import Corpus
from bricks.errors import InvalidInputError
from bricks.evaluate import label_perplexity
from bricks.format import Brick
from bricks.steer.generation import DEFAULT_PROMPTS, generate, text_perplexity
from bricks.steer.hooks import POSITIONS, steered
from bricks.steer.variants import FORMS, layer_sets, steering_variant
from bricks.steer.words import score_generations


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


# --- several bricks, from settings written as text -------------------------------------------------------
@dataclass(frozen=True)
class SteerPlan:
    """What to sweep for every brick: a grid of forms x strengths x positions, plus staged settings, on all
    of a brick's layers or also on its lower and upper half (`layer_mode="halves"`)."""

    forms: tuple[str, ...] = FORMS
    ks: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0)
    positions: tuple[str, ...] = POSITIONS
    staged: tuple[Setting, ...] = ()
    layer_mode: str = "all"
    max_new_tokens: int = 48

    @classmethod
    def from_text(cls, forms: str = "diff,mean", ks: str = "0.5,1,2,3", positions: str = "all,generated,prompt",
                  staged: str = "", layer_mode: str = "all", max_new_tokens: int = 48) -> SteerPlan:
        """A plan from comma-separated lists (as a command line writes them); `staged` is
        'FORM:K/FORM:K,...', a prompt-time variant / a generation-time variant per setting."""
        if layer_mode not in ("all", "halves"):
            raise InvalidInputError(f"layer mode {layer_mode!r}", "use 'all' or 'halves'")
        return cls(tuple(_choices(forms, FORMS, "forms")), tuple(_numbers(ks, "k")),
                   tuple(_choices(positions, POSITIONS, "positions")), tuple(parse_staged(staged)), layer_mode,
                   max_new_tokens)

    def settings(self, brick: Brick) -> tuple[dict[str, list[int] | None], list[Setting]]:
        """The brick's layer sets and every setting to measure on it."""
        layers = layer_sets(brick) if self.layer_mode == "halves" else {"all": None}
        staged = [replace(s, layers=lname) for s in self.staged for lname in layers]
        return layers, grid(self.forms, self.ks, self.positions, tuple(layers)) + staged


def steer_bricks(host, bricks: list[Brick], corpus: Corpus, target: str | None, dominant: str, plan: SteerPlan,
                 vocab: set[str] | None = None, progress: bool = True) -> dict[str, list[SteerResult]]:
    """`steer_sweep` of every brick toward `target` on `plan`'s settings; `corpus` must hold `dominant`
    text (its perplexity is the cost). Results by brick name."""
    if not target:
        raise InvalidInputError("steering needs a target label", "name the label to steer toward, e.g. --target fr")
    if dominant not in corpus.labels():
        raise InvalidInputError(f"the evaluation data has no {dominant!r} text for the perplexity cost",
                                "pass data with that label or set the dominant label (--dominant)")
    results = {}
    for brick in bricks:
        layers, settings = plan.settings(brick)
        results[brick.name] = steer_sweep(host, brick, target, corpus.by_label(dominant), settings, layers=layers,
                                          dominant=dominant, max_new_tokens=plan.max_new_tokens, vocab=vocab,
                                          progress=progress)
    return results


def parse_staged(text: str) -> list[Setting]:
    """'mean:2/diff:0.3,...': per setting, the variant while the prompt is read / the one at generated tokens;
    `none` on one side leaves that phase unsteered ('mean:3/none': steer only while the prompt is read)."""
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        try:
            parts = [_part(p.strip()) for p in item.split("/")]
            if len(parts) != 2 or parts == [None, None]:
                raise ValueError
            out.append(Setting(parts[0], parts[1]))
        except ValueError:
            raise InvalidInputError(f"staged setting {item!r} is not FORM:K/FORM:K",
                                    "write e.g. --staged mean:2/diff:0.3 (prompt / generation variant; FORM is "
                                    "mean or diff, or none for one side)") from None
    return out


def _part(text: str) -> tuple[str, float] | None:
    if text == "none":
        return None
    form, k = text.split(":")
    if form not in FORMS:
        raise ValueError(form)
    return form, float(k)


def _numbers(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidInputError(f"{what} {text!r} is not a comma-separated list of numbers",
                                f"write e.g. --{what} 0.5,1,2") from None


def _choices(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    got = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in got if x not in allowed]
    if bad or not got:
        raise InvalidInputError(f"--{what} {text!r}: unknown {bad or 'empty'}", f"use some of: {', '.join(allowed)}")
    return got
