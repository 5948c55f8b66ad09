"""Move brick versions between registries as one .tar (or .tar.gz) file.

An archive holds ``index.json`` (versions with their digests and metadata, the tags pointing at
them, the lineage edges between them) and ``blobs/<sha256>``. Import checks everything first —
member paths, the index, every blob's hash, every brick's validity — and then changes the
registry in one transaction, so a bad or truncated archive leaves the registry as it was.

This module knows the catalog and the blob store, never the registry: `Registry.export` chooses the
versions and hands them here.
"""

from __future__ import annotations

import io
import os
import sqlite3
import tarfile
import uuid
import zlib
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bricks.errors import InvalidInputError
from bricks.format import Brick, BrickMeta, brick_from_bytes
from bricks.refs import check_name, check_tag, parse_version

from . import catalog as cat
from .catalog import Catalog, VersionInfo
from .store import DIGEST_RE, BlobStore, sha256_hex

ARCHIVE_FORMAT = "brickwork-registry-archive"
ARCHIVE_VERSION = 1
INDEX_NAME = "index.json"
BLOB_DIR = "blobs/"
# What one import may unpack into memory (a member's header states its size; a gzip bomb states a lie only
# the decompression would reveal, so the sizes are checked before each member is read, and the bytes read
# after the end-of-archive block are bounded too). BRICK_MAX_ARCHIVE_BYTES raises the total.
MAX_INDEX_BYTES = 64 << 20
MAX_TOTAL_BYTES = 16 << 30
MAX_TRAILER_BYTES = 16 << 20


class ArchivedVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: str
    digest: str
    kind: str
    host_fingerprint: str
    created: datetime
    size_bytes: int
    meta_json: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class ArchivedTag(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    tag: str
    version: str


class ArchivedEdge(BaseModel):
    model_config = ConfigDict(extra="forbid")
    child_name: str
    child_version: str
    parent_name: str
    parent_version: str
    operation: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class ArchiveIndex(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["brickwork-registry-archive"] = ARCHIVE_FORMAT
    format_version: int = ARCHIVE_VERSION
    created: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    versions: list[ArchivedVersion] = Field(default_factory=list)
    tags: list[ArchivedTag] = Field(default_factory=list)
    lineage: list[ArchivedEdge] = Field(default_factory=list)


# --- export ----------------------------------------------------------------------------------------
def archive_index(conn: sqlite3.Connection, infos: Sequence[VersionInfo]) -> ArchiveIndex:
    """The index of an archive holding `infos`, with the tags and lineage edges among them.

    `conn` is the read snapshot the versions were chosen in, so the tags and edges match them.
    """
    infos = list({i.ref: i for i in infos}.values())
    chosen = {i.ref for i in infos}
    tags = [ArchivedTag(name=n, tag=t, version=v) for n in sorted({i.name for i in infos})
            for t, v in cat.tags_of(conn, n).items() if f"{n}@{v}" in chosen]
    edges = [_archived_edge(e) for e in cat.all_edges(conn) if e["child"] in chosen and e["parent"] in chosen]
    return ArchiveIndex(versions=[_archived_version(i) for i in infos], tags=tags, lineage=edges)


def write_archive(store: BlobStore, index: ArchiveIndex, path: Path) -> Path:
    """Write `index` and the blobs it names to `path` (.tar, or gzipped for .tar.gz / .tgz / .gz), atomically."""
    # Reading through the store re-hashes each blob: a corrupt blob is never exported.
    blobs = {v.digest: store.read(v.digest, v.ref) for v in index.versions}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        _write_tar(tmp, _is_gzip(path), index, blobs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _archived_version(info: VersionInfo) -> ArchivedVersion:
    return ArchivedVersion(name=info.name, version=info.version, digest=info.digest, kind=info.kind,
                           host_fingerprint=info.host_fingerprint, created=info.created,
                           size_bytes=info.size_bytes, meta_json=info.meta.model_dump_json())


def _archived_edge(edge: dict[str, Any]) -> ArchivedEdge:
    child_name, child_version = edge["child"].split("@")
    parent_name, parent_version = edge["parent"].split("@")
    return ArchivedEdge(child_name=child_name, child_version=child_version, parent_name=parent_name,
                        parent_version=parent_version, operation=edge["operation"], params=edge["params"])


def _write_tar(tmp: Path, gzip: bool, index: ArchiveIndex, blobs: dict[str, bytes]) -> None:
    with open(tmp, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w:gz" if gzip else "w") as tar:
            _add_member(tar, INDEX_NAME, index.model_dump_json(indent=2).encode())
            for digest, data in sorted(blobs.items()):
                _add_member(tar, BLOB_DIR + digest, data)
        raw.flush()
        os.fsync(raw.fileno())


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def _is_gzip(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz", ".gz"))


# --- import ----------------------------------------------------------------------------------------
def import_archive(catalog: Catalog, store: BlobStore, path: Path) -> list[VersionInfo]:
    """Add an archive's versions under their own version numbers; returns the versions added.

    A version already present with the same bytes is skipped; with other bytes it is a conflict.
    Tags in the archive are applied (moving a local tag is recorded in its history).
    """
    members = _read_members(path)
    index = _parse_index(path, members)
    blobs = _verified_blobs(path, index, members)
    with catalog.write() as conn:
        # Checks and inserts share the write lock, so no publisher can slip a conflicting version in.
        added = [v for v in index.versions if _should_add(conn, v)]
        for digest in sorted({v.digest for v in added}):
            store.put(blobs[digest], f"a brick from {path.name}")
        infos = [_insert(conn, v) for v in added]
        _apply_edges_and_tags(conn, index)
    return infos


def _bad_archive(path: Path, problem: str) -> InvalidInputError:
    return InvalidInputError(f"archive {path}: {problem}",
                             "re-create it with `brick export` (nothing was imported)")


def _read_members(path: Path) -> dict[str, bytes]:
    """Every member's bytes, refusing anything but index.json and blobs/<sha256> regular files."""
    if not path.is_file():
        raise InvalidInputError(f"archive {path} does not exist", "check the path")
    members: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                _check_member(path, member, members)
                total += member.size
                _check_size(path, member, total)
                members[member.name] = tar.extractfile(member).read()
            # tarfile stops at the end-of-archive block; read on so a cut gzip trailer (CRC) is noticed.
            trailer = 0
            while chunk := tar.fileobj.read(1 << 20):
                trailer += len(chunk)
                if trailer > MAX_TRAILER_BYTES:
                    raise _bad_archive(path, f"more than {MAX_TRAILER_BYTES >> 20} MiB of data after the "
                                             "end-of-archive block")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise _bad_archive(path, f"not a readable tar archive ({e}); it may be truncated") from None
    return members


def _check_size(path: Path, member: tarfile.TarInfo, total: int) -> None:
    if member.name == INDEX_NAME and member.size > MAX_INDEX_BYTES:
        raise _bad_archive(path, f"{INDEX_NAME} is {member.size} bytes; an index is at most {MAX_INDEX_BYTES} bytes")
    most = _max_total()
    if total > most:
        raise _bad_archive(path, f"its members add up to more than {most} bytes (at {member.name!r}); "
                                 "set BRICK_MAX_ARCHIVE_BYTES higher to import an archive that large")


def _max_total() -> int:
    text = os.environ.get("BRICK_MAX_ARCHIVE_BYTES")
    if text is None:
        return MAX_TOTAL_BYTES
    if not text.isdigit():
        raise InvalidInputError(f"BRICK_MAX_ARCHIVE_BYTES={text!r} is not a number of bytes",
                                "set it to a whole number, e.g. 34359738368 for 32 GiB")
    return int(text)


def _check_member(path: Path, member: tarfile.TarInfo, seen: dict[str, bytes]) -> None:
    name = member.name
    unsafe = name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/") or ":" in name
    if unsafe or not member.isreg():
        raise _bad_archive(path, f"refusing member {name!r}: only plain files with relative paths are allowed")
    is_blob = name.startswith(BLOB_DIR) and DIGEST_RE.match(name[len(BLOB_DIR):])
    if name != INDEX_NAME and not is_blob:
        raise _bad_archive(path, f"unexpected member {name!r}: an archive holds only {INDEX_NAME} and blobs/<sha256>")
    if name in seen:
        raise _bad_archive(path, f"member {name!r} appears twice")


def _parse_index(path: Path, members: dict[str, bytes]) -> ArchiveIndex:
    if INDEX_NAME not in members:
        raise _bad_archive(path, f"it has no {INDEX_NAME}; it may be truncated or not a brick archive")
    try:
        index = ArchiveIndex.model_validate_json(members[INDEX_NAME])
    except ValidationError as e:
        err = e.errors()[0]
        raise _bad_archive(path, f"{INDEX_NAME} is invalid: {err['msg']} at {err['loc']}") from None
    if index.format_version > ARCHIVE_VERSION:
        raise InvalidInputError(f"archive {path} was written by a newer brickwork (format {index.format_version})",
                                "upgrade brickwork")
    _check_index_refs(path, index)
    return index


def _check_index_refs(path: Path, index: ArchiveIndex) -> None:
    """Names, versions and tags are well formed; tags and edges point at versions in the archive."""
    refs = set()
    try:
        for v in index.versions:
            check_name(v.name)
            parse_version(v.version)
            if v.ref in refs:
                raise _bad_archive(path, f"{v.ref} is listed twice")
            refs.add(v.ref)
        for t in index.tags:
            check_tag(t.tag)
    except InvalidInputError as e:
        raise _bad_archive(path, e.problem) from None
    kinds: dict[str, set[str]] = {}
    for v in index.versions:
        kinds.setdefault(v.name, set()).add(v.kind)
    mixed = sorted(n for n, k in kinds.items() if len(k) > 1)
    if mixed:
        raise _bad_archive(path, f"versions of {', '.join(mixed)} have different kinds")
    dangling = [f"tag {t.tag} -> {t.name}@{t.version}" for t in index.tags if f"{t.name}@{t.version}" not in refs]
    dangling += [f"lineage {e.child_name}@{e.child_version} <- {e.parent_name}@{e.parent_version}"
                 for e in index.lineage
                 if {f"{e.child_name}@{e.child_version}", f"{e.parent_name}@{e.parent_version}"} - refs]
    if dangling:
        raise _bad_archive(path, "the index refers to versions it does not hold: " + ", ".join(dangling))


def _verified_blobs(path: Path, index: ArchiveIndex, members: dict[str, bytes]) -> dict[str, bytes]:
    """Blob bytes by digest, each re-hashed and parsed as a brick that matches its index entry."""
    blobs: dict[str, bytes] = {}
    for v in index.versions:
        data = members.get(BLOB_DIR + v.digest)
        if data is None:
            raise _bad_archive(path, f"the blob of {v.ref} is missing; the archive may be truncated")
        if not DIGEST_RE.match(v.digest) or sha256_hex(data) != v.digest:
            raise _bad_archive(path, f"the blob of {v.ref} does not match its sha256: the archive is corrupt "
                                     "or was altered")
        _check_brick(path, v, brick_from_bytes(data, source=f"archive {path}: {v.ref}"), len(data))
        blobs[v.digest] = data
    return blobs


def _check_brick(path: Path, v: ArchivedVersion, brick: Brick, size: int) -> None:
    try:
        meta = BrickMeta.model_validate_json(v.meta_json)
    except ValidationError:
        raise _bad_archive(path, f"the metadata of {v.ref} in {INDEX_NAME} is invalid") from None
    facts = (brick.meta.name, brick.meta.kind, brick.meta.host.fingerprint, brick.meta, size)
    if facts != (v.name, v.kind, v.host_fingerprint, meta, v.size_bytes):
        raise _bad_archive(path, f"{INDEX_NAME} does not describe the brick stored for {v.ref} "
                                 "(name, kind, host, metadata or size differ)")


def _should_add(conn: sqlite3.Connection, v: ArchivedVersion) -> bool:
    """False when the same version with the same bytes is already here; raises on any conflict."""
    cat.check_kind(conn, v.name, v.kind)
    return cat.existing_same(conn, v.name, parse_version(v.version), v.digest) is None


def _insert(conn: sqlite3.Connection, v: ArchivedVersion) -> VersionInfo:
    info = VersionInfo(name=v.name, version=v.version, digest=v.digest, kind=v.kind,
                       host_fingerprint=v.host_fingerprint, created=v.created, size_bytes=v.size_bytes,
                       meta=BrickMeta.model_validate_json(v.meta_json))
    cat.insert_version(conn, info)
    return info


def _apply_edges_and_tags(conn: sqlite3.Connection, index: ArchiveIndex) -> None:
    for e in index.lineage:
        child = cat.version_row(conn, e.child_name, e.child_version)
        parent = cat.version_row(conn, e.parent_name, e.parent_version)
        cat.insert_edge(conn, child, parent, e.operation, e.params)
    for t in index.tags:
        cat.set_tag(conn, t.name, t.tag, t.version)

