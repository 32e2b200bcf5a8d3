"""The no-orphan check itself: it must see (and kill) a process a test left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from procs import ProcGuard, alive, wait_for

pytestmark = pytest.mark.timeout(30)

# The orphan's own code: it just lives long enough to be found.
LINGER = "import time; time.sleep(60)"


def orphan(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", LINGER, *args], cwd=cwd, start_new_session=True, text=True,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("how", ["cwd", "cmdline", "group"])
def test_guard_finds_and_kills_a_leftover(tmp_path: Path, how: str) -> None:
    inside = tmp_path / "project"
    inside.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    guard = ProcGuard()
    guard.watch_dir(inside)
    if how == "cwd":
        proc = orphan(inside)
    elif how == "cmdline":
        proc = orphan(outside, "--root", str(inside))
    else:
        proc = orphan(outside)
        guard.pgids.add(proc.pid)
    try:
        wait_for(lambda: any(p.pid == proc.pid for p in guard.leftovers()), 5, "the orphan to be seen")
        left = guard.check(grace=0.2)
        assert [p.pid for p in left] == [proc.pid]
        wait_for(lambda: proc.poll() is not None, 5, "the orphan to die")
        assert not alive(proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


def test_guard_ignores_unrelated_processes(tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    # A sibling folder whose name starts with the watched one's must not match.
    sibling = tmp_path / "watched-not"
    sibling.mkdir()
    guard = ProcGuard()
    guard.watch_dir(watched)
    proc = orphan(sibling, str(sibling / "x"))
    try:
        wait_for(lambda: alive(proc.pid), 5, "the unrelated process to start")
        assert guard.check(grace=0.1) == []
        assert proc.poll() is None, "the guard killed an unrelated process"
    finally:
        proc.kill()
        proc.wait(5)
