"""`Registry`: publish, resolve, tag, trace and clean up brick versions under one root folder.

Layout of a registry root::

    ROOT/catalog.sqlite                       versions, tags, tag history, lineage (see catalog.py)
    ROOT/blobs/sha256/<2 hex>/<64 hex>        the brick files, named by the sha256 of their bytes

Publishing writes the blob first and then records the version in one catalog transaction, so a
crash leaves the whole version or nothing (plus at worst an unreferenced blob that `gc` removes
once it is older than the grace period).
"""

from __future__ import annotations

import difflib
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import platformdirs

from bricks.errors import ConflictError, InvalidInputError, NotFoundError
from bricks.format import Brick, brick_from_bytes
from bricks.refs import (
    FIRST_VERSION,
    BrickRef,
    Bump,
    Version,
    check_bump,
    check_name,
    check_tag,
    parse_ref,
    parse_version,
)

from . import catalog as cat
from .archive import archive_index, import_archive, write_archive
from .catalog import Catalog, TagEvent, VersionInfo
from .faults import fault_point
from .store import BlobStore, age_seconds

ENV_VAR = "BRICK_REGISTRY"

# Aliases keep `list` in annotations meaning the builtin inside `Registry`, which has a `list` method.
VersionList = list[VersionInfo]
StrList = list[str]
Lineage = dict[str, list[dict[str, Any]]]


def default_registry_path(cli_value: str | None = None) -> Path:
    """The registry root: the CLI's --registry value, else $BRICK_REGISTRY, else the user data dir."""
    if cli_value:
        return Path(cli_value).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return Path(platformdirs.user_data_dir("brickwork")) / "registry"


@dataclass(frozen=True)
class VerifyProblem:
    """One thing `verify` found wrong; `ref` is None for problems of the catalog itself."""

    ref: str | None
    digest: str | None
    problem: str

    def __str__(self) -> str:
        where = self.ref or "catalog"
        return f"{where}: {self.problem}" + (f" (sha256:{self.digest[:12]})" if self.digest else "")


TagEventList = list[TagEvent]
ProblemList = list[VerifyProblem]


class Registry:
    """A versioned, content-addressed brick registry rooted at one folder (created on first use)."""

    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser()
        self.store = BlobStore(self.root)
        self.catalog = Catalog(self.root / "catalog.sqlite")

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # --- publishing -------------------------------------------------------------------------------
    def publish(
        self,
        brick: Brick,
        version: str | None = None,
        bump: Bump = "minor",
        parents: Sequence[str] = (),
        operation: str | None = None,
        op_params: dict[str, Any] | None = None,
        tags: Sequence[str] = (),
    ) -> VersionInfo:
        """Store `brick` as a new version of `brick.meta.name`.

        With no `version`, the next one is the highest existing version bumped by `bump` (1.0.0
        for a new name), computed inside the write transaction so concurrent publishers never
        collide. An explicit existing version is accepted only with identical bytes, and then the
        existing version is returned unchanged (parents and tags of that call are not applied).
        """
        data = brick.to_bytes()  # validates the brick before anything is written
        explicit = parse_version(version) if version is not None else None
        check_bump(bump)
        tags = [check_tag(t) for t in tags]
        parent_refs = [parse_ref(p) for p in parents]
        what = f"a version of {brick.meta.name}"
        digest = self.store.put(data, what)
        fault_point("blob-written")
        with self.catalog.write() as conn:
            # gc holds this same lock while deleting, so from here on the blob cannot vanish.
            self.store.ensure(digest, data, what)
            cat.check_kind(conn, brick.meta.name, brick.meta.kind)
            if explicit is not None:
                existing = cat.existing_same(conn, brick.meta.name, explicit, digest)
                if existing is not None:
                    return existing
            number = explicit if explicit is not None else _next_version(conn, brick.meta.name, bump)
            parent_infos = [self._resolve(conn, r) for r in parent_refs]
            info = VersionInfo(
                name=brick.meta.name, version=str(number), digest=digest, kind=brick.meta.kind,
                host_fingerprint=brick.meta.host.fingerprint, created=datetime.now(timezone.utc),
                size_bytes=len(data), meta=brick.meta.model_copy(deep=True),
            )
            cat.insert_version(conn, info)
            fault_point("publish-txn")
            for parent in parent_infos:
                cat.insert_edge(conn, info, parent, operation, op_params)
            for tag in tags:
                cat.set_tag(conn, info.name, tag, info.version)
        return info

    # --- reading ----------------------------------------------------------------------------------
    def resolve(self, ref: str) -> VersionInfo:
        """The exact version a ref means now (see bricks.refs for the grammar)."""
        parsed = parse_ref(ref)
        with self.catalog.read() as conn:
            return self._resolve(conn, parsed)

    def get_bytes(self, ref: str) -> bytes:
        """The brick file's bytes, re-hashed against the catalog (CorruptBlobError if they differ)."""
        info = self.resolve(ref)
        return self.store.read(info.digest, info.ref)

    def get(self, ref: str) -> Brick:
        info = self.resolve(ref)
        return brick_from_bytes(self.store.read(info.digest, info.ref), source=f"registry brick {info.ref}")

    def list(self, name: str | None = None) -> VersionList:
        """Every version (of one name, or of all names), ordered by name then semver."""
        with self.catalog.read() as conn:
            if name is None:
                return cat.all_versions(conn)
            self._require_name(conn, name)
            return cat.versions_of(conn, name)

    def names(self) -> StrList:
        with self.catalog.read() as conn:
            return cat.names(conn)

    def versions(self, name: str) -> StrList:
        with self.catalog.read() as conn:
            self._require_name(conn, name)
            return [str(v) for v in cat.semvers_of(conn, name)]

    def tags(self, name: str) -> dict[str, str]:
        with self.catalog.read() as conn:
            self._require_name(conn, name)
            return cat.tags_of(conn, name)

    def tag_history(self, name: str, tag: str | None = None) -> TagEventList:
        """Every creation, move and removal of `tag` (or of all tags of `name`), oldest first."""
        with self.catalog.read() as conn:
            return cat.tag_history(conn, check_name(name), tag)

    def lineage(self, ref: str) -> Lineage:
        """Direct parents and children of a version, each with the operation and its params."""
        parsed = parse_ref(ref)
        with self.catalog.read() as conn:
            info = self._resolve(conn, parsed)
            return {"parents": cat.parents_of(conn, info.name, info.version),
                    "children": cat.children_of(conn, info.name, info.version)}

    # --- tags and removal -------------------------------------------------------------------------
    def tag(self, ref: str, tag: str) -> VersionInfo:
        """Point `tag` at the version `ref` means; moving an existing tag is recorded in its history."""
        check_tag(tag)
        parsed = parse_ref(ref)
        with self.catalog.write() as conn:
            info = self._resolve(conn, parsed)
            cat.set_tag(conn, info.name, tag, info.version)
            fault_point("tag-moved")
        return info

    def untag(self, name: str, tag: str) -> None:
        with self.catalog.write() as conn:
            self._require_name(conn, name)
            if cat.delete_tag(conn, name, tag) is None:
                existing = ", ".join(cat.tags_of(conn, name)) or "none"
                raise NotFoundError(f"{name} has no tag {tag!r} (its tags: {existing})",
                                    f"run `brick tags {name}` to see its tags")

    def rm(self, ref: str, force: bool = False) -> VersionInfo:
        """Remove one version from the catalog (its blob stays until `gc`).

        Refused while a tag points at it or another version names it as a parent, unless `force`,
        which removes those tags and lineage edges too.
        """
        parsed = parse_ref(ref)
        if parsed.is_bare:
            raise InvalidInputError(f"`rm {ref}` does not say which version to remove",
                                    f"name the version, e.g. {parsed.name}@1.0.0 (see `brick versions {parsed.name}`)")
        with self.catalog.write() as conn:
            info = self._resolve(conn, parsed)
            children = cat.children_of(conn, info.name, info.version)
            tags = cat.tags_on(conn, info.name, info.version)
            if (children or tags) and not force:
                raise ConflictError(f"{info.ref} is still referenced: " + _describe_refs(children, tags),
                                    "remove those references first, or pass --force to remove them with it")
            for tag in tags:
                cat.delete_tag(conn, info.name, tag)
            cat.delete_child_edges(conn, info.name, info.version)
            cat.delete_version(conn, info.name, info.version)
        return info

    # --- maintenance ------------------------------------------------------------------------------
    def gc(self, grace_seconds: float = 3600, dry_run: bool = False) -> dict[str, Any]:
        """Delete blobs no version references and stale temp files, both older than `grace_seconds`.

        The grace period spares a publisher that has written its blob but not yet committed. The
        sweep holds the catalog's write lock, so no version can start referencing a blob mid-sweep.
        """
        stats = {"blobs_removed": 0, "bytes_freed": 0, "temp_removed": 0, "blobs_kept": 0, "dry_run": dry_run}
        with self.catalog.write() as conn:
            referenced = cat.referenced_digests(conn)
            for path in self.store.blobs():
                if path.name in referenced:
                    stats["blobs_kept"] += 1
                elif _older_than(path, grace_seconds):
                    stats["bytes_freed"] += _remove(path, dry_run)
                    stats["blobs_removed"] += 1
                fault_point("gc-sweep")
            for path in self.store.temp_files():
                if _older_than(path, grace_seconds):
                    stats["bytes_freed"] += _remove(path, dry_run)
                    stats["temp_removed"] += 1
        return stats

    def verify(self) -> ProblemList:
        """Check the catalog's integrity and re-hash every blob it references; [] means all is well."""
        with self.catalog.read() as conn:
            problems = _catalog_problems(conn)
            versions = cat.all_versions(conn)
        checked: dict[str, str | None] = {}
        for info in versions:
            if info.digest not in checked:
                checked[info.digest] = self.store.check(info.digest)
            if checked[info.digest]:
                problems.append(VerifyProblem(info.ref, info.digest, checked[info.digest]))
        return problems

    # --- archives ---------------------------------------------------------------------------------
    def export(self, refs: Sequence[str] | None, path: Path | str) -> Path:
        """Write the versions `refs` mean (all versions if None), their tags and lineage, to one .tar / .tar.gz
        archive."""
        parsed = None if refs is None else [parse_ref(r) for r in refs]
        with self.catalog.read() as conn:
            infos = cat.all_versions(conn) if parsed is None else [self._resolve(conn, r) for r in parsed]
            index = archive_index(conn, infos)
        return write_archive(self.store, index, Path(path))

    def import_archive(self, path: Path | str) -> VersionList:
        """Add an archive's versions with their version numbers, tags and lineage; returns the new ones."""
        return import_archive(self.catalog, self.store, Path(path))

    # --- internals --------------------------------------------------------------------------------
    def _resolve(self, conn: sqlite3.Connection, ref: BrickRef) -> VersionInfo:
        semvers = cat.semvers_of(conn, ref.name)
        if not semvers:
            raise self._unknown_name(conn, ref.name)
        tags = cat.tags_of(conn, ref.name)
        chosen = ref.pick(semvers, {t: parse_version(v) for t, v in tags.items()})
        if chosen is None:
            raise NotFoundError(
                f"{ref.name} has no version matching {ref.selector!r}; "
                f"versions: {_summarise(semvers)}; tags: {', '.join(tags) or 'none'}",
                f"pick one of those, e.g. {ref.name}@{semvers[-1]}",
            )
        return cat.version_row(conn, ref.name, str(chosen))

    def _require_name(self, conn: sqlite3.Connection, name: str) -> None:
        if cat.kind_of(conn, check_name(name)) is None:
            raise self._unknown_name(conn, name)

    def _unknown_name(self, conn: sqlite3.Connection, name: str) -> NotFoundError:
        close = difflib.get_close_matches(name, cat.names(conn), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return NotFoundError(f"no brick named {name!r} in the registry at {self.root}{hint}",
                             "run `brick list` to see the published bricks")


def _next_version(conn: sqlite3.Connection, name: str, bump: Bump) -> Version:
    semvers = cat.semvers_of(conn, name)
    return semvers[-1].bump(bump) if semvers else FIRST_VERSION


def _summarise(semvers: list[Version], limit: int = 12) -> str:
    shown = [str(v) for v in semvers[-limit:]]
    more = len(semvers) - len(shown)
    return (f"... ({more} older), " if more else "") + ", ".join(shown)


def _describe_refs(children: list[dict[str, Any]], tags: list[str]) -> str:
    parts = []
    if children:
        parts.append("it is a lineage parent of " + ", ".join(c["ref"] for c in children))
    if tags:
        parts.append("tags point at it: " + ", ".join(tags))
    return "; ".join(parts)


def _catalog_problems(conn: sqlite3.Connection) -> list[VerifyProblem]:
    problems = [VerifyProblem(None, None, f"integrity check: {r[0]}")
                for r in conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
    problems += [VerifyProblem(None, None, f"dangling reference in table {r[0]} (row {r[1]}) to {r[2]}")
                 for r in conn.execute("PRAGMA foreign_key_check")]
    return problems


def _older_than(path: Path, seconds: float) -> bool:
    age = age_seconds(path)
    return age is not None and age >= seconds


def _remove(path: Path, dry_run: bool) -> int:
    try:
        size = path.stat().st_size
        if not dry_run:
            path.unlink()
        return size
    except FileNotFoundError:
        return 0
