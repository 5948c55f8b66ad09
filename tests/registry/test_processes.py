"""Crash safety (SIGKILL at random points) and concurrent publishers in separate processes."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from registry import Registry

REPO = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).with_name("publisher_proc.py")


def _start(root: Path, name: str, count: int, go_file: Path | None = None, **env: str) -> subprocess.Popen:
    args = [sys.executable, str(HELPER), str(root), name, str(count)] + ([str(go_file)] if go_file else [])
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    proc = subprocess.Popen(args, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def _blob_digests(reg: Registry) -> set[str]:
    return {p.name for p in reg.store.blobs()}


def _assert_whole_versions(reg: Registry) -> None:
    """Each version carries the tag and lineage edge its publish transaction inserted with it."""
    for info in reg.list():
        pid, i = info.meta.params["pid"], info.meta.params["i"]
        assert reg.tags(info.name).get(f"build-{pid}-{i}") == info.version, info.ref
        parents = reg.lineage(info.ref)["parents"]
        assert len(parents) == (1 if info.meta.params["has_parent"] else 0), info.ref
        assert all(p["params"] == {"i": i} for p in parents)


def test_sigkill_at_random_points_leaves_whole_versions_only(tmp_path: Path):
    root, rng = tmp_path / "reg", random.Random(1234)
    committed: list[str] = []
    for _ in range(10):
        # Random pauses widen the windows that matter: blob written but not committed, and mid-transaction.
        delays = {"BRICK_REGISTRY_TEST_DELAY": str(rng.choice([0, 0.005, 0.02])),
                  "BRICK_REGISTRY_TEST_DELAY_TXN": str(rng.choice([0, 0.005, 0.02]))}
        proc = _start(root, "crash", 0, **delays)
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        committed += out.split()

    conn = sqlite3.connect(root / "catalog.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    reg = Registry(root)
    refs = [i.ref for i in reg.list()]
    assert len(refs) == len(set(refs)) >= len(committed) > 0
    assert set(committed) <= set(refs)  # a version reported as published survives the kill
    assert reg.verify() == []
    _assert_whole_versions(reg)

    referenced = {i.digest for i in reg.list()}
    orphans = _blob_digests(reg) - referenced
    stats = reg.gc(grace_seconds=0)
    assert stats["blobs_removed"] == len(orphans)
    assert _blob_digests(reg) == referenced
    assert list(reg.store.temp_files()) == []
    for ref in refs:
        assert reg.get(ref).name == "crash"


def test_four_processes_publishing_the_same_name(tmp_path: Path):
    root, go = tmp_path / "reg", tmp_path / "go"
    procs = [_start(root, "shared", 10, go) for _ in range(4)]
    go.touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "Error" not in err, err
        outputs += out.split()
    reg = Registry(root)
    versions = reg.versions("shared")
    assert len(outputs) == len(set(outputs)) == 40
    assert sorted(outputs) == sorted(f"shared@{v}" for v in versions)
    assert set(versions) == {f"1.{i}.0" for i in range(40)}
    assert reg.verify() == []
    _assert_whole_versions(reg)


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
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for trial in range(25):
        path, go = tmp_path / f"c{trial}.db", tmp_path / f"go{trial}"
        out = ctx.Queue()
        procs = [ctx.Process(target=_open_and_write, args=(str(path), str(go), out)) for _ in range(8)]
        for p in procs:
            p.start()
        time.sleep(0.05)
        go.touch()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert results == ["ok"] * 8, (trial, results)
