"""Content-addressed blob store: ``ROOT/blobs/sha256/<2 hex>/<64 hex>``.

A blob is written to a temp file in its final directory, fsynced, renamed into place and the
directory fsynced, so a crash leaves either the whole blob or a stray temp file (which `gc`
removes). Every read re-hashes the bytes: a corrupted or missing blob raises, it is never served.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from bricks.errors import BrickError

from .faults import fault_point

DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
TEMP_PREFIX = ".tmp-"
WRITE_ATTEMPTS = 5


class CorruptBlobError(BrickError):
    """A stored blob is missing or its bytes no longer match its digest."""

    # Not 5xx: the server is fine, one brick version is not; the request naming it gets a clear error.
    status = 410


class RegistryFullError(BrickError):
    """The registry's file system has no room for a blob or a catalog change; nothing was recorded."""

    status = 507

    @classmethod
    def for_blob(cls, what: str, folder: Path, err: OSError) -> RegistryFullError:
        return cls(f"no room to store {what} in {folder} ({err.strerror}); nothing was published",
                   "free space on that file system (`brick gc` removes unreferenced blobs) and publish again")


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root) / "blobs" / "sha256"

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def put(self, data: bytes, what: str = "a brick") -> str:
        """Store `data` and return its digest; identical content is stored once. `what` names the brick in
        the error raised when the file system is full."""
        digest = sha256_hex(data)
        path = self.path(digest)
        if self._is_intact(path, digest):
            try:
                # Refresh mtime: gc spares recent blobs, and this one is about to be referenced again.
                os.utime(path)
                return digest
            except FileNotFoundError:
                pass  # gc removed it just now; write it again below
        self._write(path, data, what)
        return digest

    def ensure(self, digest: str, data: bytes, what: str = "a brick") -> None:
        """Re-write a blob if it vanished (gc ran between `put` and the catalog commit)."""
        if not self.path(digest).is_file():
            self._write(self.path(digest), data, what)

    def read(self, digest: str, what: str) -> bytes:
        """The verified bytes of a blob; `what` names the brick version for the error message."""
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptBlobError(
                f"the blob of {what} (sha256:{digest[:12]}) is missing from {path.parent}",
                f"re-publish {what} or restore it with `brick import` from an archive that holds it",
            ) from None
        actual = sha256_hex(data)
        if actual != digest:
            raise CorruptBlobError(
                f"the blob of {what} is corrupt: its bytes hash to sha256:{actual[:12]}, "
                f"the catalog expects sha256:{digest[:12]} ({path})",
                f"re-publish {what} or restore it with `brick import`; run `brick verify` to check the rest",
            )
        return data

    def check(self, digest: str) -> str | None:
        """None when the blob is intact, else what is wrong with it."""
        try:
            actual = _hash_file(self.path(digest))
        except FileNotFoundError:
            return "blob missing"
        return None if actual == digest else f"blob corrupt (hashes to sha256:{actual[:12]})"

    def blobs(self) -> Iterator[Path]:
        """Every stored blob file (temp files excluded)."""
        if self.root.is_dir():
            for path in self.root.glob("*/*"):
                if DIGEST_RE.match(path.name) and path.parent.name == path.name[:2]:
                    yield path

    def temp_files(self) -> Iterator[Path]:
        if self.root.is_dir():
            yield from self.root.glob(f"*/{TEMP_PREFIX}*")

    def _is_intact(self, path: Path, digest: str) -> bool:
        # A damaged blob with the right name must be replaced, not reused.
        try:
            return _hash_file(path) == digest
        except FileNotFoundError:  # never there, or gc removed an old orphan just now
            return False

    def _write(self, path: Path, data: bytes, what: str) -> None:
        # `gc` with a short grace period may delete our temp file before the rename (it cannot tell a
        # live writer's temp file from a dead one's): then the rename finds nothing, and we write again.
        for attempt in range(WRITE_ATTEMPTS):
            try:
                self._write_once(path, data)
                break
            except FileNotFoundError:
                if attempt == WRITE_ATTEMPTS - 1:
                    raise
            except OSError as e:
                if e.errno in FULL_ERRNOS:
                    raise RegistryFullError.for_blob(what, path.parent, e) from None
                raise
        _fsync_dir(path.parent)

    def _write_once(self, path: Path, data: bytes) -> None:
        tmp = path.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            fault_point("blob-temp-written")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a half-written temp file never stays behind
            raise


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    # Without this the rename can be lost on power failure while the catalog commit survives.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def age_seconds(path: Path) -> float | None:
    """Seconds since last modification, or None if the file is gone."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
