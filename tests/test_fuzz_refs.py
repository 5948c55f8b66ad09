"""The one ref grammar (bricks/refs.py), fuzzed through every place a ref comes in: the parser, the registry,
a manifest, the CLI and the HTTP `bricks` field. A bad ref is refused with the same words everywhere; an
accepted name can never be a path (no separators, never `.` or `..`); a tag never looks like a version."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bricks.errors import BrickError, InvalidInputError
from bricks.refs import BrickRef, check_tag, parse_ref

EXAMPLES = int(os.environ.get("BRICK_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

NAMES = st.one_of(st.sampled_from(["fr", "lang-fr", "a..b", "..", ".", "a/b", "../fr", "fr/..", "a\\b", "C:fr", "Fr",
                                   "fr ", " fr", "fr\n", "", "-fr", "_fr", "x" * 65, "é", "fr\x00", "~fr", "%2e%2e"]),
                  st.from_regex(r"[a-z0-9][a-z0-9._/\\-]{0,8}", fullmatch=True))
SELECTORS = st.one_of(st.sampled_from(["", "latest", "1", "1.0", "1.0.0", "^1", "^1.0", "~1", "~1.0", "v1", "v1.2",
                                       "V1.2", "01", "1.02", "1.0.0.0", "1.0.0-rc1", "stable", "Stable", "st able",
                                       "@", "^", "~", "../x", "a/b", "-1", "1e3", "١"]),
                      st.from_regex(r"[v~^]?[0-9a-z.]{0,6}", fullmatch=True))
REFS = st.one_of(st.text(max_size=30), NAMES, st.builds(lambda n, s: f"{n}@{s}", NAMES, SELECTORS))
TAGS = st.one_of(SELECTORS, st.text(max_size=12))


def grammar_error(ref: str) -> InvalidInputError | None:
    try:
        parse_ref(ref)
    except InvalidInputError as err:
        return err
    return None


@FUZZ
@given(REFS)
def test_the_parser_accepts_no_path_and_refuses_with_its_own_error(ref):
    try:
        parsed = parse_ref(ref)
    except InvalidInputError as err:
        assert repr(ref) in err.problem and err.fix  # names the ref it refuses, says the grammar
        return
    assert isinstance(parsed, BrickRef)
    assert not re.search(r"[/\\:\s\x00]", parsed.name) and parsed.name not in (".", "..")
    assert parsed.name == parsed.name.lower() and 1 <= len(parsed.name) <= 64


@FUZZ
@given(TAGS)
def test_a_storable_tag_is_always_read_back_as_a_tag(tag):
    """A tag can never shadow a version or a range: what check_tag stores, parse_ref reads as a tag."""
    try:
        check_tag(tag)
    except InvalidInputError:
        parsed = grammar_error(f"fr@{tag}") is None and parse_ref(f"fr@{tag}")
        assert not parsed or parsed.kind != "tag" or tag == "latest", f"{tag!r} is refused but reads as a tag"
        return
    assert parse_ref(f"fr@{tag}").kind == "tag"


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_host):
    from registry import Registry
    from tests.conftest import labelled_brick

    reg = Registry(tmp_path_factory.mktemp("refs") / "registry")
    reg.publish(labelled_brick(tiny_host, name="fr"), tags=["stable"])
    return reg


@FUZZ
@given(REFS)
def test_the_registry_refuses_with_the_parser_s_words(registry, ref):
    expected = grammar_error(ref)
    for call in (registry.resolve, registry.get, registry.lineage, lambda r: registry.tag(r, "fuzz")):
        try:
            call(ref)
        except BrickError as err:
            if expected is not None:
                assert str(err) == str(expected)
            continue
        assert expected is None


@FUZZ
@given(REFS.filter(lambda r: not any(0xD800 <= ord(c) <= 0xDFFF for c in r)))
def test_a_manifest_refuses_with_the_parser_s_words(ref):
    from serving.manifest import parse_manifest

    expected = grammar_error(ref)
    text = yaml.safe_dump({"name": "m", "host": {"spec": "smollm2-135m-instruct"}, "bricks": [{"ref": ref}]})
    try:
        parse_manifest(text)
    except BrickError as err:
        if expected is not None:
            assert f"bricks[0].ref: {expected.problem}; {expected.fix}" in str(err)
        return
    assert expected is None


@FUZZ
@given(REFS.filter(lambda r: "\x00" not in r and not r.startswith("-")))
def test_the_cli_refuses_with_the_parser_s_words(registry, ref):
    from click.testing import CliRunner

    from cli.main import cli

    expected = grammar_error(ref)
    for args in (["show", ref], ["tag", ref, "fuzz"]):
        res = CliRunner().invoke(cli, ["--registry", str(registry.root), *args])
        assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
        if expected is not None:
            assert res.exit_code == 1 and str(expected) in res.output, res.output


@pytest.fixture(scope="module")
def http(tmp_path_factory, tiny_host):
    from tests.serving.tiny_app import client_for, tiny_service

    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("refs-http")
    mp.setenv("BRICK_CACHE", str(root / "cache"))
    with client_for(tiny_service(root, tiny_host)) as client:
        yield client
    mp.undo()


@FUZZ
@given(REFS, st.booleans())
def test_the_http_bricks_field_refuses_with_the_parser_s_words(http, ref, as_object):
    expected = grammar_error(ref)
    body = {"prompt": "hi", "max_tokens": 1, "bricks": [{"ref": ref} if as_object else ref]}
    r = http.post("/v1/completions", content=json.dumps(body), headers={"content-type": "application/json"})
    if any(0xD800 <= ord(c) <= 0xDFFF for c in ref):
        assert r.status_code == 422 and "surrogate" in r.text
    elif expected is not None:
        assert r.status_code == 422 and r.json()["error"]["message"] == str(expected)
    else:
        assert r.status_code in (200, 404), r.text  # 404: a well-formed ref to no brick
