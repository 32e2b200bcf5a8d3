"""A pool whose loop hangs holding the GIL (issue 11): no thread of it runs Python, so
it neither heartbeats nor can it stop its own workers. The broker gives it up on the
silence; its worker sees the pool's lease no longer renewed while the pool runs (not
stopped) and stops the stage, before the broker runs the stage on another pool: two
attempts of the stage are never alive at once.

The hang is injected with `PIVOT_FAULT=heartbeat:hang` (pivot/faults.py) in one
standalone pool's environment: at its first heartbeat while a worker runs the stage, its loop
calls libc's pause() through ctypes.PyDLL, which keeps the GIL.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from procs import (
    HOLD,
    Broker,
    ProcGuard,
    alive,
    describe,
    finished,
    of_kind,
    parse_events,
    start_pivot,
    start_pool,
    wait_exit,
    wait_for,
    write_files,
)

pytestmark = pytest.mark.timeout(90)

WAIT_S = 30.0



def runs(root: Path) -> list[list[str]]:
    path = root / "hold.runs"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_a_pool_hung_holding_the_gil_is_fenced_before_its_stage_runs_elsewhere(
    tmp_path: Path, proc_guard: ProcGuard, start_broker: Callable[..., Broker],
) -> None:
    root = write_files(tmp_path / "proj", {"pipeline.py": HOLD})
    broker = start_broker(root)
    control = broker.wait_bound()
    hung = proc_guard.track(start_pivot(
        root, "workers", "--broker", control, "--name", "hangs", "--jobs", "1",
        env={**os.environ, "PIVOT_FAULT": "heartbeat:hang"},
    ))
    repro = proc_guard.track(start_pivot(root, "repro", "--broker", control, "--json"))
    wait_for(lambda: runs(root), WAIT_S, "the first attempt to start on the pool that hangs")
    [[first, _, _]] = runs(root)
    # Joins only now, so the first attempt is the hung pool's.
    start_pool(proc_guard, root, control, "healthy", "--jobs", "1")

    rc, out, err = wait_exit(repro, 60, "pivot repro")
    assert rc == 0, describe((rc, out, err))
    events = parse_events(out)
    assert finished(events)["hold"]["status"] == "ran", events
    assert [e["pool"] for e in of_kind(events, "pool_lost")] == ["hangs"], events
    attempts = runs(root)
    assert len(attempts) == 2, attempts
    assert attempts[1][2] == "True", f"the hung pool's attempt (pid {first}) was alive when the next began"
    assert (root / "hold.txt").read_text() == "done\n"
    assert not alive(int(first))

    # The pool itself is still hung (only SIGKILL ends it); its worker said why it left.
    assert hung.poll() is None, "the pool that hangs exited"
    hung.send_signal(signal.SIGKILL)
    _, _, hung_err = wait_exit(hung, 10, "the hung pool after SIGKILL")
    assert "has not renewed its lease" in hung_err, hung_err
    rc, _, err = broker.stop()
    assert rc == 0, err
