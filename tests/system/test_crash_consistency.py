"""Crash consistency (issue 11): the process recording a stage is killed (SIGKILL) at
each step of recording it (PIVOT_FAULT=POINT:kill, pivot/faults.py). The next run sees
the old state or the new one: never a lock that names outputs the cache lacks, never an
output that is not what its lock says, and a no-op after it runs nothing."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from procs import describe, finished, parse_events, pivot_cmd

from pivot.faults import POINTS
from pivot.state.cache import ContentCache
from pivot.state.hashing import hash_path

pytestmark = pytest.mark.timeout(90)

PIPELINE = '''\
from pivot import stage


@stage(deps=["in.txt"], outs=["mid.txt"])
def make() -> None:
    open("mid.txt", "w").write(open("in.txt").read().upper())


@stage(deps=["mid.txt"], outs=["end.txt"])
def use() -> None:
    open("end.txt", "w").write(open("mid.txt").read() + "!")
'''


def repro(root: Path, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PIVOT_FAULT"}
    if fault:
        env["PIVOT_FAULT"] = fault
    return subprocess.run(
        [*pivot_cmd(), "repro", "--json"], cwd=root, env=env, capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL, start_new_session=True,
    )


def consistent(root: Path, *, settled: bool = True) -> None:
    """Every lock names outputs the cache holds (so its run can be restored); once
    `settled` (a run finished), each output on disk is also what its lock says. Right
    after a kill, an output may be the new one under the old lock: the next run sees
    it stale."""
    cache = ContentCache(root / ".pivot" / "cache")
    for lock_file in (root / ".pivot" / "stages").glob("*.lock"):
        lock = json.loads(lock_file.read_text())
        for out, digest in lock["outs"].items():
            assert cache.has(digest) and cache.verify(digest), f"{lock_file.name}: {out} not in the cache"
            if settled:
                assert hash_path(root / out) == digest, f"{out} is not what {lock_file.name} says"


@pytest.mark.parametrize("point", POINTS)
def test_a_stage_killed_at_each_step_of_recording_it_leaves_a_state_the_next_run_repairs(
    make_project: Callable[..., Path], point: str,
) -> None:
    root = make_project({"pipeline.py": PIPELINE, "in.txt": "one\n"})
    first = repro(root)
    assert first.returncode == 0, describe(first)
    (root / "in.txt").write_text("two\n")
    second = repro(root)  # the run cache now holds both versions
    assert second.returncode == 0, describe(second)
    # "placed" is reached when outputs come from the run cache: go back to version one.
    (root / "in.txt").write_text("one\n" if point == "placed" else "three\n")

    killed = repro(root, f"{point}:kill")
    # The kill fired: the run failed (its stage, or its pool, killed at every try), or,
    # killed after its lock was written, the retry found the stage up to date.
    if killed.returncode == 0:
        made = finished(parse_events(killed.stdout))["make"]["status"]
        assert point in ("locked", "run-cached") and made == "skipped", describe(killed)
    consistent(root, settled=False)

    after = repro(root)
    assert after.returncode == 0, describe(after)
    consistent(root)
    expected = (root / "in.txt").read_text().upper() + "!"
    assert (root / "end.txt").read_text() == expected
    noop = repro(root)
    assert noop.returncode == 0, describe(noop)
    statuses = {s: e["status"] for s, e in finished(parse_events(noop.stdout)).items()}
    assert statuses == {"make": "skipped", "use": "skipped"}, statuses
