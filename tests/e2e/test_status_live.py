"""`pivot status` while `pivot up` runs: the local verdicts plus the engine's view.

A real `pivot up --display json` runs each project (`LiveRun`, tests/procs.py); the
tests synchronise on its events and on the held stage's marker file, never on sleeps.
`pivot status` computes its verdicts from the files on disk as always and asks the
engine for a snapshot: stages running or queued in the wave in flight, and stages that
failed there, are shown as the engine sees them (docs/cli.md, "While `pivot up` runs").
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from procs import (
    HELD_PIPELINE,
    LiveRun,
    describe,
    held_stage_pid,
    release_held_stage,
    run_dir_leftovers,
    run_pivot,
)

pytestmark = pytest.mark.timeout(60)

MakeProject = Callable[..., Path]
StartUp = Callable[..., LiveRun]

WAIT_S = 20.0
STOP_WITHIN_S = 10.0
ANSWER_WITHIN_S = 2.0  # pivot/cli/engine_view.py: how long status waits for the engine

# a: in.txt -> a.out -> b -> b.out;  c: in.txt -> c.out (independent of a and b).
CHAIN_PIPELINE = '''\
from pivot import stage


def copy(src: str, dst: str, suffix: str) -> None:
    with open(src) as f, open(dst, "w") as g:
        g.write(f.read() + suffix)


@stage(deps=["in.txt"], outs=["a.out"])
def a() -> None:
    copy("in.txt", "a.out", "a")


@stage(deps=["a.out"], outs=["b.out"])
def b() -> None:
    copy("a.out", "b.out", "b")


@stage(deps=["in.txt"], outs=["c.out"])
def c() -> None:
    copy("in.txt", "c.out", "c")
'''

# fine runs; boom raises; after depends on boom (blocked when boom fails).
FAILING_PIPELINE = '''\
from pivot import stage


@stage(outs=["fine.out"])
def fine() -> None:
    with open("fine.out", "w") as f:
        f.write("fine\\n")


@stage(outs=["boom.out"])
def boom() -> None:
    raise ValueError("bad input: 3 rows")


@stage(deps=["boom.out"], outs=["after.out"])
def after() -> None:
    with open("boom.out") as src, open("after.out", "w") as dst:
        dst.write(src.read())
'''


def status(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`pivot status ARGS`, which must succeed without a traceback or a warning."""
    result = run_pivot(root, "status", *args)
    assert result.returncode == 0, describe(result)
    assert "Traceback" not in result.stderr and "warning" not in result.stderr, describe(result)
    return result


def status_lines(root: Path, *args: str) -> list[str]:
    return status(root, *args).stdout.splitlines()


def status_json(root: Path, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(status(root, "--json", *args).stdout)
    assert set(data) == {"stages", "engine"}, data
    return data


def wave_finished(live: LiveRun, wave: int) -> dict[str, Any]:
    return live.wait_event(
        lambda e: e["event"] == "wave_finished" and e["wave"] == wave, WAIT_S,
        f"wave {wave} to finish",
    )


def stop(live: LiveRun, root: Path) -> None:
    err = live.stop(STOP_WITHIN_S)
    assert "Traceback" not in err, err
    assert run_dir_leftovers(root) == [], run_dir_leftovers(root)


def test_a_stage_held_running_is_shown_running_in_its_wave(
    make_project: MakeProject, up: StartUp
) -> None:
    root = make_project({"pipeline.py": HELD_PIPELINE})
    live = up(root)
    held_stage_pid(root)
    live.wait_event(
        lambda e: e["event"] == "stage_started" and e["stage"] == "held", WAIT_S,
        "held's stage_started",
    )

    lines = status_lines(root)
    assert lines == [
        "engine: pivot up is running (wave 1 running); 1 running, 1 queued",
        "held: running (wave 1; never ran)",
        "after: queued (wave 1; never ran)",
        "2 of 2 stages stale",
    ], lines
    explained = status_lines(root, "--explain")
    assert explained[1:3] == ["held: running (wave 1; never ran)", "  - never_ran: never ran"]

    data = status_json(root)
    assert data["stages"]["held"] == {
        "stale": True, "restorable": False,
        "reasons": [{"code": "never_ran", "message": "never ran", "details": {}}],
    }
    assert list(data["stages"]) == ["held", "after"]
    engine = data["engine"]
    assert {k: v for k, v in engine.items() if k != "stages"} == {
        "mode": "up", "wave": 1, "wave_running": True, "paused": False, "pipeline_error": None,
    }
    assert engine["stages"] == {
        "held": {"status": "running", "reason_code": "never_ran", "reason": "never ran", "wave": 1},
        "after": {"status": "pending", "reason_code": "", "reason": "", "wave": 1},
    }
    # With STAGES, the engine's stages are limited like the local ones.
    assert list(status_json(root, "held")["engine"]["stages"]) == ["held"]

    release_held_stage(root)
    done = wave_finished(live, 1)
    assert done["ran"] == ["held", "after"], done
    assert status_lines(root) == [
        "engine: pivot up is running (idle); last wave 1: 2 ran",
        "held: up to date",
        "after: up to date",
        "everything is up to date",
    ]
    engine = status_json(root)["engine"]
    assert not engine["wave_running"] and engine["wave"] == 1, engine
    assert {n: s["status"] for n, s in engine["stages"].items()} == {"held": "ran", "after": "ran"}
    stop(live, root)


def test_an_idle_engine_shows_the_same_verdicts_as_no_engine(
    make_project: MakeProject, up: StartUp
) -> None:
    root = make_project({"pipeline.py": CHAIN_PIPELINE, "in.txt": "x\n"})
    live = up(root, "b")  # only b and its upstream stay live: c never runs
    done = wave_finished(live, 1)
    assert done["ran"] == ["a", "b"], done

    with_engine = {args: status(root, *args).stdout for args in [(), ("--explain",)]}
    json_with = status_json(root)
    stop(live, root)
    without = {args: status(root, *args).stdout for args in [(), ("--explain",)]}
    json_without = status_json(root)

    for args, text in with_engine.items():
        lines = text.splitlines()
        assert lines[0] == "engine: pivot up is running (idle); last wave 1: 2 ran", lines
        assert lines[1:] == without[args].splitlines(), (args, text, without[args])
    assert without[()].splitlines() == [
        "a: up to date", "b: up to date", "c: stale (never ran)", "1 of 3 stages stale",
    ]
    assert json_with["stages"] == json_without["stages"]
    assert json_without["engine"] is None
    engine = json_with["engine"]
    assert (engine["wave"], engine["wave_running"], engine["paused"]) == (1, False, False), engine
    # c is loaded but was in no wave: pending in wave 0.
    assert engine["stages"]["c"] == {"status": "pending", "reason_code": "", "reason": "", "wave": 0}


def test_a_failed_stage_is_named_with_its_error(make_project: MakeProject, up: StartUp) -> None:
    root = make_project({"pipeline.py": FAILING_PIPELINE})
    live = up(root, "--keep-going")
    done = wave_finished(live, 1)
    assert (done["ran"], done["failed"], done["blocked"]) == (["fine"], ["boom"], ["after"]), done

    lines = status_lines(root)
    assert lines == [
        "engine: pivot up is running (idle); last wave 1: 1 ran, 1 failed, 1 blocked",
        "fine: up to date",
        "boom: failed in wave 1 (ValueError: bad input: 3 rows)",
        "after: blocked in wave 1 (blocked by failed upstream 'boom')",
        "2 of 3 stages stale",
    ], lines
    explained = status_lines(root, "--explain")
    at = explained.index("boom: failed in wave 1 (ValueError: bad input: 3 rows)")
    assert explained[at + 1] == "  - never_ran: never ran", explained

    data = status_json(root)
    assert [r["code"] for r in data["stages"]["boom"]["reasons"]] == ["never_ran"]
    assert data["engine"]["stages"]["boom"] == {
        "status": "failed", "reason_code": "failed", "reason": "ValueError: bad input: 3 rows",
        "wave": 1,
    }
    assert data["engine"]["stages"]["after"]["status"] == "blocked"
    stop(live, root)


def test_the_engines_pipeline_error_is_shown_before_the_local_one(
    make_project: MakeProject, up: StartUp
) -> None:
    root = make_project({"pipeline.py": CHAIN_PIPELINE, "in.txt": "x\n"})
    live = up(root)
    wave_finished(live, 1)
    live.wait_watching(root)

    start = live.mark()
    good = (root / "pipeline.py").read_text()
    (root / "pipeline.py").write_text(good + "\ndef broken(:\n")
    live.wait_event(lambda e: e["event"] == "pipeline_invalid", WAIT_S, "pipeline_invalid", start)

    result = run_pivot(root, "status")
    assert result.returncode == 2, describe(result)
    assert "Traceback (most recent call last)" not in result.stderr, describe(result)
    lines = result.stdout.splitlines()
    assert lines[0] == "engine: pivot up is running (idle); last wave 1: 3 ran", describe(result)
    assert lines[1].startswith("engine: pipeline error: ") and "SyntaxError" in lines[1], lines
    assert lines[1].endswith("; it keeps the last good pipeline loaded"), lines
    assert "error: " in result.stderr and "SyntaxError" in result.stderr, describe(result)
    as_json = run_pivot(root, "status", "--json")
    assert (as_json.returncode, as_json.stdout) == (2, ""), describe(as_json)

    start = live.mark()
    (root / "pipeline.py").write_text(good)
    live.wait_event(lambda e: e["event"] == "pipeline_loaded", WAIT_S, "pipeline_loaded", start)
    engine = status_json(root)["engine"]
    assert engine["pipeline_error"] is None, engine
    stop(live, root)


def test_without_an_engine_the_engine_key_is_null(make_project: MakeProject) -> None:
    root = make_project({"pipeline.py": CHAIN_PIPELINE, "in.txt": "x\n"})
    data = status_json(root)
    assert data["engine"] is None
    assert {n: row["stale"] for n, row in data["stages"].items()} == dict.fromkeys("abc", True)
    lines = status_lines(root)
    assert not any(line.startswith("engine:") for line in lines), lines


def test_an_engine_that_does_not_answer_is_left_out_within_the_deadline(
    make_project: MakeProject,
) -> None:
    """The lock says an engine runs, endpoints.json says it is a `pivot up`, but nothing
    answers on its sockets (a wedged broker): status warns and reports the local verdicts."""
    root = make_project({"pipeline.py": CHAIN_PIPELINE, "in.txt": "x\n"})
    expected = {args: status(root, *args).stdout for args in [(), ("--json",)]}
    run = root / ".pivot" / "run"
    run.mkdir(exist_ok=True)
    endpoints = run / "endpoints.json"
    lock = os.open(run / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        socks = {n: f"ipc://{run / (n + '.sock')}" for n in ("work", "control", "events", "changes")}
        endpoints.write_text(json.dumps({**socks, "mode": "up"}))
        for args, out in expected.items():
            began = time.monotonic()
            result = run_pivot(root, "status", *args)
            took = time.monotonic() - began
            assert result.returncode == 0, describe(result)
            assert result.stdout == out, describe(result)
            assert "Traceback" not in result.stderr, describe(result)
            assert "warning: `pivot up` is running but its engine did not answer" in result.stderr, (
                describe(result)
            )
            assert took < ANSWER_WITHIN_S + 8.0, f"status took {took:.1f} s"
    finally:
        endpoints.unlink(missing_ok=True)
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
