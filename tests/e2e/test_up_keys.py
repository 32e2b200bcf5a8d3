"""Ctrl-Z and `fg` under `pivot up` (issue 12): the shell gets its terminal back in line
mode while `pivot up` is stopped, and keys work at once after it continues (they used to
wait for Enter: the terminal was left in line mode)."""

from __future__ import annotations

import os
import signal
import subprocess
import termios
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from procs import LiveRun, ProcGuard, _default_sigint, pivot_cmd, proc_info, wait_for

pytestmark = pytest.mark.timeout(60)

WAIT_S = 20.0
PIPELINE = '''\
from pathlib import Path

from pivot import stage


@stage(outs=["a.txt"])
def a() -> None:
    Path("a.txt").write_text("a")
'''


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def line_mode(fd: int) -> bool:
    return bool(termios.tcgetattr(fd)[3] & termios.ICANON)


def test_ctrl_z_gives_the_terminal_back_and_fg_makes_keys_work_at_once(
    make_project: Callable[..., Path], proc_guard: ProcGuard, pty_pair: tuple[int, int],
) -> None:
    master, slave = pty_pair
    root = make_project({"pipeline.py": PIPELINE})
    proc = subprocess.Popen(
        [*pivot_cmd(), "up", "--display", "json"], cwd=root, stdin=slave, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_default_sigint,
    )
    live = LiveRun(proc_guard.track(proc))
    live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "the first wave")
    wait_for(lambda: not line_mode(slave), WAIT_S, "the live view to read single keys")

    os.kill(proc.pid, signal.SIGTSTP)  # what Ctrl-Z sends
    wait_for(lambda: (info := proc_info(proc.pid)) is not None and info.state == "T", WAIT_S, "pivot up to stop")
    assert line_mode(slave), "the terminal was left in single-key mode for the shell"
    os.kill(proc.pid, signal.SIGCONT)  # what `fg` sends (the shell leaves line mode on)
    wait_for(lambda: not line_mode(slave), WAIT_S, "single keys again after fg")
    mark = live.mark()
    os.write(master, b"p")  # no Enter
    live.wait_event(lambda e: e["event"] == "paused", WAIT_S, "the p key to pause at once", mark)
    live.stop()
