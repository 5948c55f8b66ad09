"""Manifest schema: the examples validate, and each kind of mistake is reported at its path and line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from bricks.errors import BrickError, InvalidInputError, NotFoundError
from serving.manifest import (
    BrickEntry,
    Manifest,
    ManifestError,
    check_ref,
    load_manifest,
    manifest_json_schema,
    parse_manifest,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests").glob("*.yaml"))
MINIMAL = "name: demo\nhost:\n  spec: smollm2-135m-instruct\n"


def problems_of(text: str) -> list:
    with pytest.raises(ManifestError) as info:
        parse_manifest(textwrap.dedent(text), "m.yaml")
    return info.value.problems


def marked_line(text: str) -> int:
    """The 1-based line carrying the `# <-` marker: where a problem must be reported."""
    return next(i for i, line in enumerate(textwrap.dedent(text).splitlines(), 1) if "# <-" in line)


# --- valid manifests -------------------------------------------------------------------------------------
def test_there_are_examples():
    names = {p.name for p in EXAMPLES}
    assert {"smollm2-plain.yaml", "smollm2-languages.yaml", "smollm2-reference.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(path):
    manifest = load_manifest(path)
    assert manifest.name == path.stem
    for members in manifest.assemblies.values():
        assert all(manifest.entry_for(key) is not None for key in members)


def test_examples_show_what_they_are_for():
    languages = parse_manifest((ROOT / "manifests/smollm2-languages.yaml").read_text())
    assert languages.routing.policy == "retrieval" and languages.assemblies
    assert {"lang-fr@^1", "lang-de@^1", "code@^1", "math@^1"} <= {b.ref for b in languages.bricks}
    reference = parse_manifest((ROOT / "manifests/smollm2-reference.yaml").read_text())
    assert reference.engine.kind == "transformers" and reference.routing.policy == "static"
    assert any(b.generated_offset_scale is not None for b in reference.bricks)  # steer-fr: both strengths
    assert any(b.gain is not None for b in reference.bricks)
    plain = parse_manifest((ROOT / "manifests/smollm2-plain.yaml").read_text())
    assert plain.bricks == [] and plain.engine.kind == "vllm"


def test_name_and_host_are_enough():
    m = parse_manifest(MINIMAL)
    assert m.bricks == [] and m.assemblies == {} and m.description is None
    assert (m.routing.policy, m.engine.kind, m.engine.neuron_path, m.host.growth_slots) == ("static", "vllm",
                                                                                           "gain_table", 0)
    assert m.server.max_prompt_tokens + m.server.max_tokens <= m.engine.max_model_len


def test_empty_sections_read_as_empty():
    m = parse_manifest(MINIMAL + "bricks:\n  # - ref: lang-fr\nassemblies:\nrouting:\nengine:\nserver:\n")
    assert m.bricks == [] and m.assemblies == {} and m.routing.policy == "static" and m.server.port == 8000


@pytest.mark.parametrize("ref", ["lang-fr", "lang-fr@1.2.0", "lang-fr@^1.0", "lang-fr@~1.2", "lang-fr@~1.2.3",
                                 "lang-fr@1", "lang-fr@^1", "lang-fr@stable", "lang-fr@latest", "a.b_c-9@v2.x"])
def test_good_refs(ref):
    assert check_ref(ref) == ref


@pytest.mark.parametrize("ref", ["", "Lang-fr", "lang-fr@", "lang-fr@>=1", "lang-fr@~1", "lang-fr@1.2.3.4",
                                 "lang-fr@1@2", "@1", "lang fr", "lang-fr@Stable", "lang-fr@01", "x" * 65])
def test_bad_refs(ref):
    with pytest.raises(ValueError, match="is not a brick ref"):
        check_ref(ref)


def test_lookups():
    m = parse_manifest(MINIMAL + "bricks:\n  - {ref: lang-fr@^1, alias: fr}\n  - {ref: code}\n"
                                 "assemblies:\n  both: [fr, code]\n")
    assert [b.ref for b in m.assembly("both")] == ["lang-fr@^1", "code"]
    assert m.entry_for("fr") is m.entry_for("lang-fr@^1") is m.bricks[0]
    assert m.entry_for("nope") is None
    with pytest.raises(NotFoundError, match="no assembly 'nope'"):
        m.assembly("nope")


def test_json_schema():
    schema = manifest_json_schema()
    json.dumps(schema)
    assert {"name", "host", "bricks", "assemblies", "routing", "engine", "server"} <= set(schema["properties"])
    assert set(schema["required"]) == {"name", "host"}
    assert {"HostSpec", "BrickEntry", "RoutingConfig", "EngineConfig", "ServerConfig"} <= set(schema["$defs"])
    assert schema["$defs"]["EngineConfig"]["additionalProperties"] is False
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    import yaml

    for path in EXAMPLES:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)


# --- mistakes: (what, YAML with `# <-` on the line to blame, path, words the message must hold) -------------
MISTAKES = [
    ("unknown top-level key", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        enigne: {kind: vllm}  # <-
        """, "enigne", ["unknown key 'enigne'", "did you mean 'engine'"]),
    ("misspelt nested key", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        bricks:
          - ref: lang-fr
            gian: 2.0  # <-
        """, "bricks[0].gian", ["unknown key 'gian'", "did you mean 'gain'", "ref, gain, offset_scale"]),
    ("wrong type", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        bricks:
          - ref: lang-fr
          - ref: lang-de
            gain: high  # <-
        """, "bricks[1].gain", ["expected a number", "'high'"]),
    ("NaN gain", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        bricks:
          - ref: lang-fr
            gain: .nan  # <-
        """, "bricks[0].gain", ["finite number", "nan"]),
    ("bad policy", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        routing:
          policy: retreival  # <-
        """, "routing.policy", ["'retreival' is not allowed", "explicit, static, retrieval",
                                "did you mean 'retrieval'"]),
    ("bad LoRA rank", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        engine:
          max_lora_rank: 24  # <-
        """, "engine.max_lora_rank", ["24 is not allowed", "1, 8, 16, 32, 64, 128, 256, 320, 512"]),
    ("malformed ref", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        bricks:
          - ref: lang-fr@>=1.0  # <-
        """, "bricks[0].ref", ["'>=1.0' after '@'", "name@^1.0"]),
    ("duplicate alias", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        bricks:
          - {ref: lang-fr, alias: fr}
          - {ref: lang-fr-v2, alias: fr}  # <-
        """, "bricks[1].alias", ["alias 'fr' is already used by bricks[0]"]),
    ("duplicate ref", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        bricks:
          - ref: lang-fr@^1
          - ref: lang-fr@^1  # <-
        """, "bricks[1].ref", ["already listed as bricks[0]"]),
    ("alias that looks like a ref", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        bricks:
          - ref: lang-fr
            alias: lang-fr@1  # <-
        """, "bricks[0].alias", ["looks like a brick ref"]),
    ("alias that is another brick's name", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        bricks:
          - ref: lang-fr
            alias: code  # <-
          - ref: code@2
        """, "bricks[0].alias", ["also the name of bricks[1]", "ambiguous"]),
    ("assembly naming an unknown alias", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        bricks:
          - {ref: lang-fr, alias: fr}
        assemblies:
          french:
            - fr
            - frr  # <-
        """, "assemblies.french[1]", ["'frr' is not a brick of this manifest", "did you mean 'fr'"]),
    ("assembly with the manifest's name", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        bricks: [{ref: lang-fr}]
        assemblies:
          demo: [lang-fr]  # <-
        """, "assemblies.demo", ["manifest's own name"]),
    ("retrieval with nothing routable", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        bricks:
          - {ref: lang-fr, routable: false}
        routing:
          policy: retrieval  # <-
        """, "routing.policy", ["routable: true", "policy: static"]),
    ("port out of range", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        server:
          port: 70000  # <-
        """, "server.port", ["at most 65535", "70000"]),
    ("prompt + tokens over max_model_len", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        engine: {max_model_len: 1024}
        server:
          max_tokens: 512
          max_prompt_tokens: 1000  # <-
        """, "server.max_prompt_tokens", ["1512 is more than engine.max_model_len (1024)",
                                          "lower max_prompt_tokens to 512"]),
    ("missing required key", """\
        name: demo
        host:  # <-
          growth_slots: 4
        """, "host.spec", ["required key 'spec' is missing", "Hugging Face model folder"]),
    ("bad manifest name", """\
        name: French Assistant  # <-
        host: {spec: smollm2-135m-instruct}
        """, "name", ["'French Assistant' is not a valid name", "lowercase"]),
    ("YAML boolean where text is expected", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        bricks:
          - ref: lang-fr
            alias: on  # <-
        """, "bricks[0].alias", ["expected text", "True", "quotes"]),
    ("a list where a mapping belongs", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        routing: [static]  # <-
        """, "routing", ["expected a mapping", "['static']"]),
    ("the key itself in api_key_env", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        server:
          api_key_env: sk-abc123  # <-
        """, "server.api_key_env", ["not an environment variable name", "never the key itself"]),
    ("a key given twice", """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        bricks:
          - ref: lang-fr
            gain: 0.0
            gain: 2.0  # <-
        """, "bricks[0].gain", ["appears twice", "first on line 5"]),
    ("growth slots out of range", """\
        name: demo
        host:
          spec: smollm2-135m-instruct
          growth_slots: -1  # <-
        """, "host.growth_slots", ["at least 0"]),
]


@pytest.mark.parametrize("what, text, path, words", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistake_is_reported_at_its_path_and_line(what, text, path, words):
    problems = problems_of(text)
    assert len(problems) == 1, problems
    problem = problems[0]
    assert problem.path == path
    assert problem.line == marked_line(text)
    for word in words:
        assert word in problem.message


def test_yaml_syntax_error_has_its_line():
    problems = problems_of("name: demo\nhost:\n  spec: [smollm2\nserver: {port: 1}\n")
    assert len(problems) == 1 and problems[0].line is not None and problems[0].line >= 3
    assert "YAML syntax error" in problems[0].message


def test_tab_indentation_is_explained():
    (problem,) = problems_of("name: demo\nhost:\n\tspec: smollm2-135m-instruct\n")
    assert problem.line == 3 and "spaces, not tabs" in problem.message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(text):
    (problem,) = problems_of(text)
    assert "empty" in problem.message and "name:" in problem.message


@pytest.mark.parametrize("text, kind", [("- name: demo\n- host: x\n", "a list"), ("just words\n", "text")])
def test_top_level_must_be_a_mapping(text, kind):
    (problem,) = problems_of(text)
    assert problem.line == 1 and f"the top level is {kind}" in problem.message


def test_two_documents_are_one_too_many():
    (problem,) = problems_of(MINIMAL + "---\n" + MINIMAL)
    assert problem.line == 4 and "single document" in problem.message


def test_every_problem_is_reported_at_once():
    text = """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        bricks:
          - {ref: lang-fr, alias: fr}
          - {ref: lang-fr, alias: fr}
          - {ref: math, gian: 2}
        routing: {policy: dynamic}
        engine: {max_lora_rank: 3, max_model_len: 512}
        server: {port: 0}
        colour: blue
        """
    problems = problems_of(text)
    assert [(p.path, p.line) for p in problems] == [
        ("bricks[2].gian", 6), ("routing.policy", 7), ("engine.max_lora_rank", 8), ("server.port", 9),
        ("colour", 10)]
    fixed = text.replace("gian", "gain").replace("dynamic", "static").replace(": 3,", ": 8,").replace(": 0}", ": 1}")
    problems = problems_of(fixed.replace("colour: blue\n", ""))
    assert [(p.path, p.line) for p in problems] == [("bricks[1].ref", 5), ("bricks[1].alias", 5),
                                                    ("server.max_prompt_tokens", 9)]


def test_cross_field_checks_run_beside_field_errors():
    problems = problems_of("""\
        name: demo
        host: {spec: smollm2-135m-instruct}
        bricks:
          - {ref: lang-fr, alias: fr}
        assemblies: {french: [fr, de]}
        engine: {max_lora_rank: 3}
        extra: 1
        """)
    assert [p.path for p in problems] == ["assemblies.french[1]", "engine.max_lora_rank", "extra"]


def test_error_text_lists_problems_one_per_line():
    with pytest.raises(ManifestError) as info:
        parse_manifest("name: demo\nhost: {spec: x}\nbricks: [{ref: a, gian: 1}]\nserver: {port: 0}\n", "fr.yaml")
    err = info.value
    assert isinstance(err, InvalidInputError) and isinstance(err, BrickError) and err.status == 422
    lines = str(err).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("fr.yaml:3: bricks[0].gian: unknown key 'gian'")
    assert lines[1].startswith("fr.yaml:4: server.port: must be at least 1")


def test_python_validation_runs_the_same_checks():
    with pytest.raises(ValidationError) as info:
        Manifest.model_validate({"name": "demo", "host": {"spec": "x"}, "bricks": [{"ref": "a"}],
                                 "assemblies": {"one": ["b"]}, "routing": {"policy": "retrieval"}})
    assert [e["loc"] for e in info.value.errors()] == [("assemblies", "one", 0)]
    with pytest.raises(ValidationError):
        BrickEntry(ref="a", gian=1.0)


# --- load_manifest -----------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="does not exist") as info:
        load_manifest(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in str(info.value)


def test_host_folder_is_checked_and_made_absolute(tmp_path):
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "models" / "tiny" / "config.json").write_text("{}")
    path = tmp_path / "m.yaml"
    path.write_text("name: demo\nhost:\n  spec: ./models/tiny\n")
    assert load_manifest(path).host.spec == str(tmp_path / "models" / "tiny")
    path.write_text("name: demo\nhost:\n  spec: ./models/missing\n")
    with pytest.raises(ManifestError, match="does not exist") as info:
        load_manifest(path)
    assert info.value.problems[0].line == 3 and info.value.problems[0].path == "host.spec"
    path.write_text("name: demo\nhost:\n  spec: smollm9\n")
    with pytest.raises(ManifestError, match="neither a built-in host"):
        load_manifest(path)


HOST = {"fingerprint": "sha256:aaaa1111aaaa", "arch": "llama", "n_layers": 2, "d_model": 8, "d_ff": 16,
        "name": "smollm2-135m-instruct"}
OTHER_HOST = {**HOST, "fingerprint": "sha256:bbbb2222bbbb", "name": "tinyllama"}


class FakeRegistry:
    """name -> (kind, host, params, growth slots ({layer: k}, or k in layer 3), neurons with offsets?); any
    selector resolves to 1.0.0."""

    def __init__(self, bricks: dict):
        self.bricks = bricks

    def resolve(self, ref: str):
        from bricks.format import BrickMeta, HostRef

        name = ref.partition("@")[0]
        if name not in self.bricks:
            raise NotFoundError(f"no brick named {name!r} in the registry", "list bricks with `brick ls`")
        kind, host, params, _, _ = self.bricks[name]
        meta = BrickMeta(name=name, kind=kind, host=HostRef(**host), params=params)
        return SimpleNamespace(name=name, version="1.0.0", digest="sha256:" + name, kind=kind,
                               host_fingerprint=host["fingerprint"], meta=meta)

    def get(self, ref: str):
        _, _, _, slots, offsets = self.bricks[ref.partition("@")[0]]
        neurons = {0: SimpleNamespace(offset=object() if offsets else None, generated_offset=None)}
        per_layer = slots if isinstance(slots, dict) else ({3: slots} if slots else {})
        return SimpleNamespace(growth_slots=lambda: max(per_layer.values(), default=0), parts=neurons,
                               per_layer=lambda: per_layer)


@pytest.fixture
def registry():
    return FakeRegistry({
        "lang-fr": ("neurons", HOST, {"has_offset": False}, 0, False),
        "steer-fr": ("neurons", HOST, {}, 0, True),  # says nothing in params: get() is asked
        "tiny-fr": ("neurons", OTHER_HOST, {}, 0, False),
        "grow-facts": ("growth", HOST, {}, 8, False),
        "grow-more": ("growth", HOST, {}, {3: 2, 7: 6}, False),
        "style": ("lora", HOST, {}, 0, False),
    })


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def load_problems(path: Path, registry, **kwargs) -> list:
    from bricks.format import HostRef

    with pytest.raises(ManifestError) as info:
        load_manifest(path, registry=registry, host=HostRef(**HOST), **kwargs)
    return info.value.problems


def test_resolves_every_brick(tmp_path, registry):
    from bricks.format import HostRef

    path = write(tmp_path, """\
        name: demo
        host: {spec: smollm2-135m-instruct, growth_slots: 8}
        bricks:
          - ref: lang-fr@^1
          - {ref: steer-fr@1, offset_scale: 2.0}
          - ref: grow-facts
          - ref: style@stable
        """)
    m = load_manifest(path, registry=registry, host=HostRef(**HOST))
    assert set(m.resolved) == {"lang-fr@^1", "steer-fr@1", "grow-facts", "style@stable"}
    assert m.resolved["lang-fr@^1"].version == "1.0.0"


def test_unknown_brick(tmp_path, registry):
    path = write(tmp_path, """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        bricks:
          - ref: lang-fr
          - ref: lang-xx@^1  # <-
        """)
    (problem,) = load_problems(path, registry)
    assert (problem.path, problem.line) == ("bricks[1].ref", 5)
    assert "no brick named 'lang-xx'" in problem.message and "brick ls" in problem.message


def test_brick_for_another_host(tmp_path, registry):
    path = write(tmp_path, "name: demo\nhost: {spec: smollm2-135m-instruct}\nbricks:\n  - ref: tiny-fr\n")
    (problem,) = load_problems(path, registry)
    assert (problem.path, problem.line) == ("bricks[0].ref", 4)
    assert "built for host tinyllama (bbbb2222bbbb)" in problem.message
    assert "serves smollm2-135m-instruct (aaaa1111aaaa)" in problem.message


def test_growth_slots_too_small(tmp_path, registry):
    path = write(tmp_path, "name: demo\nhost:\n  spec: smollm2-135m-instruct\n  growth_slots: 4\n"
                           "bricks:\n  - ref: grow-facts\n")
    (problem,) = load_problems(path, registry)
    assert (problem.path, problem.line) == ("host.growth_slots", 4)
    assert "needs 8 growth slots" in problem.message and "growth_slots: 8" in problem.message


def test_resident_growth_bricks_must_fit_side_by_side(tmp_path, registry):
    """growth_path gain_table (the default) writes every growth brick into its own slots: 8 + 2 in layer 3."""
    text = ("name: demo\nhost:\n  spec: smollm2-135m-instruct\n  growth_slots: 8\n"
            "bricks:\n  - ref: grow-facts\n  - ref: grow-more\n")
    (problem,) = load_problems(write(tmp_path, text), registry)
    assert (problem.path, problem.line) == ("host.growth_slots", 4)
    assert "(bricks[0], bricks[1]) are resident side by side and need 10 growth slots in layer 3" in problem.message
    assert "growth_slots: 10" in problem.message and "growth_path: lora" in problem.message
    load_manifest(write(tmp_path, text.replace("growth_slots: 8", "growth_slots: 10")), registry=registry)
    load_manifest(write(tmp_path, text + "engine: {growth_path: lora}\n"), registry=registry)  # slots shared


def test_growth_path_values(tmp_path):
    assert parse_manifest("name: demo\nhost: {spec: smollm2-135m-instruct}\n").engine.growth_path == "gain_table"
    with pytest.raises(ManifestError) as info:
        parse_manifest("name: demo\nhost: {spec: smollm2-135m-instruct}\nengine: {growth_path: slots}\n")
    (problem,) = info.value.problems
    assert problem.path == "engine.growth_path" and "gain_table, lora" in problem.message


def test_offsets_cannot_go_through_lora(tmp_path, registry):
    text = "name: demo\nhost: {spec: smollm2-135m-instruct}\nbricks:\n  - ref: steer-fr\nengine: {neuron_path: lora}\n"
    (problem,) = load_problems(write(tmp_path, text), registry)
    assert problem.path == "bricks[0].ref" and "neuron_path: lora" in problem.message
    load_manifest(write(tmp_path, text.replace("ref: steer-fr", "{ref: steer-fr, offset_scale: 0}")), registry=registry)


def test_offset_scale_needs_an_offset(tmp_path, registry):
    path = write(tmp_path, "name: demo\nhost: {spec: smollm2-135m-instruct}\nbricks:\n"
                           "  - {ref: lang-fr, offset_scale: 2}\n  - {ref: style, offset_scale: 0.5}\n")
    problems = load_problems(path, registry)
    assert [(p.path, p.line) for p in problems] == [("bricks[0].offset_scale", 4), ("bricks[1].offset_scale", 5)]
    assert "no offset to scale" in problems[0].message


def test_two_refs_to_one_version(tmp_path, registry):
    path = write(tmp_path, "name: demo\nhost: {spec: smollm2-135m-instruct}\nbricks:\n"
                           "  - ref: lang-fr@^1\n  - ref: lang-fr@1.0.0\n")
    (problem,) = load_problems(path, registry)
    assert problem.path == "bricks[1].ref" and "same version as bricks[0]" in problem.message


def test_registry_problems_are_collected(tmp_path, registry):
    path = write(tmp_path, """\
        name: demo
        host: {spec: smollm2-135m-instruct}
        bricks:
          - ref: nope
          - ref: tiny-fr
          - ref: grow-facts
        """)
    problems = load_problems(path, registry)
    assert [(p.path, p.line) for p in problems] == [("host.growth_slots", 2), ("bricks[0].ref", 4),
                                                    ("bricks[1].ref", 5)]


def test_phases_in_a_manifest(tmp_path, registry):
    from bricks.format import HostRef

    text = ("name: demo\nhost: {spec: smollm2-135m-instruct}\nbricks:\n"
            "  - {ref: lang-fr, phase: prompt}\n  - {ref: steer-fr, phase: generated, generated_offset_scale: 0.5}\n")
    m = load_manifest(write(tmp_path, text), registry=registry, host=HostRef(**HOST))
    assert [(b.phase, b.generated_offset_scale) for b in m.bricks] == [("prompt", None), ("generated", 0.5)]
    with pytest.raises(ManifestError) as info:
        parse_manifest("name: demo\nhost: {spec: smollm2-135m-instruct}\nbricks:\n  - {ref: a, phase: decode}\n")
    assert [p.path for p in info.value.problems] == ["bricks[0].phase"]
    bad = ("name: demo\nhost: {spec: smollm2-135m-instruct}\nbricks:\n  - {ref: style, phase: prompt}\n"
           "  - {ref: lang-fr, generated_offset_scale: 2}\n")
    problems = load_problems(write(tmp_path, bad), registry)
    assert [p.path for p in problems] == ["bricks[0].phase", "bricks[1].generated_offset_scale"]
    lora_path = text + "engine: {neuron_path: lora}\n"
    assert any(p.path == "bricks[0].phase" and "gain_table" in p.message
               for p in load_problems(write(tmp_path, lora_path), registry))
