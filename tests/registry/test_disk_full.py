"""A full disk during publish: a clear error naming the brick, and nothing half-written.

The real test mounts a 1 MiB tmpfs (needs root or CAP_SYS_ADMIN; skipped elsewhere), fills it and then
frees it page by page, so that publish runs out of room at every step: writing the blob, then recording the
version in the catalog's WAL. Where mounting is not permitted, the simulated test still covers the blob
write by making fsync fail with ENOSPC, as ext4 reports a full disk for delayed allocation.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from registry import Registry, RegistryFullError

from .conftest import make_lora, make_neurons

PAGE = 4096


@pytest.fixture
def small_fs(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); test_enospc_simulated covers the blob write")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> int:
    """Grow `path` with zeros until the file system is full; returns its size."""
    with open(path, "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * PAGE)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return path.stat().st_size


def _assert_unchanged(reg: Registry, before: list[str]) -> None:
    assert [i.ref for i in reg.list()] == before  # no version, half or whole, was added
    assert reg.verify() == []
    assert list(reg.store.temp_files()) == []  # no half-written blob left behind
    conn = sqlite3.connect(reg.catalog.path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_disk_full_during_publish_on_a_small_tmpfs(small_fs: Path):
    reg = Registry(small_fs / "reg")
    reg.publish(make_neurons("base"))
    before = [i.ref for i in reg.list()]
    brick = make_lora("big", rank=16)  # ~12 KB of tensors: several pages of blob
    filler = small_fs / "filler"
    size = _fill(filler)
    with pytest.raises(RegistryFullError, match="for the registry catalog"):
        reg.list()  # a full disk is named as such even for reading, not "disk I/O error"
    failures: list[str] = []
    for pages in range(1, 64):  # one more page free each time, until publish fits
        os.truncate(filler, size - pages * PAGE)
        try:
            info = reg.publish(brick, tags=["stable"])
            break
        except RegistryFullError as e:
            assert str(small_fs) in e.problem and "nothing was" in e.problem and "free space" in e.fix, e
            failures.append(e.problem)
        os.truncate(filler, 0)  # room to look at what the failed publish left
        _assert_unchanged(reg, before)
        size = _fill(filler)
    else:
        pytest.fail("publish never fitted")
    blob_failures = [f for f in failures if "no room to store a version of big" in f]
    catalog_failures = [f for f in failures if "for the registry catalog" in f]
    assert blob_failures and catalog_failures and len(blob_failures) + len(catalog_failures) == len(failures)
    filler.unlink()
    assert info.ref == "big@1.0.0" and reg.tags("big") == {"stable": "1.0.0"}
    assert reg.verify() == [] and reg.get("big").name == "big"
    reg.gc(grace_seconds=0)  # a catalog failure can leave a whole blob no version references
    assert {p.name for p in reg.store.blobs()} == {i.digest for i in reg.list()}
    print(f"\n{len(blob_failures)} blob-write and {len(catalog_failures)} catalog failures, then published")


def test_enospc_simulated(reg: Registry, monkeypatch):
    reg.publish(make_neurons("base"))
    before = [i.ref for i in reg.list()]

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RegistryFullError) as e:
        reg.publish(make_lora("big"))
    assert "no room to store a version of big" in e.value.problem and "No space left" in e.value.problem
    monkeypatch.undo()
    _assert_unchanged(reg, before)
    assert reg.publish(make_lora("big")).ref == "big@1.0.0"
