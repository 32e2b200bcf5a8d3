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
        f.write(f"{name} {os.getpid()}\\n")


def runs(name):
    with open("runs.log") as f:
        return [line for line in f.read().split("\\n") if line.startswith(name + " ")]


@stage(outs=["sibling.txt"])
def sibling() -> None:
    note("sibling")
    if len(runs("sibling")) == 1:
        # The first attempt is in flight when the killer's worker dies, and never ends
        # by itself: it can only be lost (loky fails every future of the executor) and
        # run again. If it is not lost within the deadline, it fails the test.
        open("sibling.started", "w").write("1")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.01)
        raise TimeoutError("the first attempt was never lost")
    open("sibling.txt", "w").write("done\\n")


@stage(outs=["killer.txt"])
def killer() -> None:
    deadline = time.monotonic() + 20
    while not os.path.exists("sibling.started") and time.monotonic() < deadline:
        time.sleep(0.01)
    note("killer")
    os.kill(os.getpid(), signal.SIGKILL)
'''


def test_only_the_stage_whose_worker_died_is_charged(make_project: Callable[..., Path]) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    result = run_pivot(root, "repro", "--json", "-j", "2", "--keep-going")
    events = parse_events(result.stdout)
    check_wave_contract(events)
    assert result.returncode == 1, describe(result)
    done = finished(events)
    assert done["killer"]["status"] == "failed" and done["killer"]["reason_code"] == "worker_died", done
    # "skipped" when a later attempt had committed its outputs and lock when a later
    # death lost it: the attempt after it found the stage up to date; "restored" when
    # the attempt lost after that had removed the outputs before its run (the run cache
    # then brings the committed ones back).
    assert done["sibling"]["status"] in ("ran", "skipped", "restored"), done
    lines = (root / "runs.log").read_text().splitlines()
    killers = [pid for name, pid in (line.split() for line in lines) if name == "killer"]
    siblings = [pid for name, pid in (line.split() for line in lines) if name == "sibling"]
    assert len(killers) == 3, lines  # charged three times, then failed
    # The sibling's first attempt can only end by being lost with the killer's first
    # death (or fail the test by its deadline): it ran again, uncharged, and finished.
    # (A later attempt may be lost with a later death too.)
    assert len(siblings) >= 2, lines
    assert siblings[1] != siblings[0], f"the lost attempt's worker survived: {lines}"
    # Every attempt after the first was caused by one of the killer's deaths (lost with
    # it, uncharged); an attempt can also be lost before its body wrote its note.
    starts = [e for e in events if e["event"] == "stage_started" and e["stage"] == "sibling"]
    assert len(siblings) <= len(starts) <= len(killers) + 1, (starts, lines)
    assert (root / "sibling.txt").read_text() == "done\n"
    assert json.loads((root / ".pivot" / "stages" / "sibling.lock").read_text())["stage"] == "sibling"
