"""The engine outlives its terminal: `pivot up -d`, `pivot ps`, `pivot attach`,
`pivot down`, a `pivot workers` joining it, and SIGHUP on a foreground `pivot up`.

The engine's processes are found through `pivot ps --json` (pids) and checked in /proc;
the `proc_guard` fixture fails a test that leaves any of them behind.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from procs import (
    LiveRun,
    ProcGuard,
    alive,
    describe,
    run_dir_leftovers,
    run_pivot,
    wait_exit,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

MakeProject = Callable[..., Path]
WAIT_S = 20.0

PIPELINE = """\
from pivot import stage


@stage(deps=["in.txt"], outs=["out.txt"])
def copy() -> None:
    with open("in.txt") as src, open("out.txt", "w") as dst:
        dst.write(src.read().upper())
"""

FILES = {"pipeline.py": PIPELINE, "in.txt": "hello\n"}


def ps(root: Path) -> list[dict[str, Any]]:
    result = run_pivot(root, "ps", "--json")
    assert result.returncode == 0, describe(result)
    rows: list[dict[str, Any]] = json.loads(result.stdout)["processes"]
    return rows


def roles(rows: list[dict[str, Any]]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for row in rows:
        found.setdefault(row["role"], []).append(int(row["pid"]))
    return found


def down(root: Path, *args: str) -> None:
    result = run_pivot(root, "down", *args, timeout=40)
    assert result.returncode == 0, describe(result)
    assert "stopped" in result.stdout, describe(result)


def test_up_detached_returns_after_the_first_wave_started_and_down_stops_it_all(
    make_project: MakeProject,
) -> None:
    root = make_project(FILES)
    started = run_pivot(root, "up", "-d", timeout=40)
    assert started.returncode == 0, describe(started)
    assert "pivot attach" in started.stdout and "pivot down" in started.stdout, describe(started)
    wait_for(lambda: (root / "out.txt").exists(), WAIT_S, "the first wave to write out.txt")
    assert (root / "out.txt").read_text() == "HELLO\n"

    procs = roles(ps(root))
    assert sorted(procs) == ["broker", "pool", "watcher"], procs
    pids = [pid for group in procs.values() for pid in group]
    assert all(alive(pid) for pid in pids), procs

    again = run_pivot(root, "up", "-d")  # one engine per project
    assert again.returncode == 2 and "already running" in again.stderr, describe(again)

    # The engine keeps reacting with nobody watching.
    (root / "in.txt").write_text("again\n")
    wait_for(lambda: text_of(root / "out.txt") == "AGAIN\n", WAIT_S, "the edit to re-run copy")

    down(root)
    wait_for(lambda: not [pid for pid in pids if alive(pid)], 5.0, "the engine's processes to exit")
    assert run_dir_leftovers(root) == []
    nothing = run_pivot(root, "down")
    assert nothing.returncode == 0 and "no Pivot engine is running" in nothing.stderr, describe(nothing)


def test_up_detached_on_a_broken_pipeline_exits_2_and_leaves_nothing(make_project: MakeProject) -> None:
    root = make_project({**FILES, "pipeline.py": PIPELINE + "\ndef broken(:\n"})
    result = run_pivot(root, "up", "-d", timeout=40)
    assert result.returncode == 2, describe(result)
    assert result.stderr.startswith("error: ") and "SyntaxError" in result.stderr, describe(result)
    wait_for(lambda: run_dir_leftovers(root) == [], 10.0, "the engine to clean up")
    assert not (root / ".pivot" / "run" / "endpoints.json").exists()


def test_a_pool_started_on_its_own_joins_a_running_up_and_stops_with_it(
    make_project: MakeProject, proc_guard: ProcGuard
) -> None:
    root = make_project(FILES)
    started = run_pivot(root, "up", "-d", timeout=40)
    assert started.returncode == 0, describe(started)
    extra = proc_guard.start(root, "workers", "-j", "1", "--name", "extra")
    wait_for(lambda: len(roles(ps(root)).get("pool", [])) == 2, WAIT_S, "the second pool in ps")
    rows = {r["name"]: r for r in ps(root) if r["role"] == "pool"}
    assert rows["extra"]["pid"] == extra.pid and rows["extra"]["slots"] == 1, rows
    down(root)
    rc, out, err = wait_exit(extra, 15, "the extra pool after pivot down")
    assert rc == 0, describe((rc, out, err))


def test_closing_the_terminal_of_pivot_up_stops_the_engine(
    make_project: MakeProject, up: Callable[..., LiveRun]
) -> None:
    root = make_project(FILES)
    live = up(root)
    live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "the first wave")
    pids = [pid for group in roles(ps(root)).values() for pid in group]
    assert len(pids) == 3, pids
    live.proc.send_signal(signal.SIGHUP)  # what the terminal's closing sends
    assert live.wait_exit(15) == 0, live.stderr
    live.wait_event(lambda e: e["event"] == "engine_stopped", 1.0, "engine_stopped")
    wait_for(lambda: not [pid for pid in pids if alive(pid)], 5.0, "the engine's processes to exit")
    assert run_dir_leftovers(root) == []


def test_up_on_tcp_with_keys_runs_and_reacts(make_project: MakeProject, tmp_path: Path) -> None:
    """`pivot up --bind tcp://...` with CURVE keys: the pool and watcher it starts use
    their keys too (a watcher without one would never be heard, and nothing would run)."""
    import os

    root = make_project(FILES)
    keys = tmp_path / "keys"
    env = {**os.environ, "PIVOT_KEYS_DIR": str(keys)}
    made = run_env(root, env, "keys", "init")
    assert made.returncode == 0, describe(made)
    started = run_env(root, env, "up", "-d", "--bind", "tcp://127.0.0.1:0")
    assert started.returncode == 0 and "tcp://127.0.0.1:" in started.stdout, describe(started)
    wait_for(lambda: (root / "out.txt").exists(), WAIT_S, "the first wave to write out.txt")
    (root / "in.txt").write_text("keyed\n")
    wait_for(lambda: text_of(root / "out.txt") == "KEYED\n", WAIT_S, "the edit to re-run copy")
    stopped = run_env(root, env, "down")
    assert stopped.returncode == 0, describe(stopped)
    wait_for(lambda: run_dir_leftovers(root) == [], 10.0, "the engine to clean up")


def run_env(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    from procs import pivot_cmd

    return subprocess.run([*pivot_cmd(), *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=40, stdin=subprocess.DEVNULL, start_new_session=True)


def text_of(path: Path) -> str:
    """A file's text, "" while it is absent (a re-run removes its outputs before it
    writes them again)."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
