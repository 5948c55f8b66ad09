"""Extractor options: one pydantic model per method, the single place its parameters are declared.

A model lists every option with its type, default and description (what `brick extract METHOD --help`
prints); `extra="forbid"` makes a misspelt option an error. `parse_options` turns what a caller or the
CLI's `--opt KEY=VALUE` gives into the model, and every problem into one `InvalidInputError` that names
the option and how to fix it.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bricks.errors import InvalidInputError


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


def parse_options(model: type[ExtractorOptions], method: str, raw: dict[str, Any] | ExtractorOptions | None):
    """The options model from keyword values (text as the CLI passes it is converted to the field's type)."""
    if isinstance(raw, model):
        return raw
    try:
        return model.model_validate(raw or {})
    except ValidationError as e:
        raise _clean_error(model, method, e) from None


def _clean_error(model: type[ExtractorOptions], method: str, err: ValidationError) -> InvalidInputError:
    problems, fixes = [], []
    for item in err.errors():
        key = str(item["loc"][0]) if item["loc"] else ""
        if item["type"] == "extra_forbidden":
            problems.append(f"{method} has no option {key!r}")
            fixes.append(f"use one of: {', '.join(option_names(model))}")
        else:
            problems.append(f"{method} option {key}={item.get('input')!r}: {item['msg']}")
            fixes.append(f"--opt {key}=... takes {describe_option(model, key)}")
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
