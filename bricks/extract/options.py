"""Method options: one pydantic model per method, the single place its parameters are declared.

A model lists every option with its type, default and description (what `brick extract METHOD --help`
prints); `extra="forbid"` makes a misspelt option an error. `parse_options` turns what a caller or the
CLI's `--opt KEY=VALUE` gives into the model, and every problem into one `InvalidInputError` that names
the option and how to fix it, in the words of the kind of method (`OptionWording`).

Extractors, merge methods, growth methods and training all read their options here; the three kinds of
registered method are looked up in a `MethodRegistry` (name, function, paper, options model).
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bricks.errors import InvalidInputError
from bricks.yamlconfig import did_you_mean, friendly_message


class ExtractorOptions(BaseModel):
    """What every extractor's options share. Text "none" / "null" means None for an option that allows it."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    progress: bool = Field(True, description="Show progress bars.")

    @model_validator(mode="before")
    @classmethod
    def _none_from_text(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key, value in data.items():
            field = cls.model_fields.get(key)
            is_none_text = isinstance(value, str) and value.lower() in ("none", "null")
            if field and is_none_text and _allows_none(field.annotation):
                out[key] = None
        return out

    def params(self) -> dict[str, Any]:
        """The options as a brick records them (`meta.params`): everything but how the run was shown."""
        return self.model_dump(exclude={"progress"})


def _allows_none(annotation: Any) -> bool:
    return annotation is None or type(None) in typing.get_args(annotation)


@dataclass(frozen=True)
class OptionWording:
    """How one kind of method words a bad option: `str.format` templates that may use {name} (the method),
    {key} (the option), {where} (the option and the position inside it: weights[1]), {value} (what was
    given), {reason} (the problem in plain words), {pydantic} (pydantic's own message), {suggestion}
    ("; did you mean 'x'?" or "") and {takes} (the option's type, default and description)."""

    unknown: str = "{name} has no option {key!r}"
    invalid: str = "{name} option {key}={value!r}: {pydantic}"
    fix: str = "--opt {key}=... takes {takes}"


def parse_options(model: type[ExtractorOptions], method: str, raw: dict[str, Any] | BaseModel | None,
                  wording: OptionWording = OptionWording()):
    """The options model from keyword values (text as the CLI passes it is converted to the field's type);
    another options model is read as its values."""
    if isinstance(raw, model):
        return raw
    if isinstance(raw, BaseModel):
        raw = raw.model_dump()
    try:
        return model.model_validate(raw or {})
    except ValidationError as e:
        raise options_error(model, method, e, wording) from None


def options_error(model: type[BaseModel], method: str, err: ValidationError,
                  wording: OptionWording = OptionWording()) -> InvalidInputError:
    """Every problem in `err` (from validating `model`) as one error naming each option and its fix."""
    names = option_names(model)
    problems, fixes = [], []
    for item in err.errors():
        key = str(item["loc"][0]) if item["loc"] else ""
        if item["type"] == "extra_forbidden":
            problems.append(wording.unknown.format(name=method, key=key, suggestion=did_you_mean(key, names)))
            fixes.append(f"use one of: {', '.join(names)}")
        else:
            where = key + "".join(f"[{p}]" for p in item["loc"][1:])
            problems.append(wording.invalid.format(name=method, key=key, where=where, value=item.get("input"),
                                                   reason=friendly_message(item, model), pydantic=item["msg"]))
            fixes.append(wording.fix.format(key=key, takes=describe_option(model, key)))
    return InvalidInputError("; ".join(problems), "; ".join(dict.fromkeys(fixes)))


def option_names(model: type[ExtractorOptions]) -> list[str]:
    """The method's own options first, then the ones every extractor shares."""
    shared = list(ExtractorOptions.model_fields)
    return [k for k in model.model_fields if k not in shared] + shared


def describe_option(model: type[ExtractorOptions], key: str) -> str:
    """'TYPE (default D): description' for one option."""
    field = model.model_fields[key]
    default = "none" if field.default is None else json.dumps(field.default, default=str)
    text = f"{type_name(field.annotation)} (default {default})"
    return f"{text}: {field.description}" if field.description else text


def type_name(annotation: Any) -> str:
    """A short readable name for an option's type: 'int', 'float or none', 'one of auto, lape'."""
    if annotation is type(None):
        return "none"
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return f"list of {type_name(item)} (comma-separated)"
    return getattr(annotation, "__name__", str(annotation))


def option_pairs(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`key=value` texts as a dict; a value is read as JSON when it parses (numbers, true, lists), else as
    text. '-' in a key is read as '_' (`top-pct=1` is `top_pct=1`)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"method option {pair!r} is not key=value", "write e.g. --opt top_pct=0.5")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip().replace("-", "_")] = value
    return out


def comma_list(value: Any) -> Any:
    """A 'a,b' text as a list ['a', 'b'] and a lone value as a list of one: how list options are written
    on a command line (lists and None are unchanged)."""
    if isinstance(value, str):
        return [x.strip() for x in value.split(",") if x.strip()]
    if isinstance(value, (int, float)):
        return [value]
    return value


# --- registered methods ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its name, function, paper, one-line summary (the first line of the function's
    docstring, what --help shows) and options model. Each kind of method subclasses it for its own fields."""

    name: str
    fn: Callable[..., Any]
    reference_url: str
    summary: str
    options: type[ExtractorOptions]
    aliases: tuple[str, ...] = ()  # other spellings a lookup accepts (`rare_token` for `rare_tokens`)

    wording: ClassVar[OptionWording] = OptionWording()

    def parse(self, raw: dict[str, Any] | BaseModel | None = None) -> ExtractorOptions:
        """The method's options model from keyword values; every problem is one `InvalidInputError`."""
        return parse_options(self.options, self.name, raw, self.wording)

    @property
    def heading(self) -> str:
        """How --help names the method."""
        return self.name


S = TypeVar("S", bound=MethodSpec)


class MethodRegistry(dict[str, S], Generic[S]):
    """The methods of one kind by name, in the order they were registered. `noun` is what an error calls
    one ('merge method'); `sort` lists them alphabetically in errors (for a kind whose methods register in
    whatever order their modules are imported)."""

    def __init__(self, noun: str, spec: type[S], sort: bool = False):
        super().__init__()
        self.noun = noun
        self.spec = spec
        self.sort = sort

    def register(self, name: str, reference_url: str, options: type[ExtractorOptions], **fields: Any) -> Callable:
        """A decorator: register the function under `name`, with its paper, options and the spec's own fields."""

        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            summary = (fn.__doc__ or "").strip().split("\n")[0]
            self[name] = self.spec(name, fn, reference_url, summary, options, **fields)
            return fn

        return add

    def resolve(self, name: str) -> str | None:
        """The registered name `name` spells: case aside, '-' reads as '_' (`dare-ties`), aliases count."""
        key = _method_key(name)
        for spec in self.values():
            if key == spec.name or key in spec.aliases:
                return spec.name
        return None

    def lookup(self, name: str) -> S:
        """The method `name` spells, or an error suggesting the closest registered name."""
        real = self.resolve(name)
        if real is None:
            names = sorted(self) if self.sort else list(self)
            raise InvalidInputError(f"unknown {self.noun} {name!r}{did_you_mean(_method_key(name), names)}",
                                    f"use one of: {', '.join(names)}")
        return self[real]


def _method_key(name: str) -> str:
    return name.strip().lower().replace("-", "_")
