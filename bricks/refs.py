"""Brick references (`name`, `name@1.2.0`, `name@^1.0`, `name@stable`) and semantic versions.

Grammar of a ref: ``NAME[@SELECTOR]`` where SELECTOR is one of

- ``latest`` (also what a bare name means): the highest version,
- ``1.2.0``: exactly that version,
- ``1`` or ``1.2``: the highest version with that prefix,
- ``^1.2`` / ``^1.2.3``: the highest version with the same major that is >= the given one,
- ``~1.2`` / ``~1.2.3``: the highest version with the same major.minor that is >= the given one,
- a tag name (starts with a letter, e.g. ``stable``): the version the tag points to.

``latest`` is computed, never stored, so it cannot go stale or be moved by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple, cast

from bricks.errors import InvalidInputError
from bricks.format import NAME_RE

Bump = Literal["patch", "minor", "major"]
SelectorKind = Literal["latest", "exact", "partial", "caret", "tilde", "tag"]

_NUM = r"(0|[1-9]\d*)"
VERSION_RE = re.compile(rf"^{_NUM}\.{_NUM}\.{_NUM}$")
_PREFIX_RE = re.compile(rf"^([~^]?){_NUM}(?:\.{_NUM})?(?:\.{_NUM})?$")
# Tags start with a letter so a tag can never be mistaken for a version or a range.
TAG_RE = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
# `v1.2` is a legal tag by TAG_RE but reads like a version; refuse it to avoid confusion.
_VERSIONISH_TAG_RE = re.compile(r"^v\d+(\.\d+)*$")
RESERVED_TAGS = frozenset({"latest"})

REF_GRAMMAR = (
    "write a ref as NAME or NAME@SELECTOR, where SELECTOR is latest, an exact version (1.2.0), "
    "a prefix (1 or 1.2), a caret range (^1.2), a tilde range (~1.2) or a tag (stable)"
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
    if not NAME_RE.match(name):
        raise InvalidInputError(
            f"{name!r} is not a valid brick name",
            "use 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
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
            return tuple(v[: min(len(p), 2)]) == p[:2] and v >= _pad(p)
        return False

    def pick(self, versions: list[Version], tags: dict[str, Version]) -> Version | None:
        """The version this ref means among `versions`, or None."""
        if self.kind == "tag":
            return tags.get(self.selector)
        found = [v for v in versions if self.matches(v)]
        return max(found) if found else None


def _pad(parts: tuple[int, ...]) -> Version:
    return Version(*(parts + (0, 0, 0))[:3])


def parse_ref(ref: str) -> BrickRef:
    """Parse `NAME[@SELECTOR]`; anything else raises InvalidInputError explaining the grammar."""
    if not isinstance(ref, str) or ref.count("@") > 1:
        raise InvalidInputError(f"{ref!r} is not a brick ref", REF_GRAMMAR)
    name, at, selector = ref.strip().partition("@")
    if not NAME_RE.match(name):
        raise InvalidInputError(f"{ref!r} is not a brick ref: the name {name!r} is not valid",
                                "names use 1-64 lowercase letters, digits, '.', '_' or '-'; " + REF_GRAMMAR)
    if not at:
        return BrickRef(name)
    return BrickRef(name, selector, *_parse_selector(ref, selector))


def _parse_selector(ref: str, selector: str) -> tuple[SelectorKind, tuple[int, ...]]:
    if selector == "latest":
        return "latest", ()
    m = _PREFIX_RE.match(selector)
    if m:
        op, nums = m.group(1), tuple(int(g) for g in m.groups()[1:] if g is not None)
        if op == "^":
            return "caret", nums
        if op == "~":
            return "tilde", nums
        return ("exact" if len(nums) == 3 else "partial"), nums
    if TAG_RE.match(selector) and not _VERSIONISH_TAG_RE.match(selector):
        return "tag", ()
    raise InvalidInputError(f"{ref!r} is not a brick ref: the selector {selector!r} is not valid", REF_GRAMMAR)
