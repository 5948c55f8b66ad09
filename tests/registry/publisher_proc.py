"""Child process for the crash and concurrency tests: publishes bricks into a registry.

usage: python publisher_proc.py ROOT NAME COUNT [GO_FILE]

Publishes COUNT versions of NAME with auto-bump (COUNT 0: until killed). Every version gets its
own tag ``build-<pid>-<i>`` and, when NAME already had a version, NAME@latest as lineage parent,
both inside the publishing transaction; the tests use them to spot a half-committed version.
Prints ``ready`` once imports are done, then waits for GO_FILE (if given) so that several
processes start publishing at the same moment, then prints each committed ref.
Not a test module (no test_ prefix): pytest does not collect it.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path

from bricks.format import HostRef
from bricks.kinds.neurons import neuron_brick
from registry import Registry

HOST = HostRef(fingerprint="sha256:" + "ab" * 32, arch="llama", n_layers=4, d_model=64, d_ff=128, n_heads=4,
               n_kv_heads=2, head_dim=16, name="tiny")


def publish_one(reg: Registry, name: str, i: int) -> str:
    pid = os.getpid()
    has_parent = name in reg.names()
    indices = sorted({i % 128, (7 * i + pid) % 128})
    brick = neuron_brick(name, HOST, {i % 4: indices}, gain=float(i),
                         params={"pid": pid, "i": i, "has_parent": has_parent})
    info = reg.publish(brick, parents=[name] if has_parent else [], operation="update", op_params={"i": i},
                       tags=[f"build-{pid}-{i}"])
    return info.ref


def main(root: str, name: str, count: int, go_file: str | None = None) -> None:
    reg = Registry(root)
    print("ready", flush=True)
    while go_file and not Path(go_file).exists():
        time.sleep(0.005)
    for i in itertools.count() if count == 0 else range(count):
        print(publish_one(reg, name, i), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:5])
