from __future__ import annotations

import pytest

from bricks.errors import InvalidInputError
from bricks.refs import Version, check_name, check_tag, parse_ref, parse_version

V = [Version(*map(int, s.split("."))) for s in ("0.9.0", "1.0.0", "1.2.0", "1.2.5", "1.3.1", "2.0.0", "2.1.0")]


@pytest.mark.parametrize(("ref", "name", "selector", "kind", "parts"), [
    ("lang-fr", "lang-fr", "latest", "latest", ()),
    ("lang-fr@latest", "lang-fr", "latest", "latest", ()),
    ("lang-fr@1.2.0", "lang-fr", "1.2.0", "exact", (1, 2, 0)),
    ("a.b_c-1@stable", "a.b_c-1", "stable", "tag", ()),
    ("x@^1.0", "x", "^1.0", "caret", (1, 0)),
    ("x@^1.2.3", "x", "^1.2.3", "caret", (1, 2, 3)),
    ("x@^1", "x", "^1", "caret", (1,)),
    ("x@~1.2", "x", "~1.2", "tilde", (1, 2)),
    ("x@1", "x", "1", "partial", (1,)),
    ("x@1.2", "x", "1.2", "partial", (1, 2)),
    ("0name@0.0.0", "0name", "0.0.0", "exact", (0, 0, 0)),
    ("x@v2.x", "x", "v2.x", "tag", ()),
])
def test_parse_good_refs(ref, name, selector, kind, parts):
    r = parse_ref(ref)
    assert (r.name, r.selector, r.kind, r.parts) == (name, selector, kind, parts)


@pytest.mark.parametrize("ref", [
    "", "@1.0.0", "Upper", "-lead", "a" * 65, "has space", "x@", "x@@1", "x@1@2", "x@1.2.3.4", "x@01.2.3",
    "x@1.02", "x@^", "x@~", "x@^x", "x@1.x", "x@v1.2", "x@Stable", "x@-tag", "x@1.2.3-rc1", "x@>=1.0", "x/y",
    "x@~1", " x", "x ", "x\n", "x@1\n", "x@1 ", None, 3,
])
def test_parse_bad_refs_explain_grammar(ref):
    with pytest.raises(InvalidInputError) as e:
        parse_ref(ref)
    assert "NAME@SELECTOR" in e.value.fix


@pytest.mark.parametrize(("sel", "want"), [
    ("latest", "2.1.0"), ("1.2.0", "1.2.0"), ("1", "1.3.1"), ("1.2", "1.2.5"), ("0", "0.9.0"),
    ("^1.0", "1.3.1"), ("^1.2.3", "1.3.1"), ("^1.3.2", None), ("^2", "2.1.0"), ("^3.0", None),
    ("~1.2", "1.2.5"), ("~1.2.3", "1.2.5"), ("~1.2.6", None), ("1.2.1", None), ("4", None),
])
def test_selection(sel, want):
    picked = parse_ref(f"x@{sel}").pick(V, {})
    assert (str(picked) if picked else None) == want


@pytest.mark.parametrize(("ref", "words"), [
    ("x@v1.2", ["looks like a version", "1.2"]),
    ("x@~1", ["tilde range without a minor", "~1.0", "^1"]),
    ("x@>=1.0", ["'>=1.0' after '@' is not a version, range or tag"]),
    ("x@", ["nothing after '@'"]),
    ("X@1", ["'X' is not a brick name", "lowercase"]),
])
def test_bad_refs_say_what_is_wrong(ref, words):
    with pytest.raises(InvalidInputError) as e:
        parse_ref(ref)
    assert all(word in e.value.problem for word in words), e.value.problem


def test_names():
    assert check_name("lang-fr.v2_x") == "lang-fr.v2_x"
    for bad in ("", "Lang", "-x", "x\n", "a" * 65, "x y"):
        with pytest.raises(InvalidInputError, match="not a valid brick name"):
            check_name(bad)


def test_grammar_is_torch_free():
    import subprocess
    import sys

    code = "import sys, bricks.refs; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tag_selection():
    r = parse_ref("x@stable")
    assert r.pick(V, {"stable": Version(1, 2, 0)}) == Version(1, 2, 0)
    assert r.pick(V, {}) is None


def test_versions():
    assert parse_version("10.0.3") == (10, 0, 3)
    assert Version(1, 2, 3).bump("patch") == (1, 2, 4)
    assert Version(1, 2, 3).bump("minor") == (1, 3, 0)
    assert Version(1, 2, 3).bump("major") == (2, 0, 0)
    assert Version(1, 10, 0) > Version(1, 9, 9)
    for bad in ("1.2", "1.2.3.4", "v1.2.3", "1.02.3", "a.b.c", "1.2.3-rc"):
        with pytest.raises(InvalidInputError):
            parse_version(bad)


@pytest.mark.parametrize("tag", ["latest", "1.0", "v1", "v1.2.3", "Prod", "-x", "", "a" * 65, "^1"])
def test_bad_tags(tag):
    with pytest.raises(InvalidInputError):
        check_tag(tag)


def test_good_tags():
    for tag in ("stable", "prod-2024", "v2-beta", "rc.1"):
        assert check_tag(tag) == tag
