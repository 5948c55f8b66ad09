"""The workload of the crash and concurrency tests: one process publishing, moving a tag and collecting garbage.

`work` runs in a forked child (the tests fork: a fresh interpreter importing torch costs seconds, a fork
milliseconds, and a SIGKILL is the same either way). Every iteration publishes a version of NAME with its
own tag ``build-<pid>-<i>`` and, when NAME already had a version, NAME@latest as lineage parent, both inside
the publishing transaction; then, at random, points the shared tag ``stable`` at that version (its own
transaction, racing the other processes) and runs ``gc(grace_seconds=0)``. Each finished operation is
appended to LOG as one line (``publish REF``, ``tag REF``, ``gc``); a kill can land after an operation
committed and before its line, never the other way round.

usage: python publisher_proc.py ROOT NAME COUNT LOG  (the same loop in a fresh interpreter, to run by hand)
Not a test module (no test_ prefix): pytest does not collect it.
"""

from __future__ import annotations

import itertools
import os
import random
import sys
import time
from pathlib import Path

from bricks.format import HostRef
from bricks.kinds.neurons import neuron_brick
from registry import Registry
from registry.faults import FAULTS_ENV

HOST = HostRef(fingerprint="sha256:" + "ab" * 32, arch="llama", n_layers=4, d_model=64, d_ff=128, n_heads=4,
               n_kv_heads=2, head_dim=16, name="tiny")
SHARED_TAG = "stable"


def publish_one(reg: Registry, name: str, i: int) -> str:
    pid = os.getpid()
    has_parent = name in reg.names()
    indices = sorted({i % 128, (7 * i + pid) % 128})
    brick = neuron_brick(name, HOST, {i % 4: indices}, gain=float(i),
                         params={"pid": pid, "i": i, "has_parent": has_parent})
    info = reg.publish(brick, parents=[name] if has_parent else [], operation="update", op_params={"i": i},
                       tags=[f"build-{pid}-{i}"])
    return info.ref


def work(root: str, name: str, count: int, log: str, seed: int = 0, go_file: str | None = None,
         fault: str | None = None, arm_at: int = 0) -> None:
    """COUNT iterations (0: until killed). From iteration `arm_at` on, $BRICK_REGISTRY_FAULTS is `fault`."""
    reg, rng = Registry(root), random.Random(seed)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    while go_file and not Path(go_file).exists():
        time.sleep(0.002)
    for i in itertools.count() if count == 0 else range(count):
        if fault is not None and i == arm_at:
            os.environ[FAULTS_ENV] = fault
        ref = publish_one(reg, name, i)
        os.write(fd, f"publish {ref}\n".encode())
        if rng.random() < 0.6:
            reg.tag(ref, SHARED_TAG)
            os.write(fd, f"tag {ref}\n".encode())
        if rng.random() < 0.3:
            reg.gc(grace_seconds=0)
            os.write(fd, b"gc\n")
    os.close(fd)


if __name__ == "__main__":
    work(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
