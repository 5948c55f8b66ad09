"""Steering settings and the sweep that measures them on generations.

A `Setting` names the variant applied while the prompt is read and the one applied at generated tokens
(the same in both: every position; different: "staged"). `steer_sweep` measures settings on greedy
replies to dominant-language prompts.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict, dataclass

from bricks.corpus import Corpus
from bricks.evaluate import label_perplexity
from bricks.format import Brick
from bricks.steer.generation import DEFAULT_PROMPTS, generate, text_perplexity
from bricks.steer.hooks import POSITIONS, steered
from bricks.steer.variants import steering_variant
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
