"""The generic YAML + pydantic reader, on a tiny recipe schema of its own: every problem at its line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Annotated, Any, Literal

import pytest
from pydantic import Field, ValidationError, model_validator

from bricks.errors import InvalidInputError
from bricks.yamlconfig import (
    ConfigError,
    ConfigFormat,
    Issue,
    Section,
    did_you_mean,
    located_error,
    none_as,
)


class Step(Section):
    name: str
    weight: float = Field(1.0, ge=0)


class Retry(Section):
    times: int = Field(3, ge=0, le=10)
    backoff: Literal["linear", "exponential"] = "linear"


def recipe_checks(parts: dict[str, Any]) -> list[Issue]:
    seen: set[str] = set()
    issues = []
    for i, step in enumerate(parts.get("steps") or []):
        if step.name in seen:
            issues.append((("steps", i, "name"), f"step {step.name!r} is listed twice"))
        seen.add(step.name)
    return issues


class Recipe(Section):
    title: str = Field(description="what the recipe makes")
    steps: Annotated[list[Step], none_as(list)] = Field(default_factory=list)
    retry: Annotated[Retry, none_as(dict)] = Field(default_factory=Retry)

    @model_validator(mode="after")
    def _checks(self) -> Recipe:
        issues = recipe_checks({name: getattr(self, name) for name in type(self).model_fields})
        if issues:
            raise located_error(type(self).__name__, issues)
        return self


class RecipeError(ConfigError):
    pass


RECIPE = ConfigFormat(Recipe, noun="recipe", error=RecipeError, example="recipes/bread.yaml",
                      cross_checks=recipe_checks)


def problems(text: str) -> list:
    with pytest.raises(RecipeError) as info:
        RECIPE.parse(textwrap.dedent(text), "r.yaml")
    return [(p.path, p.line, p.message) for p in info.value.problems]


def test_a_good_file():
    recipe, root = RECIPE.parse("title: bread\nsteps:\n  - {name: knead, weight: 2}\nretry:\n", "r.yaml")
    assert recipe.steps[0].weight == 2.0 and recipe.retry.times == 3 and root.start_mark.line == 0


@pytest.mark.parametrize(("text", "path", "line", "words"), [
    ("title: x\nsteps:\n  - name: a\n    wieght: 2\n", "steps[0].wieght", 4, ["unknown key 'wieght'",
                                                                          "did you mean 'weight'", "name, weight"]),
    ("title: x\nretry: {backoff: exponentail}\n", "retry.backoff", 2, ["use one of: linear, exponential",
                                                                       "did you mean 'exponential'"]),
    ("title: x\nretry:\n  times: 11\n", "retry.times", 3, ["must be at most 10, got 11"]),
    ("title: x\nsteps:\n  - {name: a, weight: heavy}\n", "steps[0].weight", 3, ["expected a number", "'heavy'"]),
    ("steps: []\n", "title", 1, ["required key 'title' is missing: what the recipe makes"]),
    ("title: yes\n", "title", 1, ["expected text", "quotes"]),
    ("title: x\ntitle: y\n", "title", 2, ["appears twice (first on line 1)"]),
    ("title: x\nsteps: {a: 1}\n", "steps", 2, ["expected a list"]),
])
def test_each_mistake_at_its_path_and_line(text, path, line, words):
    ((got_path, got_line, message),) = problems(text)
    assert (got_path, got_line) == (path, line)
    assert all(word in message for word in words), message


def test_whole_file_problems():
    ((_, line, message),) = problems("")
    assert line is None and "a recipe needs at least `title:` (see recipes/bread.yaml)" in message
    ((_, line, message),) = problems("- title: x\n")
    assert line == 1 and "the top level is a list, but a recipe is a mapping" in message
    ((_, line, message),) = problems("title: [x\nretry: {}\n")
    assert line is not None and "YAML syntax error" in message


def test_cross_checks_run_beside_field_errors():
    got = problems("""\
        title: x
        steps:
          - {name: a}
          - {name: a}
        retry: {times: -1}
        """)
    assert [(path, line) for path, line, _ in got] == [("steps[1].name", 4), ("retry.times", 5)]


def test_python_validation_raises_the_cross_checks_at_their_location():
    with pytest.raises(ValidationError) as info:
        Recipe.model_validate({"title": "x", "steps": [{"name": "a"}, {"name": "a"}]})
    assert [e["loc"] for e in info.value.errors()] == [("steps", 1, "name")]


def test_error_text_and_type(tmp_path):
    with pytest.raises(RecipeError) as info:
        RECIPE.parse("title: x\nretry: {times: 11, backof: linear}\n", "r.yaml")
    err = info.value
    assert isinstance(err, InvalidInputError) and err.status == 422
    assert str(err).splitlines() == [
        "r.yaml:2: retry.times: must be at most 10, got 11",
        "r.yaml:2: retry.backof: unknown key 'backof'; did you mean 'backoff'? (known keys here: times, backoff)",
    ]


def test_files(tmp_path):
    with pytest.raises(RecipeError, match="recipe file does not exist; check the path .examples are in recipes/"):
        RECIPE.load(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="is a folder"):
        RECIPE.load(tmp_path)
    path = tmp_path / "r.yaml"
    path.write_text("title: x\nsteps:\n  - {name: a}\n")
    recipe, root = RECIPE.load(path)
    err = RECIPE.error_at([(("steps", 0, "name"), "no such step")], root, str(path))
    assert isinstance(err, RecipeError) and str(err) == f"{path}:3: steps[0].name: no such step"


def test_did_you_mean():
    assert did_you_mean("gian", ["gain", "alias"]) == "; did you mean 'gain'?"
    assert did_you_mean("zzz", ["gain"]) == ""


def test_torch_free():
    code = "import sys, bricks.yamlconfig; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
