"""Poison stages (issue 11): a stage that segfaults, calls os._exit, raises SystemExit,
or forks a grandchild that ignores SIGTERM and outlives it. Only the poison stage is
charged, its sibling's result stands, and nothing is left running after the run (the
`proc_guard` fixture fails the test otherwise)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from procs import check_wave_contract, describe, finished, parse_events, run_pivot

pytestmark = pytest.mark.timeout(90)

PIPELINE = '''\
import ctypes
import os
import signal
import time

from pivot import stage


def note(name):
    with open(f"{name}.runs", "a") as f:
        f.write(f"{os.getpid()}\\n")


@stage(outs=["sibling.txt"])
def sibling() -> None:
    open("sibling.txt", "w").write("fine\\n")


@stage(outs=["segv.txt"])
def segv() -> None:
    note("segv")
    ctypes.string_at(0)  # reads address 0: SIGSEGV


@stage(outs=["quit.txt"])
def quit_now() -> None:
    note("quit")
    os._exit(3)


@stage(outs=["sysexit.txt"])
def sysexit() -> None:
    note("sysexit")
    raise SystemExit(4)


@stage(outs=["orphan.txt"])
def orphan() -> None:
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the grandchild: ignores SIGTERM and would live on
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.write(ready_w, b"1")
        time.sleep(60)
        os._exit(0)
    # The stage ends only once the grandchild ignores SIGTERM, so the run must reap
    # a process that is really hard to stop (and its pid is on disk for the test).
    os.read(ready_r, 1)
    with open("grandchild.pid", "w") as f:
        f.write(str(pid))
    open("orphan.txt", "w").write("parent done\\n")
'''


def test_poison_stages_are_charged_alone_and_leave_nothing_running(
    make_project: Callable[..., Path],
) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    result = run_pivot(root, "repro", "--json", "--keep-going", "-j", "2", timeout=80)
    assert result.returncode == 1, describe(result)
    events = parse_events(result.stdout)
    check_wave_contract(events)
    done = finished(events)
    # "skipped" or "restored": an earlier attempt, lost with a poison stage's worker, had
    # committed it (and a later lost one may have removed it before its run).
    assert done["sibling"]["status"] in ("ran", "skipped", "restored"), done
    assert (root / "sibling.txt").read_text() == "fine\n"
    assert done["orphan"]["status"] in ("ran", "skipped", "restored"), done
    for stage, runs in (("segv", "segv"), ("quit_now", "quit")):
        assert (done[stage]["status"], done[stage]["reason_code"]) == ("failed", "worker_died"), done[stage]
        # Charged three times; an attempt lost with the other poison stage's worker (they
        # run side by side) runs again uncharged: at most three of those.
        attempts = len((root / f"{runs}.runs").read_text().split())
        assert 3 <= attempts <= 6, (stage, attempts)
    assert done["sysexit"]["status"] == "failed" and "SystemExit" in done["sysexit"]["reason"], done
    # A plain failure is not retried; only attempts lost with a poison stage's worker are.
    assert done["sysexit"]["reason_code"] == "failed", done["sysexit"]
    assert 1 <= len((root / "sysexit.runs").read_text().split()) <= 7
    # The grandchild is gone with the run (the proc_guard fixture checks every process
    # that runs in the project; this names the one that matters).
    from procs import alive

    assert not alive(int((root / "grandchild.pid").read_text()))
