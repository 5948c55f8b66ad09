"""Fault injection for the registry's crash tests: named points where a test can pause or kill the process.

$BRICK_REGISTRY_FAULTS holds comma-separated ``point:action`` pairs; the action is ``kill`` (SIGKILL
this process there) or a number of seconds to sleep (to widen a window for a kill from outside).
Unset, as it always is in normal use, a fault point costs one environment lookup.

Points: ``blob-temp-written`` (blob bytes in a temp file, not yet renamed), ``blob-written`` (blob
in place, publish transaction not begun), ``publish-txn`` (version row inserted, lineage and tags not
yet, uncommitted), ``tag-moved`` (tag row and history changed, uncommitted), ``gc-sweep`` (gc holds
the write lock and has just handled one blob).
"""

from __future__ import annotations

import os
import signal
import time

FAULTS_ENV = "BRICK_REGISTRY_FAULTS"
POINTS = ("blob-temp-written", "blob-written", "publish-txn", "tag-moved", "gc-sweep")


def fault_point(point: str) -> None:
    spec = os.environ.get(FAULTS_ENV)
    if not spec:
        return
    for item in spec.split(","):
        where, _, action = item.partition(":")
        if where != point:
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        else:
            time.sleep(float(action))
