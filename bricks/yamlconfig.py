"""YAML files checked by a pydantic model: every problem at once, each at its YAML line, in plain words.

A config file (a manifest, a merge recipe, a grow spec) is a tree of pydantic models that forbid unknown
keys (`Section`), so a typo such as ``gian:`` is an error rather than a silently ignored setting.
`ConfigFormat(Model, noun="manifest").parse(text, source)` reads one and raises one `ConfigError` that
lists every problem with its path and line:

    fr.yaml:9: bricks[1].gian: unknown key 'gian'; did you mean 'gain'? ...
    fr.yaml:14: routing.policy: 'dynamic' is not allowed; use one of: explicit, static, retrieval

Checks across fields are functions of the top-level sections ({field: value}) returning `Issue`s. The
model's own validator raises them with `located_error` (so Python callers get them too); handing the same
function to `ConfigFormat(cross_checks=...)` also runs it when field errors stopped pydantic first, on the
sections that are valid, so a user still sees every problem in one pass.
"""

from __future__ import annotations

import difflib
import reprlib
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from bricks.errors import InvalidInputError

Loc = tuple[str | int, ...]
Issue = tuple[Loc, str]  # (where in the file, what is wrong and how to fix it)
CrossChecks = Callable[[dict[str, Any]], list[Issue]]
M = TypeVar("M", bound=BaseModel)
CHECK_ERROR = "config_check"  # pydantic error type of the issues raised by `located_error`


# --- errors ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    path: str  # YAML path such as "bricks[1].gain"; "" for the file as a whole
    line: int | None  # 1-based line in the file
    message: str

    def render(self, source: str) -> str:
        where = source if self.line is None else f"{source}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(InvalidInputError):
    """Everything wrong with one file; `str()` lists one problem per line, in file order."""

    def __init__(self, problems: list[Problem], source: str = "<config>"):
        self.problems = sorted(problems, key=lambda p: (p.line is None, p.line or 0))
        self.source = source
        super().__init__("\n".join(p.render(source) for p in self.problems))


def located_error(title: str, issues: list[Issue]) -> ValidationError:
    """A ValidationError with each issue at its own location; raise it from a model validator."""
    details = [InitErrorDetails(type=PydanticCustomError(CHECK_ERROR, "{message}", {"message": message}),
                                loc=loc, input=None) for loc, message in issues]
    return ValidationError.from_exception_data(title, details)


# --- building blocks for schemas ---------------------------------------------------------------------
class Section(BaseModel):
    """A mapping in the file: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def none_as(empty: type) -> BeforeValidator:
    """An empty YAML section (`bricks:` with everything commented out) reads as null: treat it as empty."""
    return BeforeValidator(lambda value: empty() if value is None else value)


def did_you_mean(word: str, options: list[str]) -> str:
    """"; did you mean 'x'?" for the closest option, or ""."""
    match = difflib.get_close_matches(word.lower(), options, n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


# --- one kind of file --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfigFormat(Generic[M]):
    """How to read one kind of YAML file: its model, what users call it, the error it raises."""

    model: type[M]
    noun: str = "config"  # "manifest": used in messages about the file as a whole
    error: type[ConfigError] = ConfigError
    example: str | None = None  # an example file, named when a file is empty or missing
    cross_checks: CrossChecks | None = None  # the model's checks across its top-level sections

    def parse(self, text: str, source: str) -> tuple[M, yaml.Node]:
        """The validated model and the YAML tree (for lines of later problems); every problem at once."""
        root, data = self._load(text, source)
        problems = _duplicate_key_problems(root, (), set())
        try:
            value = self.model.model_validate(data)
        except ValidationError as err:
            raise self.error(problems + self._validation_problems(err, data, root), source) from None
        if problems:
            raise self.error(problems, source)
        return value, root

    def load(self, path: Path) -> tuple[M, yaml.Node]:
        """`parse` the file at `path` (its path is the source named in problems)."""
        return self.parse(self.read_text(path), str(path))

    def read_text(self, path: Path) -> str:
        """The file's text; a missing, unreadable or non-UTF-8 file raises the error type."""
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            where = f" (examples are in {Path(self.example).parent}/)" if self.example else ""
            message = f"{self.noun} file does not exist; check the path{where}"
        except IsADirectoryError:
            message = f"is a folder, not a {self.noun} file"
        except UnicodeDecodeError:
            message = f"is not UTF-8 text; a {self.noun} is a YAML file"
        except OSError as err:
            message = f"cannot be read ({err.strerror})"
        raise self.error([Problem("", None, message)], str(path))

    def error_at(self, issues: list[Issue], root: yaml.Node | None, source: str) -> ConfigError:
        """The error for issues found after parsing (e.g. against a registry), each at its line."""
        return self.error([problem_at(loc, message, root) for loc, message in issues], source)

    def _load(self, text: str, source: str) -> tuple[yaml.Node, dict[str, Any]]:
        try:
            loader = yaml.SafeLoader(text)  # checks every character up front (ReaderError)
        except yaml.reader.ReaderError as err:
            line = text.count("\n", 0, err.position) + 1
            raise self.error([Problem("", line, f"holds the control character {err.character:#06x}, which YAML "
                                      "does not allow; remove it (or write it as an escape in a quoted string)")],
                             source) from None
        try:
            root = loader.get_single_node()
            data = None if root is None else loader.construct_document(root)
        except yaml.YAMLError as err:
            raise self.error([_yaml_problem(err)], source) from None
        finally:
            loader.dispose()
        if root is None:
            see = f" (see {self.example})" if self.example else ""
            raise self.error([Problem("", None, f"the file is empty; a {self.noun} needs at least "
                                      f"{self._key_words()}{see}")], source)
        if not isinstance(data, dict):
            raise self.error([Problem("", root.start_mark.line + 1, f"the top level is {_kind(data)}, but a "
                                      f"{self.noun} is a mapping of keys such as {self._key_words()}")], source)
        return root, data

    def _key_words(self) -> str:
        fields = self.model.model_fields
        keys = [name for name, field in fields.items() if field.is_required()] or list(fields)[:2]
        return " and ".join(f"`{key}:`" for key in keys)

    def _validation_problems(self, err: ValidationError, data: dict[str, Any], root: yaml.Node) -> list[Problem]:
        errors = [(tuple(e["loc"]), friendly_message(e, self.model)) for e in err.errors()]
        ran = any(e["type"] == CHECK_ERROR for e in err.errors())
        if self.cross_checks is not None and not ran:  # field errors stopped pydantic first: run them here
            errors += self.cross_checks(valid_sections(self.model, data))
        return [problem_at(loc, message, root) for loc, message in errors]


def valid_sections(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """Each top-level section validated on its own: None where it is invalid (or required and missing)."""
    parts: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if name not in data:
            parts[name] = None if field.is_required() else field.get_default(call_default_factory=True)
            continue
        try:
            parts[name] = TypeAdapter(Annotated[field.annotation, field]).validate_python(data[name])
        except ValidationError:
            parts[name] = None
    return parts


# --- YAML: syntax, duplicate keys, lines ----------------------------------------------------------------
def _yaml_problem(err: yaml.YAMLError) -> Problem:
    mark = getattr(err, "problem_mark", None)
    what = getattr(err, "problem", None) or str(err)
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and context_mark is not None and (mark is None or context_mark.line != mark.line):
        context += f" that starts on line {context_mark.line + 1}"
    message = f"YAML syntax error: {what}" + (f" ({context})" if context else "")
    if "\\t" in what or "\t" in what:
        message += "; indent with spaces, not tabs"
    else:
        message += "; check the indentation and quote values that contain ': ' or start with a special character"
    return Problem("", mark.line + 1 if mark else None, message)


def _duplicate_key_problems(node: yaml.Node, loc: Loc, visited: set[int]) -> list[Problem]:
    """PyYAML silently keeps the last of two equal keys; a file with one is almost surely a mistake."""
    if id(node) in visited:  # anchors and aliases share nodes, and may even form cycles
        return []
    visited.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        return [p for i, item in enumerate(node.value) for p in _duplicate_key_problems(item, (*loc, i), visited)]
    if not isinstance(node, yaml.MappingNode):
        return []
    problems, lines = [], {}
    for key, value in node.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else None
        if name in lines and name != "<<":
            problems.append(Problem(_path((*loc, name)), key.start_mark.line + 1, f"{name!r} appears twice (first "
                                    f"on line {lines[name]}); YAML would keep only the last one, so remove one"))
        lines.setdefault(name, key.start_mark.line + 1)
        problems += _duplicate_key_problems(value, (*loc, name), visited)
    return problems


def problem_at(loc: Loc, message: str, root: yaml.Node | None) -> Problem:
    """A problem at `loc` (pydantic's location), on the line of the deepest part of it in the file."""
    return Problem(_path(loc), _line(root, loc), message)


def _path(loc: Loc) -> str:
    path = ""
    for part in loc:
        if part == "[key]":
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _line(root: yaml.Node | None, loc: Loc) -> int | None:
    """Line of the deepest part of `loc` present in the file (the key's line for a mapping entry)."""
    if root is None:
        return None
    line, node = root.start_mark.line + 1, root
    for part in loc:
        step = _child(node, part)
        if step is None:
            break
        line, node = step
    return line


def _child(node: yaml.Node, part: str | int) -> tuple[int, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in reversed(node.value):  # the last of equal keys is the one that counts
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key.start_mark.line + 1, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part].start_mark.line + 1, node.value[part]
    return None


# --- friendly messages ---------------------------------------------------------------------------------------------
_EXPECTED = {
    "int": "a whole number", "float": "a number", "bool": "true or false", "string": "text",
    "list": "a list (one '- item' per line)", "dict": "a mapping (indented 'key: value' lines)",
    "model": "a mapping (indented 'key: value' lines)",
}
_BOUNDS = {"greater_than": ("gt", "greater than"), "greater_than_equal": ("ge", "at least"),
           "less_than": ("lt", "less than"), "less_than_equal": ("le", "at most")}


def friendly_message(err: dict[str, Any], model: type[BaseModel]) -> str:
    """Rewrite one pydantic error (of validating `model`) into what is wrong and how to fix it."""
    kind, loc = err["type"], tuple(err["loc"])
    rewrite = {"extra_forbidden": _unknown_key_message, "missing": _missing_message,
               "literal_error": _literal_message, "invalid_key": _key_message}.get(kind)
    if rewrite is not None:
        return rewrite(loc, err, model)
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"must be {words} {err['ctx'][key]}, got {_show(err['input'])}"
    if kind == "finite_number":
        return f"must be a finite number, got {_show(err['input'])}"
    if kind.split("_")[0] in _EXPECTED and kind.endswith(("_type", "_parsing", "_from_float")):
        return _type_message(kind, err["input"])
    return err["msg"].removeprefix("Value error, ")


def _type_message(kind: str, value: Any) -> str:
    if value is None:
        return "has no value (an empty `key:` reads as null); write a value or remove the key"
    shown = _show(value) if isinstance(value, str) else f"{_show(value)} ({_kind(value)})"
    message = f"expected {_EXPECTED[kind.split('_')[0]]}, got {shown}"
    if kind.startswith("string") and isinstance(value, (bool, int, float)):
        message += "; put it in quotes (YAML reads yes/no/on/off/true/false and numbers as non-text)"
    return message


def _unknown_key_message(loc: Loc, err: dict[str, Any], model: type[BaseModel]) -> str:
    key, section = str(loc[-1]), _model_at(model, loc[:-1])
    fields = list(section.model_fields) if section is not None else []
    allowed = f" (known keys here: {', '.join(fields)})" if fields else ""
    return f"unknown key {key!r}{did_you_mean(key, fields)}{allowed}"


def _missing_message(loc: Loc, err: dict[str, Any], model: type[BaseModel]) -> str:
    section = _model_at(model, loc[:-1])
    field = section.model_fields.get(str(loc[-1])) if section is not None else None
    about = f": {field.description}" if field is not None and field.description else ""
    return f"required key {loc[-1]!r} is missing{about}"


def _literal_message(loc: Loc, err: dict[str, Any], model: type[BaseModel]) -> str:
    allowed = _literal_values(model, loc)
    if not allowed:
        return f"{_show(err['input'])} is not allowed; expected {err['ctx']['expected']}"
    words = [str(v) for v in allowed]
    return (f"{_show(err['input'])} is not allowed; use one of: {', '.join(words)}"
            f"{did_you_mean(str(err['input']), words)}")


def _key_message(loc: Loc, err: dict[str, Any], model: type[BaseModel]) -> str:
    return f"key {_show(err['input'])} is not text; put it in quotes"


def _show(value: Any) -> str:
    return reprlib.repr(value)  # bounded: YAML aliases can make a small file an enormous structure


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    kinds = {str: "text", list: "a list", dict: "a mapping", type(None): "empty"}
    return kinds.get(type(value), type(value).__name__)


# --- the schema at a location ----------------------------------------------------------------------------
def _annotation_at(model: type[BaseModel], loc: Loc) -> Any:
    """The schema type at `loc` under `model`, or None when `loc` leaves the schema."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            current = field.annotation if field is not None else None
        elif get_origin(current) in (list, dict):
            current = get_args(current)[0 if part == "[key]" or get_origin(current) is list else 1]
        else:
            return None
    return current


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated[...] and Optional[...]."""
    while get_origin(annotation) is Annotated or (get_origin(annotation) in (Union, types.UnionType)
                                                  and type(None) in get_args(annotation)):
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0]
    return annotation


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    found = _unwrap(_annotation_at(model, loc))
    return found if isinstance(found, type) and issubclass(found, BaseModel) else None


def _literal_values(model: type[BaseModel], loc: Loc) -> tuple[Any, ...]:
    annotation = _unwrap(_annotation_at(model, loc))
    return get_args(annotation) if get_origin(annotation) is Literal else ()
