"""Shared fixtures. System and e2e tests get a no-orphan check after each test."""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import zmq
from procs import (
    Broker,
    LiveRun,
    ProcGuard,
    describe,
    run_dir_leftovers,
    run_pivot,
    start_pivot,
    write_files,
)

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
QUICKSTART = REPO / "examples" / "quickstart"
PROCESS_TIERS = ("system", "e2e")

# What a fresh copy of the quickstart must not carry over from a local run.
_NOT_COPIED = shutil.ignore_patterns(
    ".pivot", "__pycache__", "clean.csv", "features.csv", "model", "metrics.json"
)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Pivot's own bytecode, written once before the suite starts its `pivot` processes.
    With bytecode writing off (PYTHONDONTWRITEBYTECODE=1, as on this project's machines)
    an editable install has none, and each of them compiled the engine's modules again:
    ~0.25 s of CPU a process, the e2e tier 24 % slower (docs/benchmarks.md)."""
    import compileall

    for package in ("pivot", "broker", "workers"):
        with contextlib.suppress(OSError):
            compileall.compile_dir(REPO / package, quiet=2)


@pytest.fixture
def proc_guard(tmp_path: Path) -> Iterator[ProcGuard]:
    """Fails the test when a process it started outlives it (after killing it).

    Watched: every live process whose cwd or command line is inside the test's
    tmp_path, and every process group a test registered (`guard.track`). Processes
    still exiting get a short bounded grace. Also fails when a project's run
    directory still holds sockets or endpoints.json after the test.
    """
    guard = ProcGuard()
    guard.watch_dir(tmp_path)
    yield guard
    left = guard.check()
    problems = [f"process left behind: {p.show()}" for p in left]
    for project in sorted({p for p in tmp_path.iterdir() if (p / ".pivot").is_dir()}):
        problems += [f"left in the run directory: {f}" for f in run_dir_leftovers(project)]
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def _no_orphans_in_process_tiers(request: pytest.FixtureRequest) -> None:
    try:
        tier = Path(str(request.node.path)).resolve().relative_to(TESTS_DIR).parts[0]
    except ValueError:
        return
    if tier in PROCESS_TIERS:
        request.getfixturevalue("proc_guard")


def copy_quickstart(dest: Path) -> Path:
    shutil.copytree(QUICKSTART, dest, ignore=_NOT_COPIED)
    return dest


@pytest.fixture
def project(tmp_path: Path, proc_guard: ProcGuard) -> Path:
    """A fresh copy of examples/quickstart that never ran."""
    return copy_quickstart(tmp_path / "quickstart")


@pytest.fixture(scope="session")
def _quickstart_after_one_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart after one successful `pivot repro` (a template; copy it)."""
    base = tmp_path_factory.mktemp("template")
    root = copy_quickstart(base / "quickstart")
    guard = ProcGuard()
    guard.watch_dir(base)
    result = run_pivot(root, "repro", "--json", timeout=60)
    left = guard.check()
    assert result.returncode == 0, describe(result)
    assert not left, [p.show() for p in left]
    return root


@pytest.fixture
def ran_project(tmp_path: Path, proc_guard: ProcGuard, _quickstart_after_one_run: Path) -> Path:
    """A copy of the quickstart whose four stages are up to date."""
    return Path(shutil.copytree(_quickstart_after_one_run, tmp_path / "quickstart", symlinks=True))


@pytest.fixture
def make_project(tmp_path: Path, proc_guard: ProcGuard) -> Callable[..., Path]:
    """make_project({"pipeline.py": ..., ...}, name="proj") -> the new project folder."""

    def make(files: dict[str, str], name: str = "proj") -> Path:
        return write_files(tmp_path / name, files)

    return make


UP_STOP_WITHIN_S = 10.0


@pytest.fixture
def up(proc_guard: ProcGuard) -> Iterator[Callable[..., LiveRun]]:
    """up(root, *args, debounce_ms=20, env=None) -> a started `pivot up --display json`.
    One that a failed test left running is stopped (SIGTERM) before proc_guard looks for
    leftovers."""
    started: list[LiveRun] = []

    def start(
        root: Path, *args: str, debounce_ms: int = 20, env: dict[str, str] | None = None
    ) -> LiveRun:
        live = LiveRun.start(proc_guard, root, *args, debounce_ms=debounce_ms, env=env)
        started.append(live)
        return live

    yield start
    for live in started:
        if live.proc.poll() is None:
            with contextlib.suppress(AssertionError):
                live.stop(UP_STOP_WITHIN_S)


@pytest.fixture
def start_broker(proc_guard: ProcGuard) -> Iterator[Callable[..., Broker]]:
    """start_broker(root, *args, env=None) -> a started `pivot broker` (stopped after)."""
    started: list[Broker] = []

    def start(root: Path, *args: str, env: dict[str, str] | None = None) -> Broker:
        proc = proc_guard.track(start_pivot(root, "broker", *args, env=env))
        broker = Broker(root, proc)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        if broker.proc.poll() is None:
            broker.stop()


@pytest.fixture
def zctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A ZeroMQ context for a test's raw sockets (each closed with LINGER 0); its term
    must never hang the suite."""
    import zmq

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    done = threading.Event()

    def term() -> None:
        ctx.destroy(linger=0)
        done.set()

    threading.Thread(target=term, daemon=True).start()
    assert done.wait(5), "zmq context did not terminate within 5 s"
