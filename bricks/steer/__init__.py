"""Steering variants of label bricks, and how to measure them on generations.

A label brick stores its neurons' mean h on every label (`NeuronSet.label_means`), so it can be turned
into a steering brick. One module per job:

- `variants`: `steering_variant` (form ``diff`` or ``mean``, strength k, optionally a subset of layers),
  `staged_variant` (a prompt-time and a generation-time variant in one brick) and `layer_sets` (all of a
  brick's layers, its lower half, its upper half);
- `hooks`: `steered(host, bricks, positions)` applies bricks at every position, at generated tokens
  only, or only while the prompt is read;
- `generation`: greedy chat replies and the unmodified host's perplexity of them;
- `words`: language shares, known words and repetition of a text;
- `sweep`: `Setting` (a variant for the prompt and one for generated tokens), `grid` and `steer_sweep`,
  which measures settings on greedy replies to dominant-language prompts, and `SteerPlan` /
  `steer_bricks` for several bricks from settings written as text;
- `report`: the results as a table.
"""

from bricks.steer.generation import DEFAULT_PROMPTS, generate, text_perplexity
from bricks.steer.hooks import POSITIONS, steered
from bricks.steer.report import render_steer_table
from bricks.steer.sweep import Setting, SteerPlan, SteerResult, grid, parse_staged, steer_bricks, steer_sweep
from bricks.steer.variants import FORMS, layer_sets, staged_variant, steering_variant
from bricks.steer.words import (
    known_word_rate,
    language_shares,
    repetition,
    score_generations,
    word_language,
    word_vocab,
)

__all__ = [
    "DEFAULT_PROMPTS", "FORMS", "generate", "grid", "known_word_rate", "language_shares", "layer_sets",
    "parse_staged", "POSITIONS", "render_steer_table", "repetition", "score_generations", "Setting", "staged_variant",
    "steer_bricks",
    "steer_sweep", "steered", "steering_variant", "SteerPlan", "SteerResult", "text_perplexity", "word_language",
    "word_vocab",
]
