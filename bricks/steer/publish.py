"""A servable steering brick from a label brick: the setting `brick eval --steer` measures best, staged.

Measured on SmolLM2 (`brick eval lang-fr --steer --target fr`, see the README): the same offset at every
position switches English prompts to French only by breaking the model (92% French words at x2.1 English
perplexity), while clamping the brick's neurons to 2x their French mean while the prompt is read and adding
0.3x (French - English mean) while generating gives 100% French words at x1.06. `DEFAULT_SETTING` is that
staged setting; `steering_brick` builds it (one brick, both maps: bricks/kinds/neurons.py) and
`choose_setting` measures candidate settings on replies to dominant-language prompts and keeps the best:
the least repetition among settings that reach the target-language share within the perplexity budget
(else the most target-language words within the budget, else the cheapest).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bricks.corpus import Corpus
from bricks.errors import InvalidInputError
from bricks.format import Brick
from bricks.steer.sweep import Setting, SteerResult, parse_staged, steer_sweep
from bricks.steer.variants import staged_variant, steering_variant

DEFAULT_SETTING = Setting(("mean", 2.0), ("diff", 0.3))
# Candidates `brick steer` measures by default: the measured best and its neighbours in both strengths.
DEFAULT_CANDIDATES = "mean:2/diff:0.3,mean:1.5/diff:0.3,mean:2/diff:0.2,mean:2/diff:0.5,mean:3/none"
PPL_BUDGET = 1.1  # most dominant-language perplexity cost (x, generation-time map) a chosen setting may have
TARGET_SHARE = 0.9  # target-language word share a setting should reach


def steering_brick(brick: Brick, target: str, setting: Setting = DEFAULT_SETTING, dominant: str = "en",
                   name: str | None = None) -> Brick:
    """The steering brick of `setting`: staged when its prompt and generated variants differ, one variant
    at every token when they are the same, generated-only when it has no prompt variant."""
    if setting.prompt == setting.generated:
        out = steering_variant(brick, target, *setting.prompt, dominant=dominant)
    else:
        out = staged_variant(brick, target, setting.prompt, setting.generated, dominant)
    out.meta.name = name or f"{brick.name}-steer-{target}"[:64]
    out.meta.description = (f"steers toward {target} ({describe(setting)}), from {brick.name}'s neurons; "
                            "offset_scale sets the prompt strength, generated_offset_scale the generation strength")
    out.meta.metrics.pop("held_out", None)  # those figures measure ablating the parent, not this brick
    return out


@dataclass
class Choice:
    setting: Setting
    results: list[SteerResult]  # the unsteered host first, then every candidate, in order
    reason: str
    table: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        return describe(self.setting)


def choose_setting(host, brick: Brick, target: str, dominant_corpus: Corpus, candidates: str = DEFAULT_CANDIDATES,
                   dominant: str = "en", prompts: list[str] | None = None, max_new_tokens: int = 48,
                   vocab: set[str] | None = None, progress: bool = True) -> Choice:
    """Measure `candidates` ('FORM:K/FORM:K,...', prompt / generation variant) and pick one (module doc)."""
    settings = parse_staged(candidates)
    if not settings:
        raise InvalidInputError("no steering settings to measure", f"pass e.g. {DEFAULT_CANDIDATES}")
    results = steer_sweep(host, brick, target, dominant_corpus, settings, dominant=dominant, prompts=prompts,
                          max_new_tokens=max_new_tokens, vocab=vocab, progress=progress)
    measured = list(zip(settings, results[1:]))
    within = [(s, r) for s, r in measured if r.dominant_ppl_ratio <= PPL_BUDGET]
    good = [(s, r) for s, r in within if r.target_share >= TARGET_SHARE]
    if good:
        best_s, best_r = min(good, key=lambda sr: sr[1].repetition)
        reason = (f"least repetition among the settings with >= {TARGET_SHARE:.0%} {target} words within "
                  f"x{PPL_BUDGET} {dominant} perplexity")
    elif within:
        best_s, best_r = max(within, key=lambda sr: (round(sr[1].target_share, 2), -sr[1].repetition))
        reason = f"most {target} words within x{PPL_BUDGET} {dominant} perplexity, then least repetition"
    else:
        best_s, best_r = min(measured, key=lambda sr: sr[1].dominant_ppl_ratio)
        reason = f"no setting stays within x{PPL_BUDGET} {dominant} perplexity: the cheapest one"
    if best_r.target_share < TARGET_SHARE:
        reason += f"; it reaches {best_r.target_share:.0%} {target} words, under the {TARGET_SHARE:.0%} aimed at"
    table = [{"setting": "plain host" if s is None else describe(s), **r.to_dict()}
             for s, r in zip([None, *settings], results)]
    return Choice(best_s, results, reason, table)


def describe(setting: Setting) -> str:
    return f"prompt {Setting.describe(setting.prompt)} / generated {Setting.describe(setting.generated)}"
