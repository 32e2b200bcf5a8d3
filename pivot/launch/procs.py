"""Process-group helpers: find and stop every live process of a group (Linux /proc)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from pivot.state.rawread import read_whole

__all__ = ["describe_exit", "exit_code", "group_members", "is_alive", "is_stopped", "kill_group"]

_DEAD = ("Z", "X")  # zombie, dead


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (state, ppid, pgrp, ...), or None if gone."""
    try:
        stat = read_whole(f"/proc/{pid}/stat").decode(errors="replace")
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return stat[stat.rfind(")") + 2 :].split()


def is_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie counts as dead)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in _DEAD


def is_stopped(pid: int) -> bool:
    """Whether `pid` is stopped by a signal (SIGSTOP, Ctrl-Z) or a tracer."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] in ("T", "t")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and int(fields[2]) == pgid and fields[0] not in _DEAD:
            found.append(int(entry.name))
    return found


def kill_group(pgid: int, timeout: float) -> bool:
    """SIGKILL the group and wait until no live member is left. True when it is empty.

    Killed first, looked at after: the group's signal says whether it has any process
    at all (ESRCH: none, not even a zombie), and only then are the machine's processes
    read (a few ms) for members still alive. A killed orphan's zombie may wait for a
    slow init (~1 s here) to reap it; it counts as gone."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        time.sleep(0.001)  # SIGKILL is asynchronous
        with contextlib.suppress(PermissionError):
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return True
        if not group_members(pgid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


def exit_code(pid: int) -> int | None:
    """How a process that is not our child ended, while it is a zombie its parent has
    not reaped yet (Linux keeps the wait status in /proc/PID/stat): the code, or minus
    the signal that killed it, as subprocess reports it. None when that is unknown."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] != "Z":
        return None
    try:
        status = int(fields[-1])
    except (ValueError, IndexError):
        return None
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else None


def describe_exit(rc: int | None, what: str = "pool process") -> str:
    """"pool process was killed by SIGKILL", "pool process exited with code 3" (`rc` as
    subprocess gives it: -N for a signal)."""
    if rc is None:
        return f"{what} is gone"
    if rc < 0:
        import signal

        try:
            return f"{what} was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"{what} was killed by signal {-rc}"
    return f"{what} exited with code {rc}"
