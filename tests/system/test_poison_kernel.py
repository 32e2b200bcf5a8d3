"""Poison stages the kernel or the user stops (issue 11, point 2): a stage killed by the
OOM killer of a real memory cgroup, and a stage looping forever, stopped by Ctrl-C on
`pivot repro` or by stopping `pivot up`, once as plain Python and once stuck in a C call
that holds the GIL with every catchable signal ignored or blocked.

What they prove: the OOM-killed stage is charged alone (`worker_died`, three tries, each
a kill the cgroup counted) and what it half wrote is removed; Ctrl-C on `repro` exits
130 (at once for a Python loop; after the pool's hard kill, HARD_KILL_S, for a worker
that ignores SIGTERM) with what the stage half wrote removed; stopping `pivot up` cancels a
Python loop at once and has the pool hard-kill a stuck stage after `HARD_KILL_S`, both
reported `cancelled`, their partial outputs removed; in every case the sibling's result
and lock stand and no process is left (the `proc_guard` fixture fails the test otherwise).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from procs import (
    LiveRun,
    ProcGuard,
    alive,
    check_wave_contract,
    describe,
    finished,
    parse_events,
    run_dir_leftovers,
    run_pivot,
    wait_for,
)
from requires import require

from broker.stopping import CANCEL_WAIT_S
from pivot.launch.limits import HARD_KILL_S

LIMIT = 64 << 20
# The CLI waits that long for its pool (pivot/cli/stack.py), then kills its group.
REPRO_EXIT_S = HARD_KILL_S + 3.0

# Every stage that runs appends "name pid" to runs.log (not an output). `loop` and
# `stuck` write half their output, then say they started (an atomic rename: the test
# reads a whole pid), and never return by themselves. Files the test reads that are not
# outputs are no dependency of any stage either: writing them starts no wave under `up`.
PIPELINE = '''\
import ctypes
import os
import signal

from pivot import stage


def note(name):
    with open("runs.log", "a") as f:
        f.write(f"{name} {os.getpid()}\\n")


def half_written(out, name):
    with open(out, "w") as f:
        f.write("partial\\n")
    with open(name + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(name + ".tmp", name + ".started")


@stage(outs=["sibling.txt"])
def sibling() -> None:
    note("sibling")
    with open("sibling.txt", "w") as f:
        f.write("fine\\n")


@stage(outs=["hog.txt"])
def hog() -> None:
    note("hog")
    with open("hog.txt", "w") as f:
        f.write("partial\\n")
    # Only this worker joins the cgroup: the pool and the sibling's worker stay out of
    # the OOM killer's reach, and a failed move fails the stage (not a worker death).
    with open("cgroup.procs.path") as f:
        procs = f.read().strip()
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
    block = bytearray(300 << 20)
    for i in range(0, len(block), 4096):  # calloc'd pages are charged when first touched
        block[i] = 1
    with open("hog.txt", "w") as f:
        f.write("the cgroup limit did not hold\\n")


@stage(outs=["loop.txt"])
def loop() -> None:
    note("loop")
    half_written("loop.txt", "loop")
    n = 0
    try:
        while True:
            n += 1
    finally:  # runs when Pivot's cancel interrupts the loop; never when it is killed
        open("loop.unwound", "w").close()


@stage(outs=["stuck.txt"])
def stuck() -> None:
    note("stuck")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Blocked in this thread, Pivot's cancel signal cannot interrupt the C call below;
    # taken by another thread, its Python handler waits for the GIL, which PyDLL keeps.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    half_written("stuck.txt", "stuck")
    ctypes.PyDLL(None).sleep(3600)
'''


def stage_pid(root: Path, name: str, proc: subprocess.Popen[str]) -> int:
    """Wait until stage `name` started (its marker); the pid of the worker running it."""
    marker = root / f"{name}.started"
    wait_for(lambda: marker.exists() or proc.poll() is not None, 20, f"stage {name} to start")
    assert marker.exists(), f"pivot exited (code {proc.poll()}) before stage {name} started"
    return int(marker.read_text())


def runs(root: Path, name: str) -> list[str]:
    log = root / "runs.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [pid for stage, pid in (line.split() for line in lines) if stage == name]


def lock(root: Path, name: str) -> dict[str, Any] | None:
    path = root / ".pivot" / "stages" / f"{name}.lock"
    return json.loads(path.read_text()) if path.exists() else None


def finishing(stage: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["event"] == "stage_finished" and e["stage"] == stage


def assert_sibling_stands(root: Path) -> None:
    assert (root / "sibling.txt").read_text() == "fine\n"
    recorded = lock(root, "sibling")
    assert recorded is not None and list(recorded["outs"]) == ["sibling.txt"], recorded


def assert_stopped(root: Path, name: str, worker: int) -> None:
    """The stopped stage's worker is gone, what it half wrote removed and nothing of its
    run recorded (proc_guard checks for every other process)."""
    wait_for(lambda: not alive(worker), 5, f"the worker running {name} (pid {worker}) to exit")
    assert not (root / f"{name}.txt").exists(), f"the half-written {name}.txt was left behind"
    assert lock(root, name) is None, f"{name} was recorded: {lock(root, name)}"
    assert run_dir_leftovers(root) == []


# --- the memory cgroup -------------------------------------------------------------


@dataclass
class MemoryCgroup:
    """A memory cgroup made for one test (v1 or v2)."""

    path: Path
    v2: bool

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def members(self) -> list[int]:
        return [int(pid) for pid in self.procs.read_text().split()]

    def oom_kills(self) -> int:
        """How many processes the OOM killer killed in it (Linux >= 4.13)."""
        name = "memory.events" if self.v2 else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise AssertionError(f"{self.path / name} has no oom_kill counter")

    def remove(self) -> None:
        """Kill what is still in it (a failed test's survivors), then remove it: rmdir
        works once it is empty, and a process that died has left it."""
        for pid in self.members():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not self.members(), 5, f"{self.path} to be empty")
        self.path.rmdir()


def _relative(path: str, root: str) -> str | None:
    """`path` (from /proc/self/cgroup) inside a mount of hierarchy folder `root`."""
    if root == "/":
        return path.lstrip("/")
    if path == root or path.startswith(root + "/"):
        return path[len(root) :].lstrip("/")
    return None


def _own_memory_cgroup() -> tuple[Path | None, bool, str]:
    """The folder of this process's memory cgroup, whether it is v2, and else why not."""
    paths: dict[str, str] = {}  # controller ("" for v2) -> our cgroup's path
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            paths[controller] = path
    mounts = []  # (fstype, super options, hierarchy folder mounted, mount point)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        mounts.append((fields[sep + 1], fields[sep + 3].split(","), fields[3], fields[4]))
    if "memory" in paths:
        for fstype, opts, root, point in mounts:
            rel = _relative(paths["memory"], root)
            if fstype == "cgroup" and "memory" in opts and rel is not None and (Path(point) / rel).is_dir():
                return Path(point) / rel, False, ""
        return None, False, f"our v1 memory cgroup {paths['memory']} is not mounted here"
    for fstype, _, root, point in mounts:
        rel = _relative(paths.get("", ""), root)
        if fstype != "cgroup2" or "" not in paths or rel is None or not (Path(point) / rel).is_dir():
            continue
        folder = Path(point) / rel
        # Enabling it ourselves would change the machine for good, and v2 refuses it
        # anyway for a cgroup with processes in it (ours).
        if "memory" not in (folder / "cgroup.subtree_control").read_text().split():
            return None, True, f"cgroup v2: memory is not enabled for child cgroups of {folder}"
        return folder, True, ""
    return None, False, "no memory cgroup: neither a v1 memory hierarchy nor cgroup v2 mounted"


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[MemoryCgroup]:
    """A uniquely named child of our own memory cgroup, limited to `limit` bytes of
    memory and no swap (an OOM kill must not wait on a swap that cannot absorb it)."""
    require(os.geteuid() == 0, "the OOM test makes a memory cgroup: it needs root")
    parent, v2, why = _own_memory_cgroup()
    require(parent is not None, f"the OOM test needs a memory cgroup: {why}")
    assert parent is not None
    group = MemoryCgroup(parent / f"pivot-oom-test-{os.getpid()}-{uuid.uuid4().hex[:8]}", v2)
    try:
        group.path.mkdir()
    except OSError as exc:
        require(False, f"the OOM test cannot make a cgroup under {parent}: {exc}")
    try:
        if v2:
            (group.path / "memory.max").write_text(str(limit))
            swap = group.path / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
        else:
            (group.path / "memory.limit_in_bytes").write_text(str(limit))
            memsw = group.path / "memory.memsw.limit_in_bytes"  # memory + swap: not below the first
            if memsw.exists():
                memsw.write_text(str(limit))
        assert group.oom_kills() == 0  # the proof of the kills must be readable before the run
        yield group
    finally:
        group.remove()


# --- the tests ---------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_a_stage_the_oom_killer_kills_is_charged_alone(make_project: Callable[..., Path]) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    with memory_cgroup(LIMIT) as group:
        (root / "cgroup.procs.path").write_text(str(group.procs))
        result = run_pivot(root, "repro", "--json", "--keep-going", "-j", "2", "sibling", "hog", timeout=30)
        # Checked here, not left to the `finally`: a process still in the cgroup is one
        # the run left running.
        wait_for(lambda: not group.members(), 5, f"the OOM cgroup {group.path} to empty")
        oom_kills = group.oom_kills()
    assert result.returncode == 1, describe(result)
    events = parse_events(result.stdout)
    check_wave_contract(events)
    done = finished(events)
    assert (done["hog"]["status"], done["hog"]["reason_code"]) == ("failed", "worker_died"), done["hog"]
    # loky's account of the death ("The exit codes of the workers are {SIGKILL(-9)}"),
    # passed on: the kernel's signal, not an error of the stage.
    assert "SIGKILL" in done["hog"]["reason"], done["hog"]
    # Charged three times, each a death by the OOM killer in that cgroup (no other death
    # can pass for one). Only the hog's worker dies, so no attempt of it is lost with
    # another's and runs again uncharged.
    assert len(runs(root, "hog")) == 3, runs(root, "hog")
    assert oom_kills == 3, f"{oom_kills} OOM kills in the cgroup for {len(runs(root, 'hog'))} runs"
    # "skipped" or "restored": an attempt lost with the hog's worker had committed it.
    assert done["sibling"]["status"] in ("ran", "skipped", "restored"), done
    assert_sibling_stands(root)
    assert not (root / "hog.txt").exists(), "the half-written hog.txt was left behind"
    assert lock(root, "hog") is None


@pytest.mark.timeout(30)
def test_ctrl_c_on_repro_stops_a_stage_looping_in_python(
    make_project: Callable[..., Path], proc_guard: ProcGuard
) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    run = LiveRun(proc_guard.start(root, "repro", "--json", "-j", "2", "sibling", "loop"))
    run.wait_event(finishing("sibling"), what="the sibling to finish")
    worker = stage_pid(root, "loop", run.proc)

    os.killpg(run.proc.pid, signal.SIGINT)  # Ctrl-C at a terminal signals the foreground group
    rc = run.wait_exit(REPRO_EXIT_S)
    assert rc == 130, f"exit code {rc}\n{run.stderr}"  # docs/cli.md: interrupted
    assert "Traceback" not in run.stderr and "interrupted" in run.stderr, run.stderr
    done = finished(run.events)
    assert done.get("loop", {}).get("status") != "ran", done
    assert done["sibling"]["status"] == "ran", done
    assert_sibling_stands(root)
    # What it half wrote is removed: the CLI's SIGTERM goes to its pool alone, which
    # cancels the stage (a SIGTERM to the pool's whole group killed the worker first).
    assert_stopped(root, "loop", worker)


@pytest.mark.timeout(30)
def test_ctrl_c_on_repro_stops_a_stage_stuck_in_c_ignoring_signals(
    make_project: Callable[..., Path], proc_guard: ProcGuard
) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    run = LiveRun(proc_guard.start(root, "repro", "--json", "-j", "2", "sibling", "stuck"))
    run.wait_event(finishing("sibling"), what="the sibling to finish")
    worker = stage_pid(root, "stuck", run.proc)

    os.killpg(run.proc.pid, signal.SIGINT)
    # SIGTERM and the cancel signal do nothing to its worker: only a SIGKILL stops it,
    # and the CLI must not wait on it for longer than its own bounded wait for its pool.
    rc = run.wait_exit(REPRO_EXIT_S)
    assert rc == 130, f"exit code {rc}\n{run.stderr}"
    assert "Traceback" not in run.stderr, run.stderr
    assert finished(run.events).get("stuck", {}).get("status") != "ran", run.events
    assert_sibling_stands(root)
    assert_stopped(root, "stuck", worker)


@pytest.mark.timeout(30)
def test_pivot_down_cancels_a_stage_looping_in_python_under_up(
    make_project: Callable[..., Path], up: Callable[..., LiveRun]
) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    live = up(root, "-j", "2", "sibling", "loop")
    live.wait_event(finishing("sibling"), what="the sibling to finish")
    worker = stage_pid(root, "loop", live.proc)

    down = run_pivot(root, "down", "--grace", "0", timeout=20)
    assert down.returncode == 0, describe(down)
    assert live.wait_exit(10) == 0, live.stderr
    ended = live.wait_event(finishing("loop"), 0, "the loop stage's end")
    assert (ended["status"], ended["reason_code"]) == ("cancelled", "cancelled"), ended
    # The soft cancel reached the stage's code: its worker was not killed.
    assert (root / "loop.unwound").exists(), "the loop stage was killed, not cancelled"
    check_wave_contract(live.events)
    assert [e["reason"] for e in live.events if e["event"] == "engine_stopped"] == [""], live.events
    assert_sibling_stands(root)
    assert_stopped(root, "loop", worker)


@pytest.mark.timeout(30)
def test_stopping_up_hard_kills_a_stage_stuck_in_c_ignoring_signals(
    make_project: Callable[..., Path], up: Callable[..., LiveRun]
) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    live = up(root, "-j", "2", "--grace", "0", "sibling", "stuck")
    live.wait_event(finishing("sibling"), what="the sibling to finish")
    worker = stage_pid(root, "stuck", live.proc)

    asked = time.time()  # the clock of the events' `ts`: how late the test reads them does not count
    live.terminate()  # SIGTERM: a graceful stop, here with no grace
    ended = live.wait_event(finishing("stuck"), CANCEL_WAIT_S + 5, "the stuck stage's end")
    assert live.wait_exit(10) == 0, live.stderr
    assert (ended["status"], ended["reason_code"]) == ("cancelled", "cancelled"), ended
    # Ended by the pool's hard kill: not before HARD_KILL_S (the soft cancel cannot reach
    # it), and before the broker gives up on what still runs (it would then be killed
    # only with its pool, reported "still running when Pivot stopped").
    took = ended["ts"] - asked
    assert HARD_KILL_S - 0.2 < took < CANCEL_WAIT_S, f"cancelled after {took:.1f} s: {ended}"
    check_wave_contract(live.events)
    assert_sibling_stands(root)
    assert_stopped(root, "stuck", worker)
