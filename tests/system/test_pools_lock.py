"""The pools lock (pivot/transport/rundir.py): an engine that takes a project waits for the
worker pools of one that is gone, with real processes holding the lock."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pivot.errors import StackRunning
from pivot.transport.rundir import RunDir, lock_holders, run_dir_of, wait_for_pools

pytestmark = pytest.mark.timeout(60)

# Holds the lock as a pool does; with "fork", forks a child that outlives it (as a stage's
# own forked process may). Says "held" (and the child's pid), then waits for its stdin.
HOLDER = """\
import os, sys, time
from pathlib import Path
from pivot.transport.rundir import hold_pools_lock

hold_pools_lock(Path(sys.argv[1]))
child = 0
if sys.argv[2:] == ["fork"]:
    child = os.fork()
    if child == 0:  # killed by the test
        time.sleep(60)
        os._exit(0)
print("held", child, flush=True)
sys.stdin.read()
"""


def holder(root: Path, *args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    word, child = proc.stdout.readline().split()
    assert word == "held"
    return proc, int(child)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def test_an_engine_waits_for_a_pool_that_holds_the_lock_and_names_it_if_it_does_not_end(tmp_path: Path) -> None:
    pool, _ = holder(tmp_path)
    try:
        assert lock_holders(run_dir_of(tmp_path) / "pools.lock") == [pool.pid]
        with pytest.raises(StackRunning, match=f"pid {pool.pid}"):
            wait_for_pools(tmp_path, timeout=0.2)
        took: list[int | None] = []

        def take() -> None:
            rundir = RunDir(tmp_path)
            rundir.lock()
            took.append(pool.poll())  # the pool's exit status, seen once the lock is ours
            rundir.release()

        taker = threading.Thread(target=take)
        taker.start()
        stop(pool)
        taker.join(20)
        assert not taker.is_alive()
        assert took == [0], "the engine took the project while the pool still ran"
    finally:
        if pool.poll() is None:
            pool.kill()
            stop(pool)


def test_a_process_forked_by_a_pool_does_not_keep_the_lock(tmp_path: Path) -> None:
    pool, child = holder(tmp_path, "fork")
    try:
        assert lock_holders(run_dir_of(tmp_path) / "pools.lock") == [pool.pid]
        stop(pool)
        assert Path(f"/proc/{child}").exists()
        wait_for_pools(tmp_path, timeout=5.0)  # free, though the child lives
    finally:
        stop(pool)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
