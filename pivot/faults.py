"""Fault hooks, for tests: with PIVOT_FAULT=POINT:ACTION[,POINT:ACTION...] in the environment, the process
that reaches POINT kills itself there (`kill`: SIGKILL), so a test can check what the
next run makes of a stage interrupted at that step of recording it, or hangs there for
good holding the GIL (`hang`: no thread of the process runs Python again; only SIGKILL
ends it). Unset (always, outside those tests) a hook costs one comparison.

Points, in the order a successful stage's run is recorded (pivot/runtime/worker.py):
    stored       an output's cache object was written (its state-cache row not yet)
    recorded     ... and its state-cache row
    committed    every output stored, the lock not yet written
    locked       the lock written, the run-cache entry not yet
    run-cached   the run-cache entry written
and when outputs come from the run cache instead (pivot/state/plan.py):
    placed       an output placed from the cache (its row and the lock not yet written)
in a pool's loop (workers/pool.py):
    heartbeat    a heartbeat is due while a worker runs a stage
in the `pivot` script (pivot/launch/early.py):
    forked       its early loader forked and recorded, Ctrl-C still held back
    loading      in that loader, before its imports
    interrupted  a Ctrl-C is ending the command, which ignores any other from here
in `pivot up` (pivot/cli/launch.py):
    starting     its pool and watcher started, its broker not yet
(`interrupt`: SIGINT to itself, as a Ctrl-C at that moment.)
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "reached"]

POINTS = ("stored", "recorded", "committed", "locked", "run-cached", "placed")  # recording a stage
# POINT:ACTION, or several, comma-separated (a Ctrl-C, then another as the command ends).
_FAULTS = dict(item.partition(":")[::2] for item in os.environ.get("PIVOT_FAULT", "").split(",") if item)


def reached(point: str) -> None:
    if not _FAULTS or point not in _FAULTS:
        return
    action = _FAULTS[point]
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "interrupt":
        os.kill(os.getpid(), signal.SIGINT)
    elif action == "hang":
        import ctypes

        libc = ctypes.PyDLL(None)  # PyDLL: the GIL stays held during the call
        while True:
            libc.pause()
    elif action == "segv":
        import ctypes

        ctypes.string_at(0)  # (a PYFUNCTYPE: the GIL stays held)
