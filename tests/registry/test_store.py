"""Blob integrity: corruption and loss are reported, never served; gc spares what is referenced or recent."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from registry import CorruptBlobError, Registry

from .conftest import blob_files, make_neurons


def _blob(reg: Registry, ref: str) -> Path:
    return reg.store.path(reg.resolve(ref).digest)


def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def _flip_middle_byte(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0x01
    return bytes(damaged)


@pytest.mark.parametrize("damage", [_flip_middle_byte, lambda data: data[: len(data) - 100]],
                         ids=["flipped-byte", "truncated"])
def test_damaged_blob_is_detected_never_served(reg: Registry, damage):
    reg.publish(make_neurons("b"))
    reg.publish(make_neurons("other", [9]))
    path = _blob(reg, "b")
    path.write_bytes(damage(path.read_bytes()))
    for read in (reg.get, reg.get_bytes):
        with pytest.raises(CorruptBlobError) as e:
            read("b")
        assert "b@1.0.0" in e.value.problem and "corrupt" in e.value.problem
        assert "brick import" in e.value.fix
        assert 400 <= e.value.status < 500  # the server answers that request clearly and stays up
    assert reg.get("other").name == "other"
    problems = reg.verify()
    assert [(p.ref, "corrupt" in p.problem) for p in problems] == [("b@1.0.0", True)]
    assert "b@1.0.0" in str(problems[0])


def test_missing_blob_is_reported(reg: Registry):
    reg.publish(make_neurons("b"))
    _blob(reg, "b").unlink()
    with pytest.raises(CorruptBlobError, match="missing"):
        reg.get("b")
    assert [p.problem for p in reg.verify()] == ["blob missing"]


def test_republishing_heals_a_corrupt_blob(reg: Registry):
    brick = make_neurons("b")
    reg.publish(brick)
    _blob(reg, "b").write_bytes(b"garbage")
    reg.publish(brick, version="1.0.0")  # same bytes: idempotent, and the stored blob is rewritten
    assert reg.verify() == []
    assert reg.get_bytes("b") == brick.to_bytes()


def test_verify_clean_and_shared_blobs(reg: Registry):
    brick = make_neurons("b")
    reg.publish(brick)
    reg.publish(brick)
    assert reg.verify() == []
    _blob(reg, "b").write_bytes(b"x")
    assert sorted(p.ref for p in reg.verify()) == ["b@1.0.0", "b@1.1.0"]


def test_gc_removes_only_old_orphans(reg: Registry):
    reg.publish(make_neurons("keep", [1]))
    reg.publish(make_neurons("gone", [2]))
    orphan = _blob(reg, "gone")
    reg.rm("gone@1.0.0")
    assert len(blob_files(reg.root)) == 2
    # Too recent: a publisher may be about to commit a version that references it.
    assert reg.gc(grace_seconds=3600)["blobs_removed"] == 0
    _age(orphan, 7200)
    dry = reg.gc(grace_seconds=3600, dry_run=True)
    assert dry["blobs_removed"] == 1 and dry["dry_run"] and orphan.exists()
    stats = reg.gc(grace_seconds=3600)
    assert stats["blobs_removed"] == 1 and stats["bytes_freed"] > 0 and stats["blobs_kept"] == 1
    assert not orphan.exists()
    assert reg.gc(grace_seconds=0)["blobs_removed"] == 0
    assert reg.get("keep").name == "keep"


def test_gc_removes_stale_temp_files(reg: Registry):
    reg.publish(make_neurons("b"))
    shard = _blob(reg, "b").parent
    stale, fresh = shard / ".tmp-stale", shard / ".tmp-fresh"
    stale.write_bytes(b"half a blob")
    fresh.write_bytes(b"being written")
    _age(stale, 7200)
    assert reg.gc(grace_seconds=3600)["temp_removed"] == 1
    assert not stale.exists() and fresh.exists()
    assert reg.gc(grace_seconds=0)["temp_removed"] == 1


def test_dedup_refreshes_an_orphan_so_gc_spares_it(reg: Registry):
    brick = make_neurons("b")
    reg.publish(brick)
    path = _blob(reg, "b")
    reg.rm("b@1.0.0")
    _age(path, 7200)
    reg.store.put(brick.to_bytes())  # what publish does before its transaction
    assert reg.gc(grace_seconds=3600)["blobs_removed"] == 0 and path.exists()


def test_gc_removing_the_blob_while_publish_rehashes_it(reg: Registry, monkeypatch):
    """An orphan older than the grace period, re-published at the moment gc removes it: publish stores it
    again instead of failing with FileNotFoundError (seen by reading the code; the window is one open())."""
    import registry.store as store

    brick = make_neurons("b")
    reg.publish(brick)
    path = _blob(reg, "b")
    reg.rm("b@1.0.0")
    original = store._hash_file

    def gc_first(p: Path) -> str:
        p.unlink(missing_ok=True)  # what a concurrent gc does between put's existence check and its read
        return original(p)

    monkeypatch.setattr(store, "_hash_file", gc_first)
    assert reg.publish(brick).ref == "b@1.0.0"
    monkeypatch.undo()
    assert path.is_file() and reg.verify() == []
