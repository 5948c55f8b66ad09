"""Crash safety (SIGKILL at random moments and at each fault point) and concurrent processes publishing,
tagging and collecting garbage in one registry."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import sqlite3
import time
from pathlib import Path

from registry import Registry
from registry.faults import POINTS

from .publisher_proc import SHARED_TAG, work

FORK = mp.get_context("fork")
KILLS_PER_POINT = 5  # x 5 fault points, plus as many kills at random moments: 50 in all
# Sleeps at every fault point widen the windows a kill at a random moment should land in.
WIDEN = "blob-temp-written:0.003,blob-written:0.01,publish-txn:0.01,tag-moved:0.01,gc-sweep:0.002"


def _fork(root: Path, log: Path, count: int, **kw) -> mp.Process:
    proc = FORK.Process(target=work, args=(str(root), "crash" if count == 0 else "shared", count, str(log)),
                        kwargs=kw, daemon=True)
    proc.start()
    return proc


def _logged(log: Path, op: str) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split()[1] for line in lines if line.split()[0] == op]


def _assert_catalog_opens_and_verifies(root: Path) -> Registry:
    conn = sqlite3.connect(root / "catalog.sqlite")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    reg = Registry(root)
    assert reg.verify() == []  # every version's blob present and hashing to its digest
    return reg


def _assert_whole_versions(reg: Registry) -> None:
    """Each version carries the tag and lineage edge its publish transaction inserted with it, once."""
    refs = [info.ref for info in reg.list()]
    assert len(refs) == len(set(refs))
    for info in reg.list():
        pid, i = info.meta.params["pid"], info.meta.params["i"]
        assert reg.tags(info.name).get(f"build-{pid}-{i}") == info.version, info.ref
        parents = reg.lineage(info.ref)["parents"]
        assert len(parents) == (1 if info.meta.params["has_parent"] else 0), info.ref
        assert all(p["params"] == {"i": i} for p in parents)


def _assert_no_lost_tag_move(reg: Registry, name: str, logged_moves: list[str]) -> None:
    """Every move of the shared tag a process saw succeed is in the history once, the history is one chain
    (each move starts where the previous one ended: no two writers moved it from the same place), and the
    tag points where the last move left it."""
    history = reg.tag_history(name, SHARED_TAG)
    moved_to = [f"{name}@{e.new_version}" for e in history]
    assert len(moved_to) == len(set(moved_to))  # each move targets a version just published: all distinct
    assert set(logged_moves) <= set(moved_to)
    for before, after in zip(history, history[1:]):
        assert after.old_version == before.new_version, (before, after)
    if history:
        assert history[0].old_version is None
        assert reg.tags(name)[SHARED_TAG] == history[-1].new_version


def test_fifty_sigkills_leave_whole_versions_only(tmp_path: Path):
    root, log, rng = tmp_path / "reg", tmp_path / "ops.log", random.Random(1234)
    plan = [p for p in POINTS for _ in range(KILLS_PER_POINT)] + [None] * (KILLS_PER_POINT * len(POINTS))
    rng.shuffle(plan)
    t0 = time.perf_counter()
    for k, point in enumerate(plan):
        if point is None:  # a kill from outside at a random moment
            proc = _fork(root, log, 0, seed=k, fault=WIDEN)
            time.sleep(rng.uniform(0.01, 0.2))
            os.kill(proc.pid, signal.SIGKILL)
        else:  # the process kills itself at that point, after 0-2 whole iterations
            proc = _fork(root, log, 0, seed=k, fault=f"{point}:kill", arm_at=rng.randrange(3))
        proc.join(timeout=60)
        assert proc.exitcode == -signal.SIGKILL, (k, point, proc.exitcode)
        _assert_catalog_opens_and_verifies(root)  # after every kill, not only at the end
    elapsed = time.perf_counter() - t0

    reg = _assert_catalog_opens_and_verifies(root)
    committed, refs = _logged(log, "publish"), [i.ref for i in reg.list()]
    assert len(refs) == len(set(refs)) >= len(committed) > 0
    assert set(committed) <= set(refs)  # a version reported as published survives the kill
    _assert_whole_versions(reg)
    _assert_no_lost_tag_move(reg, "crash", _logged(log, "tag"))
    assert reg.verify() == []  # what `brick verify` reports (tests/cli covers the command itself)

    referenced = {i.digest for i in reg.list()}
    stats = reg.gc(grace_seconds=0)  # what the kills left: blobs never committed and temp files
    assert {p.name for p in reg.store.blobs()} == referenced
    assert list(reg.store.temp_files()) == []
    for ref in refs:
        assert reg.get(ref).name == "crash"
    print(f"\n{len(plan)} SIGKILLs ({KILLS_PER_POINT} at each fault point, {plan.count(None)} at random moments) in "
          f"{elapsed:.1f}s, catalog opened and verified after each; {len(refs)} versions at the end "
          f"({len(committed)} reported), {len(reg.tag_history('crash', SHARED_TAG))} tag moves; last gc: {stats}")


def test_eight_processes_publishing_tagging_and_collecting(tmp_path: Path):
    root, go, per_process = tmp_path / "reg", tmp_path / "go", 6
    t0 = time.perf_counter()
    logs = [tmp_path / f"ops{n}.log" for n in range(8)]
    procs = [_fork(root, log, per_process, seed=n, go_file=str(go)) for n, log in enumerate(logs)]
    time.sleep(0.05)
    go.touch()
    for proc in procs:
        proc.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 8
    published = [ref for log in logs for ref in _logged(log, "publish")]
    moves = [ref for log in logs for ref in _logged(log, "tag")]
    reg = _assert_catalog_opens_and_verifies(root)
    versions = reg.versions("shared")
    assert len(published) == len(set(published)) == 8 * per_process
    assert sorted(published) == sorted(f"shared@{v}" for v in versions)
    assert set(versions) == {f"1.{i}.0" for i in range(8 * per_process)}
    _assert_whole_versions(reg)
    _assert_no_lost_tag_move(reg, "shared", moves)
    assert len(reg.tag_history("shared", SHARED_TAG)) == len(moves)  # no process died: none unlogged
    gcs = sum(_logged_gc(log) for log in logs)
    assert gcs > 0
    print(f"\n8 processes: {len(versions)} versions, {len(moves)} moves of one tag, {gcs} gc runs, "
          f"{time.perf_counter() - t0:.1f}s")


def _logged_gc(log: Path) -> int:
    return sum(line == "gc" for line in log.read_text().splitlines())


def _open_and_write(path: str, go: str, out) -> None:
    from registry.catalog import Catalog

    while not os.path.exists(go):
        time.sleep(0.0005)
    try:
        catalog = Catalog(Path(path))
        with catalog.read() as conn:
            conn.execute("SELECT 1").fetchall()
        with catalog.write():
            pass
        out.put("ok")
    except Exception as e:  # reported to the test, which names it
        out.put(repr(e))


def test_processes_racing_to_create_a_new_catalog(tmp_path: Path):
    """Fresh processes opening a brand-new catalog at the same instant all switch it to WAL and migrate it.
    Before the retry in `_set_wal`, about 1 start in 13 failed with "database is locked" (8 processes)."""
    for trial in range(25):
        path, go = tmp_path / f"c{trial}.db", tmp_path / f"go{trial}"
        out = FORK.Queue()
        procs = [FORK.Process(target=_open_and_write, args=(str(path), str(go), out)) for _ in range(8)]
        for p in procs:
            p.start()
        time.sleep(0.05)
        go.touch()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert results == ["ok"] * 8, (trial, results)
