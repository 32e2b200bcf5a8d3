"""A loky worker dies under a stage: only that stage is charged; its sibling, lost with
the pool's other workers, runs again uncharged; the third death fails the stage."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from procs import check_wave_contract, describe, finished, parse_events, run_pivot

pytestmark = pytest.mark.timeout(60)

PIPELINE = '''\
import os
import signal
import time

from pivot import stage


def note(name):
    with open("runs.log", "a") as f:
        f.write(name + "\\n")


@stage(outs=["sibling.txt"])
def sibling() -> None:
    note("sibling")
    # Long enough to be in flight when the other stage's worker dies; it waits for the
    # killer's marker, with its own deadline, instead of a fixed sleep.
    deadline = time.monotonic() + 20
    while not os.path.exists("killer.started") and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    open("sibling.txt", "w").write("done\\n")


@stage(outs=["killer.txt"])
def killer() -> None:
    note("killer")
    open("killer.started", "w").write("1")
    time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)
'''


def test_only_the_stage_whose_worker_died_is_charged(make_project: Callable[..., Path]) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    result = run_pivot(root, "repro", "--json", "-j", "2", "--keep-going")
    events = parse_events(result.stdout)
    check_wave_contract(events)
    assert result.returncode == 1, describe(result)
    done = finished(events)
    assert done["sibling"]["status"] == "ran", done
    assert done["killer"]["status"] == "failed" and done["killer"]["reason_code"] == "worker_died", done
    runs = (root / "runs.log").read_text().split()
    assert runs.count("killer") == 3, runs  # charged three times, then failed
    assert (root / "sibling.txt").read_text() == "done\n"
    assert json.loads((root / ".pivot" / "stages" / "sibling.lock").read_text())["stage"] == "sibling"
