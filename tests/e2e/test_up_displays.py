"""`pivot up` and its displays end to end: `pivot attach --display json` joining mid-run,
two attached displays at once, `q` on a terminal, and a worker pool killed mid-stage.

Real subprocesses on small purpose-built projects. JSON lines are read as they come
(`LiveRun`, tests/procs.py; an attach process is read the same way) and every wait is on
a condition with a deadline, never a sleep.

The display projects chain gate.txt -> early -> held -> after (and an unrelated `other`).
`held` reads its token from early.out (a copy of gate.txt), writes its pid to
`started-TOKEN` and waits for a file `release-TOKEN` (HELD_PIPELINE's pattern, once per
token): writing gate.txt = "N" starts a wave whose `held` waits for `release-N` unless the
test created it beforehand. Stages append "name pid" to runs.log on every real execution.
The test's bookkeeping files are in `.pivotignore`.

A JSON display can only show a stage as running by omission: a line recovered from the
snapshot (`"resynced": true`) is a `wave_started` or a final outcome, never a
`stage_started` (docs/events.md). So "held is running" reads: held is in the resynced
`wave_started` and has no `stage_finished`.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import termios
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from procs import (
    LiveRun,
    ProcGuard,
    ProcInfo,
    alive,
    all_processes,
    check_wave_contract,
    engine_children,
    finished,
    is_live,
    of_kind,
    pivot_cmd,
    proc_info,
    run_dir_leftovers,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

Events = list[dict[str, Any]]
MakeProject = Callable[..., Path]

WAIT_S = 20.0  # generous: a wave here takes well under a second
STOP_WITHIN_S = 10.0
QUIT_WITHIN_S = 5.0  # `q` is read within 0.1 s; then the stack's orderly shutdown


# --- projects ------------------------------------------------------------------------

DISPLAY_PIPELINE = '''\
import os
import time

from pivot import stage


def record(name: str) -> None:
    with open("runs.log", "a") as f:
        f.write(f"{name} {os.getpid()}\\n")


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


@stage(deps=["gate.txt"], outs=["early.out"])
def early() -> None:
    record("early")
    write("early.out", read("gate.txt"))


@stage(deps=["early.out"], outs=["held.out"])
def held() -> None:
    record("held")
    token = read("early.out").strip()
    write(f"started-{token}.tmp", str(os.getpid()))
    os.replace(f"started-{token}.tmp", f"started-{token}")
    deadline = time.monotonic() + 30
    while not os.path.exists(f"release-{token}"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"release-{token} never appeared")
        time.sleep(0.02)
    write("held.out", f"held {token}\\n")


@stage(deps=["held.out"], outs=["after.out"])
def after() -> None:
    record("after")
    write("after.out", read("held.out").upper())


@stage(deps=["other.txt"], outs=["other.out"])
def other() -> None:
    record("other")
    write("other.out", read("other.txt"))
'''

DISPLAY_FILES = {
    ".pivotignore": "runs.log\nstarted-*\nrelease-*\n*.tmp\n",
    "pipeline.py": DISPLAY_PIPELINE,
    "gate.txt": "1\n",
    "release-1": "",  # the first wave does not wait
    "other.txt": "other\n",
}
ALL_STAGES = ["early", "held", "after", "other"]  # the pipeline's order
GATED = ["early", "held", "after"]  # what an edit of gate.txt runs, in run order

# `held` appends "PID EARLIER..." to held.log when it starts, EARLIER being the pids of
# earlier attempts still alive at that moment (read from /proc, zombies excluded), then
# waits for held.release. Two attempts alive at once leave a non-empty EARLIER.
POOL_PIPELINE = '''\
import os
import time

from pivot import stage


def live_pids(path: str) -> list[str]:
    """The pids listed first on the lines of `path` whose processes still run."""
    if not os.path.exists(path):
        return []
    found = []
    with open(path) as f:
        for line in f:
            pid = line.split()[0]
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    state = stat.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state not in ("Z", "X"):
                found.append(pid)
    return found


@stage(outs=["held.txt"])
def held() -> None:
    earlier = live_pids("held.log")
    with open("held.log", "a") as f:
        f.write(" ".join([str(os.getpid()), *earlier]) + "\\n")
    deadline = time.monotonic() + 30
    while not os.path.exists("held.release"):
        if time.monotonic() > deadline:
            raise TimeoutError("held.release never appeared")
        time.sleep(0.02)
    with open("held.txt", "w") as f:
        f.write("held\\n")


@stage(deps=["held.txt"], outs=["after.txt"])
def after() -> None:
    with open("held.txt") as src, open("after.txt", "w") as dst:
        dst.write(src.read().upper())
'''

POOL_FILES = {".pivotignore": "held.log\nheld.release\n", "pipeline.py": POOL_PIPELINE}


# --- helpers -------------------------------------------------------------------------


def runs(root: Path) -> Counter[str]:
    """How many times each stage really executed (runs.log)."""
    log = root / "runs.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter(line.split()[0] for line in lines)


def started_pid(root: Path, token: str) -> int:
    """Wait until `held` started for `token`; the pid of the worker running it."""
    marker = root / f"started-{token}"
    wait_for(marker.exists, WAIT_S, f"held to start for token {token} ({marker})")
    return int(marker.read_text())


def statuses(events: Events) -> dict[str, str]:
    return {name: e["status"] for name, e in finished(events).items()}


def wave_slice(events: Events, wave: int) -> Events:
    """From the `wave_started` of `wave` to its `wave_finished`, both included (and the
    events of other kinds between them)."""
    first = next(
        i for i, e in enumerate(events) if e["event"] == "wave_started" and e["wave"] == wave
    )
    last = next(
        i for i, e in enumerate(events) if e["event"] == "wave_finished" and e["wave"] == wave
    )
    assert first < last, f"wave {wave} finished before it started: {events}"
    return events[first : last + 1]


def in_wave(events: Events, wave: int) -> Events:
    return [e for e in events if e.get("wave") == wave]


def wave_end(live: LiveRun, wave: int, what: str, start: int = 0) -> dict[str, Any]:
    return live.wait_event(
        lambda e: e["event"] == "wave_finished" and e["wave"] == wave, WAIT_S, what, start
    )


def without_ts(events: Events) -> Events:
    return [{k: v for k, v in e.items() if k != "ts"} for e in events]


def check_no_repeats(events: Events) -> None:
    """One display's stream: at most one wave_started and one wave_finished per wave,
    one stage_finished per (wave, stage)."""
    for kind in ("wave_started", "wave_finished"):
        waves = Counter(e["wave"] for e in of_kind(events, kind))
        assert all(n == 1 for n in waves.values()), f"{kind} repeated: {waves}\n{events}"
    outcomes = Counter((e["wave"], e["stage"]) for e in of_kind(events, "stage_finished"))
    assert all(n == 1 for n in outcomes.values()), f"an outcome repeated: {outcomes}\n{events}"


@pytest.fixture
def engines(proc_guard: ProcGuard) -> Iterator[Callable[..., LiveRun]]:
    """engines(root, "up" | "attach", *args) -> a started `pivot up --display json`
    (debounce 20 ms) or `pivot attach --display json`, read as a LiveRun. Those a failed
    test left running are stopped (SIGTERM; attaches first) before proc_guard looks."""
    started: list[LiveRun] = []

    def start(root: Path, command: str, *args: str) -> LiveRun:
        if command == "up":
            live = LiveRun.start(proc_guard, root, *args)
        else:
            assert command == "attach", command
            live = LiveRun(proc_guard.start(root, "attach", "--display", "json", *args))
        started.append(live)
        return live

    yield start
    for live in reversed(started):
        if live.proc.poll() is None:
            with contextlib.suppress(AssertionError):
                live.stop(STOP_WITHIN_S)


def stop_up(live: LiveRun, root: Path) -> None:
    """SIGTERM; `pivot up` must exit 0 and leave no socket or endpoints file behind."""
    err = live.stop(STOP_WITHIN_S)
    assert run_dir_leftovers(root) == [], run_dir_leftovers(root)
    assert "Traceback" not in err, err


def first_wave(live: LiveRun, root: Path) -> Events:
    """Wave 1 (every stage ran), then wait until the watcher watches the project."""
    wave_end(live, 1, "the first wave")
    wave = wave_slice(live.since(0), 1)
    check_wave_contract(wave)
    assert statuses(wave) == dict.fromkeys(ALL_STAGES, "ran"), wave
    live.wait_watching(root)
    return wave


def start_gated_wave(live: LiveRun, root: Path, token: str) -> dict[str, Any]:
    """Write gate.txt = token; the wave_started it causes (only the gated stages)."""
    start = live.mark()
    (root / "gate.txt").write_text(f"{token}\n")
    began = live.wait_event(
        lambda e: e["event"] == "wave_started", WAIT_S, f"the wave of gate.txt = {token}", start
    )
    assert (began["trigger"], began["paths"], began["stages"]) == ("files", ["gate.txt"], GATED), began
    return began


# --- 1. attach mid-run -----------------------------------------------------------------


def test_attach_mid_run_gets_a_consistent_snapshot_then_the_rest_and_detaching_changes_nothing(
    make_project: MakeProject, engines: Callable[..., LiveRun]
) -> None:
    root = make_project(DISPLAY_FILES)
    up = engines(root, "up")
    first_wave(up, root)

    # Wave 2: early runs, held waits for release-2.
    began = start_gated_wave(up, root, "2")
    wave = began["wave"]
    assert wave == 2, began
    held_pid = started_pid(root, "2")
    up.wait_event(
        lambda e: e["event"] == "stage_started" and e["stage"] == "held" and e["wave"] == wave,
        WAIT_S, "held to start",
    )
    joined_at = up.mark()  # what `up` shows from here on, the attach must show live

    attach = engines(root, "attach")
    attach.wait_event(
        lambda e: e["event"] == "stage_finished" and e["stage"] == "early",
        WAIT_S, "the attach to show early's outcome",
    )
    head = attach.since(0)
    up_early = finished(in_wave(up.since(0), wave))["early"]
    assert up_early["wave"] == wave and up_early["status"] == "ran", up_early
    # The snapshot, as the attach shows it: wave 2 running with the stages `up` reported,
    # early ran (with the engine's duration), held running (no outcome), nothing else.
    # (trigger and paths are not compared: the snapshot does not keep them.)
    assert [e["event"] for e in head] == ["wave_started", "stage_finished"], head
    w_started, early_done = head
    assert w_started["resynced"] is True and early_done["resynced"] is True, head
    assert (w_started["wave"], w_started["stages"]) == (wave, began["stages"]), w_started
    assert "held" in w_started["stages"], w_started
    for key in ("wave", "stage", "status", "reason_code", "duration_s", "error"):
        assert early_done[key] == up_early[key], f"{key}: attach {early_done} != up {up_early}"
    assert not attach.problems and attach.proc.poll() is None, attach.stderr
    assert alive(held_pid), "held is not running any more"

    (root / "release-2").write_text("")
    end = wave_end(attach, wave, "the attach to show wave 2's end")
    up_end = wave_end(up, wave, "wave 2 to end")
    events = attach.since(0)
    check_no_repeats(events)
    assert statuses(events) == dict.fromkeys(GATED, "ran"), events
    # Everything after the snapshot came live, exactly as `up` showed it (same ts too:
    # both carry the broker's publish time); nothing from before the join came again.
    live_part = [e for e in events if not e.get("resynced")]
    since_join = up.since(joined_at)
    upto = next(i for i, e in enumerate(since_join) if e is up_end)
    assert live_part == since_join[: upto + 1], (
        f"attach live events != up's since the join\n{live_part}\n{since_join}"
    )
    assert [e["event"] for e in live_part] == [
        "stage_finished", "stage_started", "stage_finished", "wave_finished",
    ], live_part
    assert [e.get("stage") for e in live_part[:3]] == ["held", "after", "after"], live_part
    assert end == up_end, f"attach {end} != up {up_end}"
    assert end["ran"] == GATED and end["lost"] == end["failed"] == [], end

    # Detach after the wave: the attach exits 0, `up` goes on and runs the next edit.
    attach.stop(STOP_WITHIN_S)
    assert "Traceback" not in attach.stderr, attach.stderr
    assert up.proc.poll() is None, "pivot up exited when a display detached"
    (root / "release-3").write_text("")
    began = start_gated_wave(up, root, "3")
    assert began["wave"] == 3, began
    wave_end(up, 3, "wave 3 to end")
    check_wave_contract(wave_slice(up.since(0), 3))
    assert statuses(wave_slice(up.since(0), 3)) == dict.fromkeys(GATED, "ran")

    # Detach mid-stage: held, left running, still finishes when released.
    began = start_gated_wave(up, root, "4")
    assert began["wave"] == 4, began
    held_pid = started_pid(root, "4")
    second = engines(root, "attach")
    second.wait_event(
        lambda e: e["event"] == "stage_finished" and e["stage"] == "early" and e["wave"] == 4,
        WAIT_S, "the second attach to show wave 4",
    )
    second.stop(STOP_WITHIN_S)
    assert up.proc.poll() is None and alive(held_pid), "detaching stopped the run"
    start = up.mark()
    (root / "release-4").write_text("")
    wave_end(up, 4, "wave 4 to end", start)
    wave4 = wave_slice(up.since(0), 4)
    check_wave_contract(wave4)
    assert statuses(wave4) == dict.fromkeys(GATED, "ran"), wave4
    assert of_kind(up.since(0), "pool_lost") == [], up.since(0)
    assert (root / "after.out").read_text() == "HELD 4\n"
    assert runs(root) == {"early": 4, "held": 4, "after": 4, "other": 1}, runs(root)
    stop_up(up, root)


# --- 2. two displays at once -------------------------------------------------------------


def test_an_attached_display_ends_when_up_stops(
    make_project: MakeProject, engines: Callable[..., LiveRun]
) -> None:
    root = make_project(DISPLAY_FILES)
    up = engines(root, "up")
    first_wave(up, root)
    attached = engines(root, "attach")
    attached.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "the attach's snapshot")
    stop_up(up, root)
    assert up.since(0)[-1]["event"] == "engine_stopped", up.since(0)[-3:]
    assert attached.wait_exit(QUIT_WITHIN_S) == 0, attached.stderr
    assert attached.since(0)[-1]["event"] == "engine_stopped", attached.since(0)
    assert "Traceback" not in attached.stderr and "error" not in attached.stderr, attached.stderr


def test_two_attached_displays_receive_the_same_wave(
    make_project: MakeProject, engines: Callable[..., LiveRun]
) -> None:
    root = make_project(DISPLAY_FILES)
    up = engines(root, "up")
    wave1 = first_wave(up, root)

    displays = [engines(root, "attach"), engines(root, "attach")]
    for n, display in enumerate(displays):
        # Joining an idle engine: the last wave, recovered from the snapshot.
        wave_end(display, 1, f"attach {n} to show wave 1")
        joined = display.since(0)
        assert all(e.get("resynced") is True for e in joined), joined
        [w_started] = of_kind(joined, "wave_started")
        assert (w_started["wave"], w_started["stages"]) == (1, wave1[0]["stages"]), joined
        assert statuses(joined) == statuses(wave1), joined
        assert without_ts(of_kind(joined, "wave_finished")) == [
            {**e, "resynced": True} for e in without_ts(of_kind(wave1, "wave_finished"))
        ], joined

    marks = [display.mark() for display in displays]
    (root / "release-2").write_text("")
    began = start_gated_wave(up, root, "2")
    wave = began["wave"]
    assert wave == 2, began
    wave_end(up, wave, "wave 2 to end")
    expected = wave_slice(up.since(0), wave)
    check_wave_contract(expected)
    assert statuses(expected) == dict.fromkeys(GATED, "ran"), expected
    for n, (display, mark) in enumerate(zip(displays, marks, strict=True)):
        wave_end(display, wave, f"attach {n} to show wave 2", mark)
        seen = display.since(mark)
        seen = seen[: next(i for i, e in enumerate(seen) if e["event"] == "wave_finished") + 1]
        # The same events, in the same order, with the same broker timestamps.
        assert seen == expected, f"attach {n} saw\n{seen}\nup saw\n{expected}"
        check_no_repeats(display.since(0))
    for display in displays:
        display.stop(STOP_WITHIN_S)
        assert "Traceback" not in display.stderr, display.stderr
    stop_up(up, root)


# --- 3. `q` on a terminal ------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class PtyOutput:
    """Everything written to the slave side of a pty, read from its master by a thread."""

    def __init__(self, master: int) -> None:
        self.master = master
        self._data = bytearray()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._eof = False
        self._thread = threading.Thread(target=self._read, name="pty", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: every slave fd is closed
                chunk = b""
            with self._cond:
                if not chunk:
                    self._eof = True
                else:
                    self._data += chunk
                self._cond.notify_all()
            if not chunk:
                return

    def text(self) -> str:
        with self._cond:
            raw = bytes(self._data)
        return ANSI.sub("", raw.decode(errors="replace")).replace("\r\n", "\n")

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = re.search(pattern, ANSI.sub("", self._data.decode(errors="replace")))
                if found:
                    return found
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    why = "the terminal was closed" if self._eof else f"timed out after {timeout:.1f} s"
                    raise AssertionError(
                        f"{why} waiting for {pattern!r} on the terminal:\n{self._data.decode(errors='replace')}"
                    )
                self._cond.wait(left)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


@dataclass
class OnTerminal:
    """A `pivot up --display plain` whose stdin and stdout are a pseudo-terminal."""

    proc: subprocess.Popen[str]
    master: int
    output: PtyOutput
    stderr_path: Path
    modes: list[Any]  # the terminal's modes before `pivot up` started

    def press(self, key: bytes) -> None:
        os.write(self.master, key)

    def show(self) -> str:
        return f"{self.output.text()}\n--- stderr ---\n{self.stderr_path.read_text()}"


@contextlib.contextmanager
def up_on_a_terminal(root: Path, proc_guard: ProcGuard, tmp_path: Path) -> Iterator[OnTerminal]:
    master, slave = os.openpty()
    modes = termios.tcgetattr(slave)
    stderr_path = tmp_path / "up.stderr"
    output: PtyOutput | None = None
    try:
        with open(stderr_path, "w") as err:
            proc = proc_guard.track(
                subprocess.Popen(
                    [*pivot_cmd(), "up", "--display", "plain", "--debounce", "20"],
                    cwd=root,
                    stdin=slave,
                    stdout=slave,
                    stderr=err,
                    start_new_session=True,
                    text=True,
                )
            )
        os.close(slave)
        slave = -1
        output = PtyOutput(master)
        yield OnTerminal(proc, master, output, stderr_path, modes)
    finally:
        if output is not None:
            output.close()
        if slave >= 0:
            os.close(slave)
        os.close(master)


def test_q_on_the_terminal_quits_up_cleanly(
    make_project: MakeProject, proc_guard: ProcGuard, tmp_path: Path
) -> None:
    root = make_project(DISPLAY_FILES)
    with up_on_a_terminal(root, proc_guard, tmp_path) as term:
        term.output.wait_for(r"wave 1 done: 4 ran", WAIT_S)
        # The live view reads keys one by one: the terminal is in cbreak mode.
        assert not termios.tcgetattr(term.master)[3] & termios.ICANON, "the terminal is not in cbreak mode"

        term.press(b"q")
        try:
            rc = term.proc.wait(QUIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"pivot up did not exit within {QUIT_WITHIN_S} s of q\n{term.show()}") from None
        assert rc == 0, f"exit code {rc} after q\n{term.show()}"
        assert "Traceback" not in term.show(), term.show()
        left = proc_guard.check()
        assert left == [], [p.show() for p in left]
        assert run_dir_leftovers(root) == [], run_dir_leftovers(root)
        assert termios.tcgetattr(term.master)[3] == term.modes[3], "the terminal's modes were not restored"
        assert runs(root) == dict.fromkeys(ALL_STAGES, 1), runs(root)


def test_p_pauses_and_resumes_reacting_and_f_forces_every_stage(
    make_project: MakeProject, proc_guard: ProcGuard, tmp_path: Path
) -> None:
    root = make_project(DISPLAY_FILES | {"release-2": ""})
    with up_on_a_terminal(root, proc_guard, tmp_path) as term:
        term.output.wait_for(r"wave 1 done: 4 ran", WAIT_S)
        term.press(b"p")
        term.output.wait_for(r"paused: no wave starts until resumed", WAIT_S)
        (root / "gate.txt").write_text("2\n")  # collected while paused
        term.press(b"p")
        term.output.wait_for(r"wave 2 done: 3 ran", WAIT_S)
        text = term.output.text()
        assert text.index("resumed") < text.index("wave 2"), text
        term.press(b"f")
        term.output.wait_for(r"wave 3 done: 4 ran", WAIT_S)
        assert runs(root) == {"early": 3, "held": 3, "after": 3, "other": 2}, runs(root)
        term.press(b"q")
        assert term.proc.wait(QUIT_WITHIN_S) == 0, term.show()


# --- 4. the pool killed mid-stage ------------------------------------------------------------


def held_starts(root: Path) -> list[list[int]]:
    """held.log's complete lines: [pid, earlier attempts alive when it started...]."""
    log = root / "held.log"
    if not log.exists():
        return []
    return [[int(x) for x in line.split()] for line in log.read_text().split("\n")[:-1]]


def is_pool(info: ProcInfo) -> bool:
    """`python -P -m workers ...`: a worker pool (pivot/cli/stack.py)."""
    args = info.cmdline
    return any(args[i : i + 2] == ["-m", "workers"] for i in range(len(args) - 1))


def group_members(pgid: int) -> list[int]:
    return [p.pid for p in all_processes() if p.pgid == pgid and is_live(p)]


@pytest.mark.parametrize(
    ("sig", "why"),
    [(signal.SIGKILL, "SIGKILL"), (signal.SIGSTOP, "no heartbeat")],
    ids=["killed", "hung"],
)
def test_a_pool_killed_mid_stage_is_replaced_and_the_stage_runs_once_more_never_twice_at_once(
    make_project: MakeProject, engines: Callable[..., LiveRun], sig: signal.Signals, why: str
) -> None:
    """SIGKILL: the pool is gone. SIGSTOP: the pool hangs (its loky worker still runs the
    stage); the broker gives it up after 3 s of silence, and `pivot up` must kill its
    whole group before the stage can run again."""
    root = make_project(POOL_FILES)
    up = engines(root, "up")
    [[first]] = wait_for(lambda: held_starts(root), WAIT_S, "held to start")
    worker = proc_info(first)
    assert worker is not None, f"the worker running held ({first}) is gone"
    # The pool leads the group of its processes (workers may be forked from its
    # forkserver, so the worker's parent is not always the pool).
    pool = proc_info(worker.pgid)
    assert pool is not None, worker.show()
    assert pool.pid in {p.pid for p in engine_children(up.proc.pid)} and is_pool(pool), pool.show()
    assert str(root.resolve()) in pool.cmdline, pool.show()
    assert pool.pgid == pool.pid and worker.pgid == pool.pid, (pool.show(), worker.show())
    old_group = group_members(pool.pid)
    assert {pool.pid, first} <= set(old_group), old_group

    start = up.mark()
    os.kill(pool.pid, sig)
    lost = up.wait_event(lambda e: e["event"] == "pool_lost", WAIT_S, "pool_lost", start)
    assert (lost["pool"], lost["stages"]) == ("pool-1", ["held"]), lost
    assert why in lost["reason"], lost

    def new_pool() -> list[int]:
        return [
            p.pid for p in engine_children(up.proc.pid)
            if is_pool(p) and p.pid != pool.pid
        ]

    [new] = wait_for(new_pool, WAIT_S, "a new pool")

    def restarted_or_over() -> bool:
        over = any(e["event"] == "wave_finished" for e in up.since(start))
        return len(held_starts(root)) >= 2 or over

    wait_for(restarted_or_over, WAIT_S, "held to start again (or wave 1 to end)")
    starts = held_starts(root)
    assert len(starts) >= 2, (
        "wave 1 ended without running held again after its pool was lost:\n"
        + "\n".join(str(e) for e in up.since(start))
    )
    # When the second attempt started, no earlier attempt was alive (the stage checked).
    assert starts[1][1:] == [], f"held started again while {starts[1][1:]} still ran: {starts}"
    second = starts[1][0]
    assert second != first, starts
    assert not alive(first), f"the first attempt's worker {first} is still alive"
    info = proc_info(second)
    assert info is not None and info.pgid == new, f"held ran again outside the new pool {new}: {info}"
    survivors = [pid for pid in old_group if alive(pid)] + group_members(pool.pid)
    assert survivors == [], f"the old pool group {pool.pid} survives: {survivors}"

    (root / "held.release").write_text("")
    wave_end(up, 1, "wave 1 to end")
    wave = wave_slice(up.since(0), 1)
    check_wave_contract(wave)
    assert statuses(wave) == {"held": "ran", "after": "ran"}, wave
    held_started = [e for e in of_kind(wave, "stage_started") if e["stage"] == "held"]
    assert len(held_started) == 2, held_started  # the lost attempt, and the one that ran
    [end] = of_kind(wave, "wave_finished")
    assert end["ran"] == ["held", "after"] and end["lost"] == [], end
    assert of_kind(up.since(0), "pool_lost") == [lost], up.since(0)
    assert len(held_starts(root)) == 2, held_starts(root)  # exactly once more
    assert (root / "after.txt").read_text() == "HELD\n"
    assert "the worker pool stopped (it was killed by SIGKILL); restarting it" in up.stderr, up.stderr
    assert group_members(pool.pid) == []
    stop_up(up, root)


# --- Ctrl-Z, then fg --------------------------------------------------------------------

# Longer than every liveness window the stack keeps: the pool gives up a silent broker
# after 3 s, a display after 5 s. The length of the stop is the stimulus of the test.
STOPPED_FOR_S = 6.0


def test_up_stopped_by_ctrl_z_and_resumed_keeps_its_pool_and_carries_on(
    make_project: MakeProject, engines: Callable[..., LiveRun]
) -> None:
    """Ctrl-Z stops the terminal's foreground process group: `pivot up` alone (its pool
    and watcher run in their own sessions and keep running). After fg nothing may count
    the pause as a death: no pool lost or restarted, no display giving up."""
    root = make_project(POOL_FILES | {"held.release": ""})
    up = engines(root, "up")
    wave_end(up, 1, "the first wave")
    up.wait_watching(root)
    [pool] = [p for p in engine_children(up.proc.pid) if is_pool(p)]
    os.killpg(up.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(STOPPED_FOR_S)  # the stimulus: a stop longer than any liveness window
    finally:
        os.killpg(up.proc.pid, signal.SIGCONT)
    assert alive(pool.pid), "the pool gave up the stopped broker"
    start = up.mark()
    (root / "held.release").unlink()  # a hand deletion of... nothing declared: no wave
    (root / "held.txt").write_text("edited by hand\n")  # a hand edit of an output
    began = up.wait_event(lambda e: e["event"] == "wave_started", WAIT_S, "a wave after fg", start)
    assert began["paths"] == ["held.txt"], began
    assert alive(pool.pid) and [p.pid for p in engine_children(up.proc.pid) if is_pool(p)] == [pool.pid]
    assert of_kind(up.since(0), "pool_lost") == [], up.since(0)
    assert "exited" not in up.stderr, up.stderr
    (root / "held.release").write_text("")
    wave_end(up, began["wave"], "the wave after fg", start)
    stop_up(up, root)
