"""The task datasets shipped for training demos and tests, and the metric that scores replies on each.

Each task is a JSONL file of chat examples in `bricks/data/tasks/` (written by `bench/make_task_data.py`,
described in that folder's README), and a metric computed from greedy replies and the reference replies:

- `json-extract`: a sentence or two about a person -> only one line of JSON with the keys name, age, city,
  job in that order. Metric `valid_json`: the reply parses as a JSON object with exactly those keys;
  also `field_match` (share of the fields equal to the reference) and `exact_match` (all four equal).
- `style`: an everyday question -> exactly three lines, each starting with "- ", all lowercase (the prompt
  does not ask for it: the style is what a brick adds). Metric `conforms`; also the rate of each rule
  and the mean number of lines.
- `span-qa`: a short passage about invented places, creatures and machines, and a question -> only the
  answer's exact words from the passage. Metric `exact_match` after SQuAD's normalisation (case,
  punctuation, articles, spaces); also `contains_answer` (the normalised reference occurs in the reply).
Every metric's value is a rate in [0, 1] over the examples scored.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bricks
from bricks.errors import InvalidInputError
from bricks.ops.data import ChatExample
from bricks.yamlconfig import did_you_mean

TASKS_DIR = Path(bricks.__file__).parent / "data" / "tasks"
JSON_KEYS = ("name", "age", "city", "job")  # json-extract's fixed shape, in this order
STYLE_LINES = 3  # style: this many bullet lines
STYLE_BULLET = "- "

Scorer = Callable[[list[str], list[str]], dict]  # (references, replies) -> {"value": ..., secondary figures}


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    metric: str  # the primary figure's name
    score: Scorer

    @property
    def path(self) -> Path:
        return TASKS_DIR / f"{self.name}.jsonl"


# --- json-extract ----------------------------------------------------------------------------------------
def json_reply(reply: str) -> dict | None:
    """The reply as a JSON object with exactly the keys of JSON_KEYS (any order), or None."""
    try:
        value = json.loads(reply.strip())
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or set(value) != set(JSON_KEYS):
        return None
    return value


def score_json(references: list[str], replies: list[str]) -> dict:
    valid = fields = exact = 0.0
    for reference, reply in zip(references, replies, strict=True):
        want, got = json.loads(reference), json_reply(reply)
        if got is None:
            continue
        hits = sum(got[k] == want[k] for k in JSON_KEYS)
        valid += 1
        fields += hits / len(JSON_KEYS)
        exact += hits == len(JSON_KEYS)
    n = len(references)
    return {"value": valid / n, "field_match": fields / n, "exact_match": exact / n}


# --- style -----------------------------------------------------------------------------------------------
def style_checks(reply: str) -> dict[str, bool]:
    """Each rule of the style on one reply (surrounding blank space is ignored)."""
    lines = reply.strip().split("\n")
    return {
        "three_lines": len(lines) == STYLE_LINES,
        "bullets": all(line.startswith(STYLE_BULLET) and line[len(STYLE_BULLET):].strip() for line in lines),
        "lowercase": reply == reply.lower(),
    }


def score_style(references: list[str], replies: list[str]) -> dict:
    checks = [style_checks(reply) for reply in replies]
    n = len(replies)
    out = {"value": sum(all(c.values()) for c in checks) / n}
    for rule in checks[0]:
        out[rule] = sum(c[rule] for c in checks) / n
    out["mean_lines"] = sum(len(r.strip().split("\n")) for r in replies) / n
    return out


# --- span-qa ---------------------------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def score_span(references: list[str], replies: list[str]) -> dict:
    exact = contains = 0
    for reference, reply in zip(references, replies, strict=True):
        want, got = normalize_answer(reference), normalize_answer(reply)
        exact += got == want
        contains += f" {want} " in f" {got} "
    n = len(references)
    return {"value": exact / n, "contains_answer": contains / n}


TASKS: dict[str, Task] = {
    task.name: task
    for task in [
        Task("json-extract", "a sentence or two about a person -> one line of JSON: name, age, city, job",
             "valid_json", score_json),
        Task("style", "an everyday question -> exactly three lowercase lines starting with '- '",
             "conforms", score_style),
        Task("span-qa", "a short passage about an invented archipelago and a question -> the exact answer span",
             "exact_match", score_span),
    ]
}


def get_task(name: str) -> Task:
    """The shipped task called `name`; an unknown name is an error listing the known ones."""
    if name not in TASKS:
        raise InvalidInputError(f"unknown task {name!r}{did_you_mean(name, list(TASKS))}",
                                f"use one of: {', '.join(TASKS)}")
    return TASKS[name]


def task_path(name: str) -> Path:
    """The shipped JSONL file of task `name`."""
    return get_task(name).path


def prompt_and_reference(example: ChatExample) -> tuple[list[dict], str]:
    """The conversation before the last assistant turn (what generate_chat takes) and that turn's text."""
    if not isinstance(example, ChatExample):
        raise InvalidInputError("a task example is a chat example ({\"messages\": [...]}), not plain text",
                                "score tasks on chat data such as the shipped bricks/data/tasks files")
    last = max(i for i, m in enumerate(example.messages) if m.role == "assistant")
    prompt = [{"role": m.role, "content": m.content} for m in example.messages[:last]]
    return prompt, example.messages[last].content


def task_metric(task: str, examples: list[ChatExample], replies: list[str]) -> dict:
    """The task's metric of `replies` against the examples' reference replies:
    {"metric": name, "value": rate in [0, 1], "n": count, ...secondary figures}."""
    spec = get_task(task)
    if len(examples) != len(replies):
        raise InvalidInputError(f"{len(examples)} examples but {len(replies)} replies to score on {task}",
                                "pass one reply per example, in the same order")
    if not examples:
        raise InvalidInputError(f"no examples to score on {task}", "pass at least one example and its reply")
    references = [prompt_and_reference(example)[1] for example in examples]
    figures = spec.score(references, replies)
    return {"metric": spec.metric, "value": figures.pop("value"), "n": len(examples), **figures}
