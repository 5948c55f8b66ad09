"""The JSONL files operations learn from: training examples and facts, checked line by line up front.

A file is read whole before any work: every bad line is reported at once (up to a limit), each at its
line number with what is wrong and how to fix it, in the same form as YAML config problems:

    tasks.jsonl:7: messages[1].role: 'bot' is not allowed; use one of: system, user, assistant
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bricks.yamlconfig import ConfigError, Problem, friendly_message

M = TypeVar("M")
MAX_PROBLEMS = 20  # a broken file is not listed in full
MAX_LINE_BYTES = 1 << 20  # one example longer than this is a mistake (a whole file on one line)

Text = Annotated[str, Field(min_length=1)]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class TextExample(Record):
    """Plain text: the loss is on every token."""

    text: Text


class Message(Record):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatExample(Record):
    """A conversation: the loss is on the assistant turns only (the rest is context)."""

    messages: list[Message] = Field(min_length=1)

    @field_validator("messages")
    @classmethod
    def _has_answer(cls, v: list[Message]) -> list[Message]:
        if not any(m.role == "assistant" and m.content for m in v):
            raise ValueError("a chat example needs at least one non-empty assistant turn (the loss is on them)")
        return v


class ChatPrompt(Record):
    """A conversation that ends with a user turn: a request to reply to (the training locality penalty's
    chat prompts; the reply is generated)."""

    messages: list[Message] = Field(min_length=1)

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, v: list[Message]) -> list[Message]:
        if v[-1].role != "user" or not v[-1].content.strip():
            raise ValueError("a chat prompt ends with a non-empty user turn (the reply to it is generated)")
        return v


def example_model(value: dict) -> type[Record]:
    """A line with "messages" is a chat example, anything else a text example."""
    return ChatExample if "messages" in value else TextExample


class Fact(Record):
    """One fact to inject: the prompt, the completion the host must give, and other wordings of the prompt."""

    prompt: Text
    target: Text
    paraphrases: list[Text] = Field(default_factory=list)

    @model_validator(mode="after")
    def _target_not_blank(self) -> Fact:
        if not self.target.strip():
            raise ValueError("target is blank: a fact needs the completion the model should give")
        return self


def read_jsonl(path: str | Path, model: type[M] | Callable[[dict], type[M]], noun: str = "data file") -> list[M]:
    """Every line of `path` validated as `model` (or as the model `model(line)` picks; blank lines skipped);
    one ConfigError listing every problem."""
    path = Path(path)
    source = str(path)
    raw = _read_bytes(path, noun)
    choose = model if not isinstance(model, type) else (lambda value: model)
    items: list[M] = []
    problems: list[Problem] = []
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            item = _parse_line(line, choose)
        except _LineError as e:
            problems.extend(Problem(p, number, m) for p, m in e.problems)
            if len(problems) >= MAX_PROBLEMS:
                problems.append(Problem("", None, f"stopped after {MAX_PROBLEMS} problems"))
                break
            continue
        items.append(item)
    if problems:
        raise ConfigError(problems, source)
    if not items:
        raise ConfigError([Problem("", None, f"the {noun} holds no records; write one JSON object per line")],
                          source)
    return items


def read_examples(path: str | Path) -> list[TextExample | ChatExample]:
    """Training examples: {"text": ...} or {"messages": [{"role", "content"}, ...]} per line."""
    return read_jsonl(path, example_model, noun="training data file")


def read_chat_prompts(path: str | Path) -> list[ChatPrompt]:
    """Chat prompts: {"messages": [..., {"role": "user", "content": ...}]} per line."""
    return read_jsonl(path, ChatPrompt, noun="chat prompts file")


def read_facts(path: str | Path) -> list[Fact]:
    """Facts to grow: {"prompt": ..., "target": ..., "paraphrases": [...]} per line."""
    return read_jsonl(path, Fact, noun="facts file")


def file_digest(path: str | Path) -> str:
    """sha256 of the file's bytes: what lineage records as the data an operation saw."""
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def split_heldout(items: list[M], fraction: float, key=None) -> tuple[list[M], list[M]]:
    """(train, held-out), split by a stable hash of each record (not by position), so the split is the
    same on every run and a record never moves side when others are added."""
    key = key or (lambda item: item.model_dump_json())
    train, held = [], []
    for item in items:
        h = int.from_bytes(hashlib.sha256(key(item).encode()).digest()[:8], "big") / 2**64
        (held if h < fraction else train).append(item)
    return train, held


class _LineError(Exception):
    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems


def _parse_line(line: bytes, choose: Callable[[dict], type[BaseModel]]):
    if len(line) > MAX_LINE_BYTES:
        raise _LineError([("", f"line is longer than {MAX_LINE_BYTES} bytes; one record per line")])
    try:
        value = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _LineError([("", f"not valid JSON ({e.msg if hasattr(e, 'msg') else e})")]) from None
    if not isinstance(value, dict):
        raise _LineError([("", f"a record is a JSON object, got {type(value).__name__}")])
    model = choose(value)
    try:
        return model.model_validate(value)
    except ValidationError as e:
        raise _LineError([(_loc(err["loc"]), _message(err, model)) for err in e.errors()]) from None


def _message(err: dict, model) -> str:
    try:
        return friendly_message(err, model)
    except Exception:  # a message helper must not hide the problem itself
        return err["msg"]


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _read_bytes(path: Path, noun: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        message = f"{noun} does not exist; check the path"
    except IsADirectoryError:
        message = f"is a folder, not a {noun}"
    except OSError as e:
        message = f"cannot be read ({e.strerror})"
    raise ConfigError([Problem("", None, message)], str(path))
