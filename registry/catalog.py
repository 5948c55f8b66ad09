"""The SQLite catalog: which brick versions exist, their digests, tags, tag history and lineage.

One file, ``ROOT/catalog.sqlite``, in WAL mode so readers never block the single writer. Every
change is one ``BEGIN IMMEDIATE`` transaction: the write lock is taken up front, so two processes
that both compute "the next version" serialise instead of both reading the same maximum.
The schema is versioned with ``PRAGMA user_version``; `MIGRATIONS[i]` upgrades from version i.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bricks.errors import ConflictError
from bricks.format import BrickMeta
from bricks.refs import Version

from .store import RegistryFullError

BUSY_TIMEOUT_S = 30.0
NEARLY_FULL_BYTES = 1 << 20

_SCHEMA_V1 = """
CREATE TABLE bricks (
    name    TEXT PRIMARY KEY,
    kind    TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE versions (
    name             TEXT NOT NULL REFERENCES bricks(name),
    version          TEXT NOT NULL,
    major            INTEGER NOT NULL,
    minor            INTEGER NOT NULL,
    patch            INTEGER NOT NULL,
    digest           TEXT NOT NULL,
    kind             TEXT NOT NULL,
    host_fingerprint TEXT NOT NULL,
    created          TEXT NOT NULL,
    meta_json        TEXT NOT NULL,
    size_bytes       INTEGER NOT NULL,
    PRIMARY KEY (name, version),
    UNIQUE (name, major, minor, patch)
);
CREATE INDEX versions_by_digest ON versions(digest);
CREATE TABLE tags (
    name    TEXT NOT NULL,
    tag     TEXT NOT NULL,
    version TEXT NOT NULL,
    PRIMARY KEY (name, tag),
    FOREIGN KEY (name, version) REFERENCES versions(name, version)
);
CREATE TABLE tag_history (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    tag         TEXT NOT NULL,
    old_version TEXT,
    new_version TEXT,
    at          TEXT NOT NULL
);
CREATE INDEX tag_history_by_tag ON tag_history(name, tag);
CREATE TABLE lineage (
    child_name     TEXT NOT NULL,
    child_version  TEXT NOT NULL,
    parent_name    TEXT NOT NULL,
    parent_version TEXT NOT NULL,
    operation      TEXT,
    params_json    TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (child_name, child_version, parent_name, parent_version),
    FOREIGN KEY (child_name, child_version) REFERENCES versions(name, version) ON DELETE CASCADE,
    FOREIGN KEY (parent_name, parent_version) REFERENCES versions(name, version)
);
CREATE INDEX lineage_by_parent ON lineage(parent_name, parent_version);
"""

MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1,)
SCHEMA_VERSION = len(MIGRATIONS)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass(frozen=True)
class VersionInfo:
    """One published brick version as the catalog records it."""

    name: str
    version: str
    digest: str
    kind: str
    host_fingerprint: str
    created: datetime
    size_bytes: int
    meta: BrickMeta

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def semver(self) -> Version:
        return Version(*(int(p) for p in self.version.split(".")))


@dataclass(frozen=True)
class TagEvent:
    """One change of a tag: created (old_version None), moved, or removed (new_version None)."""

    name: str
    tag: str
    old_version: str | None
    new_version: str | None
    at: datetime


def info_from_row(row: sqlite3.Row) -> VersionInfo:
    return VersionInfo(
        name=row["name"], version=row["version"], digest=row["digest"], kind=row["kind"],
        host_fingerprint=row["host_fingerprint"], created=datetime.fromisoformat(row["created"]),
        size_bytes=row["size_bytes"], meta=BrickMeta.model_validate_json(row["meta_json"]),
    )


class Catalog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._ready = False

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection per operation: cheap for SQLite and safe across threads and forks."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
            if not self._ready:
                _migrate(conn)
                self._ready = True
            yield conn
        except sqlite3.OperationalError as e:
            if not self._out_of_room(e):
                raise
            raise RegistryFullError(f"no room in {self.path.parent} for the registry catalog ({e}); "
                                    "nothing was recorded", "free space on that file system and retry") from None
        finally:
            conn.close()

    def _out_of_room(self, e: sqlite3.OperationalError) -> bool:
        """SQLITE_FULL, or an I/O error on a file system with almost no room left: the last connection to close
        deletes the WAL and its index, so on a full disk the next one cannot even create them to read."""
        code = e.sqlite_errorcode & 0xFF
        if code == sqlite3.SQLITE_FULL:
            return True
        if code != sqlite3.SQLITE_IOERR:
            return False
        fs = os.statvfs(self.path.parent)
        return fs.f_bavail * fs.f_frsize < NEARLY_FULL_BYTES

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One all-or-nothing write transaction holding the database's write lock throughout."""
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # SQLite has already rolled back after some errors (a full disk among them); a second
                # ROLLBACK would raise "no transaction is active" and hide the real error.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several queries (WAL readers do not block the writer)."""
        with self.connect() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")


def _set_wal(conn: sqlite3.Connection) -> None:
    """WAL is a property of the file; setting it needs no transaction and sticks once set. Switching a new
    file to WAL needs an exclusive lock, and SQLite answers "database is locked" at once, without the busy
    handler, when several fresh connections race for it (seen with 4-8 processes opening a new registry):
    so retry until the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.002
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if ("locked" not in str(e) and "busy" not in str(e)) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _migrate(conn: sqlite3.Connection) -> None:
    _set_wal(conn)
    if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the lock: another process may have migrated while we waited.
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        for script in MIGRATIONS[current:]:
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# --- queries (all take an open connection so callers choose the transaction) -------------------
_ORDER = "ORDER BY major, minor, patch"


def kind_of(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute("SELECT kind FROM bricks WHERE name = ?", (name,)).fetchone()
    return row[0] if row else None


def names(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM bricks ORDER BY name")]


def versions_of(conn: sqlite3.Connection, name: str) -> list[VersionInfo]:
    rows = conn.execute(f"SELECT * FROM versions WHERE name = ? {_ORDER}", (name,))
    return [info_from_row(r) for r in rows]


def all_versions(conn: sqlite3.Connection) -> list[VersionInfo]:
    rows = conn.execute("SELECT * FROM versions ORDER BY name, major, minor, patch")
    return [info_from_row(r) for r in rows]


def semvers_of(conn: sqlite3.Connection, name: str) -> list[Version]:
    rows = conn.execute("SELECT major, minor, patch FROM versions WHERE name = ?", (name,))
    return sorted(Version(*r) for r in rows)


def version_row(conn: sqlite3.Connection, name: str, version: str) -> VersionInfo | None:
    row = conn.execute("SELECT * FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone()
    return info_from_row(row) if row else None


def insert_version(conn: sqlite3.Connection, info: VersionInfo) -> None:
    conn.execute("INSERT OR IGNORE INTO bricks (name, kind, created) VALUES (?, ?, ?)",
                 (info.name, info.kind, now_iso()))
    v = info.semver
    conn.execute(
        "INSERT INTO versions (name, version, major, minor, patch, digest, kind, host_fingerprint, created,"
        " meta_json, size_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (info.name, info.version, v.major, v.minor, v.patch, info.digest, info.kind, info.host_fingerprint,
         info.created.isoformat(), info.meta.model_dump_json(), info.size_bytes),
    )


def delete_version(conn: sqlite3.Connection, name: str, version: str) -> None:
    """Remove a version and the edges to its parents; the name goes when its last version goes."""
    conn.execute("DELETE FROM versions WHERE name = ? AND version = ?", (name, version))
    if not conn.execute("SELECT 1 FROM versions WHERE name = ? LIMIT 1", (name,)).fetchone():
        # Freeing the name lets it be published again, possibly with another kind.
        conn.execute("DELETE FROM bricks WHERE name = ?", (name,))


def referenced_digests(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT DISTINCT digest FROM versions")}


# --- checks shared by publish and import ---------------------------------------------------------
def check_kind(conn: sqlite3.Connection, name: str, kind: str) -> None:
    existing = kind_of(conn, name)
    if existing is not None and existing != kind:
        raise ConflictError(f"{name!r} holds {existing} bricks, this brick is a {kind} brick",
                            "a name keeps the kind of its first version: publish it under another name")


def existing_same(conn: sqlite3.Connection, name: str, version: Version, digest: str) -> VersionInfo | None:
    """The existing version if it has these exact bytes; ConflictError if it has others; else None."""
    existing = version_row(conn, name, str(version))
    if existing is None or existing.digest == digest:
        return existing
    raise ConflictError(
        f"{name}@{version} already exists with different content (sha256:{existing.digest[:12]})",
        "published versions are immutable: publish without a version to get the next one, or pick an unused one",
    )


# --- tags --------------------------------------------------------------------------------------------
def tags_of(conn: sqlite3.Connection, name: str) -> dict[str, str]:
    return {r[0]: r[1] for r in conn.execute("SELECT tag, version FROM tags WHERE name = ? ORDER BY tag", (name,))}


def tags_on(conn: sqlite3.Connection, name: str, version: str) -> list[str]:
    rows = conn.execute("SELECT tag FROM tags WHERE name = ? AND version = ? ORDER BY tag", (name, version))
    return [r[0] for r in rows]


def set_tag(conn: sqlite3.Connection, name: str, tag: str, version: str) -> bool:
    """Point a tag at a version, recording the move; False when it already pointed there."""
    old = tags_of(conn, name).get(tag)
    if old == version:
        return False
    conn.execute("INSERT OR REPLACE INTO tags (name, tag, version) VALUES (?, ?, ?)", (name, tag, version))
    _record_tag(conn, name, tag, old, version)
    return True


def delete_tag(conn: sqlite3.Connection, name: str, tag: str) -> str | None:
    """Remove a tag (recording it); returns the version it pointed to, None if there was no such tag."""
    old = tags_of(conn, name).get(tag)
    if old is not None:
        conn.execute("DELETE FROM tags WHERE name = ? AND tag = ?", (name, tag))
        _record_tag(conn, name, tag, old, None)
    return old


def _record_tag(conn: sqlite3.Connection, name: str, tag: str, old: str | None, new: str | None) -> None:
    conn.execute("INSERT INTO tag_history (name, tag, old_version, new_version, at) VALUES (?, ?, ?, ?, ?)",
                 (name, tag, old, new, now_iso()))


def tag_history(conn: sqlite3.Connection, name: str, tag: str | None) -> list[TagEvent]:
    sql, args = "SELECT * FROM tag_history WHERE name = ?", [name]
    if tag is not None:
        sql, args = sql + " AND tag = ?", args + [tag]
    rows = conn.execute(sql + " ORDER BY id", args)
    return [TagEvent(r["name"], r["tag"], r["old_version"], r["new_version"], datetime.fromisoformat(r["at"]))
            for r in rows]


# --- lineage -----------------------------------------------------------------------------------------
def insert_edge(conn: sqlite3.Connection, child: VersionInfo, parent: VersionInfo, operation: str | None,
                params: dict[str, Any] | None) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO lineage (child_name, child_version, parent_name, parent_version, operation,"
        " params_json) VALUES (?, ?, ?, ?, ?, ?)",
        (child.name, child.version, parent.name, parent.version, operation,
         json.dumps(params or {}, sort_keys=True)),
    )


def parents_of(conn: sqlite3.Connection, name: str, version: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM lineage WHERE child_name = ? AND child_version = ?"
                        " ORDER BY parent_name, parent_version", (name, version))
    return [_edge(r["parent_name"], r["parent_version"], r) for r in rows]


def children_of(conn: sqlite3.Connection, name: str, version: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM lineage WHERE parent_name = ? AND parent_version = ?"
                        " ORDER BY child_name, child_version", (name, version))
    return [_edge(r["child_name"], r["child_version"], r) for r in rows]


def delete_child_edges(conn: sqlite3.Connection, parent_name: str, parent_version: str) -> None:
    conn.execute("DELETE FROM lineage WHERE parent_name = ? AND parent_version = ?", (parent_name, parent_version))


def all_edges(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM lineage ORDER BY child_name, child_version, parent_name, parent_version")
    return [{"child": f"{r['child_name']}@{r['child_version']}", "parent": f"{r['parent_name']}@{r['parent_version']}",
             "operation": r["operation"], "params": json.loads(r["params_json"])} for r in rows]


def _edge(name: str, version: str, row: sqlite3.Row) -> dict[str, Any]:
    return {"name": name, "version": version, "ref": f"{name}@{version}", "operation": row["operation"],
            "params": json.loads(row["params_json"])}
