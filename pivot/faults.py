"""Crash-consistency hooks, for tests: with PIVOT_FAULT=POINT:kill in the environment,
the process that reaches POINT kills itself there (SIGKILL), so a test can check what
the next run makes of a stage interrupted at that step of recording it. Unset (always,
outside those tests) a hook costs one comparison.

Points, in the order a successful stage's run is recorded (pivot/runtime/worker.py):
    stored       an output's cache object was written (its state-cache row not yet)
    recorded     ... and its state-cache row
    committed    every output stored, the lock not yet written
    locked       the lock written, the run-cache entry not yet
    run-cached   the run-cache entry written
and when outputs come from the run cache instead (pivot/state/plan.py):
    placed       an output placed from the cache (its row and the lock not yet written)
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "reached"]

POINTS = ("stored", "recorded", "committed", "locked", "run-cached", "placed")
_FAULT = os.environ.get("PIVOT_FAULT") or None


def reached(point: str) -> None:
    if _FAULT is not None and f"{point}:kill" == _FAULT:
        os.kill(os.getpid(), signal.SIGKILL)
