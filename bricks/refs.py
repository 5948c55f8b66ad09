"""Brick names, tags, versions and refs (`name`, `name@1.2.0`, `name@^1.0`, `name@stable`): the one grammar.

Torch-free, so the manifest loader, the registry and the HTTP layer all parse refs with this module.

Grammar of a ref: ``NAME[@SELECTOR]`` where SELECTOR is one of

- ``latest`` (also what a bare name means): the highest version,
- ``1.2.0``: exactly that version,
- ``1`` or ``1.2``: the highest version with that prefix,
- ``^1`` / ``^1.2`` / ``^1.2.3``: the highest version with the same major that is >= the given one,
- ``~1.2`` / ``~1.2.3``: the highest version with the same major.minor that is >= the given one
  (a tilde range needs a minor: ``~1`` would only repeat ``^1``),
- a tag name (starts with a letter, e.g. ``stable``, and does not look like a version such as ``v1.2``):
  the version the tag points to.

A ref is exact text: no spaces around it. ``latest`` is computed, never stored, so it cannot go stale
or be moved by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple, cast

from bricks.errors import InvalidInputError

Bump = Literal["patch", "minor", "major"]
SelectorKind = Literal["latest", "exact", "partial", "caret", "tilde", "tag"]

# `\Z`, not `$`: `$` also matches before a trailing newline, and "x\n" is not a name.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
_NUM = r"(0|[1-9]\d*)"
VERSION_RE = re.compile(rf"^{_NUM}\.{_NUM}\.{_NUM}\Z")
_CARET_RE = re.compile(rf"^\^{_NUM}(?:\.{_NUM})?(?:\.{_NUM})?\Z")
_TILDE_RE = re.compile(rf"^~{_NUM}\.{_NUM}(?:\.{_NUM})?\Z")
_PREFIX_RE = re.compile(rf"^{_NUM}(?:\.{_NUM})?(?:\.{_NUM})?\Z")
# Tags start with a letter so a tag can never be mistaken for a version or a range.
TAG_RE = re.compile(r"^[a-z][a-z0-9._-]{0,63}\Z")
# `v1.2` is a legal tag by TAG_RE but reads like a version; refuse it to avoid confusion.
_VERSIONISH_TAG_RE = re.compile(r"^v\d+(\.\d+)*\Z")
RESERVED_TAGS = frozenset({"latest"})

NAME_RULE = "1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
REF_FORMS = "name, name@1.2.0, name@^1.0, name@~1.2, name@1, name@tag or name@latest"
REF_GRAMMAR = (
    f"write a ref as NAME or NAME@SELECTOR ({REF_FORMS}), where SELECTOR is latest, an exact version "
    "(1.2.0), a prefix (1 or 1.2), a caret range (^1.2), a tilde range (~1.2) or a tag (stable)"
)


class Version(NamedTuple):
    """A MAJOR.MINOR.PATCH version; tuple order is semver order."""

    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    def bump(self, part: Bump) -> Version:
        if part == "major":
            return Version(self.major + 1, 0, 0)
        if part == "minor":
            return Version(self.major, self.minor + 1, 0)
        return Version(self.major, self.minor, self.patch + 1)


FIRST_VERSION = Version(1, 0, 0)


def parse_version(text: str) -> Version:
    """Parse an exact MAJOR.MINOR.PATCH version (no leading zeros, no prerelease)."""
    m = VERSION_RE.match(text)
    if not m:
        raise InvalidInputError(
            f"{text!r} is not a version",
            "write versions as MAJOR.MINOR.PATCH with plain numbers, e.g. 1.2.0",
        )
    return Version(*(int(g) for g in m.groups()))


def check_bump(bump: str) -> Bump:
    if bump not in ("patch", "minor", "major"):
        raise InvalidInputError(f"unknown version bump {bump!r}", "use one of: patch, minor, major")
    return cast(Bump, bump)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInputError(f"{name!r} is not a valid brick name", f"use {NAME_RULE}")
    return name


def check_tag(tag: str) -> str:
    """A tag that can be stored: not reserved, not version-like, within the tag grammar."""
    if tag in RESERVED_TAGS:
        raise InvalidInputError(f"the tag {tag!r} is reserved", "'latest' always means the highest version; "
                                "choose another tag name, e.g. stable")
    if not TAG_RE.match(tag) or _VERSIONISH_TAG_RE.match(tag):
        raise InvalidInputError(
            f"{tag!r} is not a valid tag name",
            "a tag starts with a lowercase letter, uses only a-z 0-9 . _ - (at most 64 characters) "
            "and must not look like a version (v1.2)",
        )
    return tag


@dataclass(frozen=True)
class BrickRef:
    """A parsed ref. `selector` is the text after '@' ('latest' for a bare name)."""

    name: str
    selector: str = "latest"
    kind: SelectorKind = "latest"
    parts: tuple[int, ...] = ()

    def __str__(self) -> str:
        return f"{self.name}@{self.selector}"

    @property
    def is_bare(self) -> bool:
        return self.kind == "latest"

    def matches(self, v: Version) -> bool:
        """Whether a version satisfies this selector (tags never match by number)."""
        p = self.parts
        if self.kind == "latest":
            return True
        if self.kind == "exact":
            return v == Version(*p)
        if self.kind == "partial":
            return tuple(v[: len(p)]) == p
        if self.kind == "caret":
            return v.major == p[0] and v >= _pad(p)
        if self.kind == "tilde":
            return tuple(v[:2]) == p[:2] and v >= _pad(p)
        return False

    def pick(self, versions: list[Version], tags: dict[str, Version]) -> Version | None:
        """The version this ref means among `versions`, or None."""
        if self.kind == "tag":
            return tags.get(self.selector)
        found = [v for v in versions if self.matches(v)]
        return max(found) if found else None


def _pad(parts: tuple[int, ...]) -> Version:
    return Version(*(parts + (0, 0, 0))[:3])


def ref_name(ref: str) -> str:
    """The brick name part of a ref's text (`lang-fr@^1` -> `lang-fr`), without checking it."""
    return ref.partition("@")[0]


def parse_ref(ref: str) -> BrickRef:
    """Parse `NAME[@SELECTOR]`; anything else raises InvalidInputError saying what is wrong and the grammar."""
    if not isinstance(ref, str):
        raise InvalidInputError(f"{ref!r} is not a brick ref: a ref is text", REF_GRAMMAR)
    name, at, selector = ref.partition("@")
    if not NAME_RE.match(name):
        raise InvalidInputError(f"{ref!r} is not a brick ref: {name!r} is not a brick name ({NAME_RULE})",
                                REF_GRAMMAR)
    if not at:
        return BrickRef(name)
    kind, parts = _parse_selector(selector)
    if kind is None:
        raise InvalidInputError(f"{ref!r} is not a brick ref: {_selector_problem(selector)}", REF_GRAMMAR)
    return BrickRef(name, selector, kind, parts)


def _parse_selector(selector: str) -> tuple[SelectorKind | None, tuple[int, ...]]:
    if selector == "latest":
        return "latest", ()
    for kind, pattern in (("caret", _CARET_RE), ("tilde", _TILDE_RE), ("partial", _PREFIX_RE)):
        m = pattern.match(selector)
        if m:
            parts = tuple(int(g) for g in m.groups() if g is not None)
            return ("exact" if kind == "partial" and len(parts) == 3 else kind), parts
    if TAG_RE.match(selector) and not _VERSIONISH_TAG_RE.match(selector):
        return "tag", ()
    return None, ()


def _selector_problem(selector: str) -> str:
    if not selector:
        return "nothing after '@'"
    if _VERSIONISH_TAG_RE.match(selector):
        return f"{selector!r} after '@' looks like a version but is not one (versions have no 'v': {selector[1:]})"
    if re.match(rf"^~{_NUM}\Z", selector):
        return (f"{selector!r} after '@' is a tilde range without a minor (write ~{selector[1:]}.0 for "
                f"{selector[1:]}.0.x, or ^{selector[1:]} for any {selector[1:]}.x)")
    return f"{selector!r} after '@' is not a version, range or tag"
