"""Process-group helpers: find and stop every live process of a group (Linux /proc)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

__all__ = ["group_members", "is_alive", "is_stopped", "kill_group"]

_DEAD = ("Z", "X")  # zombie, dead


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (state, ppid, pgrp, ...), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
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
    """SIGKILL the group and wait until no live member is left. True when it is empty."""
    deadline = time.monotonic() + timeout
    while True:
        if not group_members(pgid):
            return True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)  # SIGKILL is asynchronous; re-check within the deadline
