"""Process helpers for the system and e2e tiers: run `pivot`, wait on conditions, and
find (and kill) processes a test left behind. Linux only: everything reads /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pivot.transport.rundir import POOLS_LOCK

T = TypeVar("T")

LEFTOVER_GRACE_S = 3.0
POLL_S = 0.02


# --- running the CLI ---------------------------------------------------------------


def pivot_cmd() -> list[str]:
    """The `pivot` console script, or an equivalent interpreter command.

    The fallback uses -P so that a project module named `broker.py` or `workers.py` in
    the working directory cannot shadow Pivot's own packages in the CLI process.
    """
    exe = shutil.which("pivot")
    if exe:
        return [exe]
    return [sys.executable, "-P", "-c", "from pivot.cli.entry import main; main()"]


def run_pivot(cwd: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run `pivot ARGS` in `cwd` to completion (text output captured)."""
    return subprocess.run(
        [*pivot_cmd(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # a stray Ctrl-C at the terminal does not reach it
    )


def start_pivot(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `pivot ARGS` in `cwd` in its own session; the caller waits for it.

    SIGINT is reset to its default: a shell starts background jobs with SIGINT ignored
    and an ignored signal stays ignored across exec, so a suite started with `&` would
    otherwise test a CLI that Ctrl-C cannot reach."""
    return subprocess.Popen(
        [*pivot_cmd(), *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_default_sigint,
        env=env,
    )


def start_following(cwd: Path, stage: str, into: Path) -> subprocess.Popen[str]:
    """`pivot logs -f STAGE` in `cwd`, its output going to the file `into` (read while it
    runs); the caller tracks and stops it."""
    with into.open("w") as out:
        return subprocess.Popen(
            [*pivot_cmd(), "logs", "-f", stage], cwd=cwd, stdout=out, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def describe(result: subprocess.CompletedProcess[str] | tuple[int | None, str, str]) -> str:
    """Exit code, stdout and stderr of a run, for assertion messages."""
    if isinstance(result, tuple):
        rc, out, err = result
    else:
        rc, out, err = result.returncode, result.stdout, result.stderr
    return f"exit code {rc}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"


# --- JSON lines (docs/events.md) ---------------------------------------------------


def parse_events(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line as a JSON object, checking the fields every line carries."""
    events = []
    for n, line in enumerate(stdout.splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise AssertionError(f"stdout line {n} is not JSON ({exc}): {line!r}") from None
        assert isinstance(record, dict), f"line {n} is not an object: {line!r}"
        assert record.get("v") == 1, f"line {n}: v is not 1: {line!r}"
        assert isinstance(record.get("event"), str), f"line {n}: no event name: {line!r}"
        assert type(record.get("ts")) is float, f"line {n}: ts is not a float: {line!r}"
        events.append(record)
    return events


def of_kind(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind]


def finished(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """stage -> its stage_finished event (each stage must finish once)."""
    result: dict[str, dict[str, Any]] = {}
    for e in of_kind(events, "stage_finished"):
        assert e["stage"] not in result, f"stage {e['stage']} finished twice: {events}"
        result[e["stage"]] = e
    return result


def one(events: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(events, kind)
    assert len(found) == 1, f"expected exactly one {kind} event, got {len(found)}: {events}"
    return found[0]


# --- waiting -----------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], T], timeout: float, what: str, interval: float = POLL_S
) -> T:
    """Poll `predicate` until it returns something truthy (returned); raise on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def wait_exit(proc: subprocess.Popen[str], timeout: float, what: str) -> tuple[int, str, str]:
    """Wait for `proc` (collecting its output); on timeout kill its group and fail."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(
            f"{what} did not exit within {timeout:.1f} s\n" + describe((None, out, err))
        ) from None
    return proc.returncode, out, err


# --- /proc -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    state: str
    cmdline: list[str]
    cwd: str | None

    def show(self) -> str:
        return f"pid {self.pid} (pgid {self.pgid}, cwd {self.cwd}): {' '.join(self.cmdline)}"


def proc_info(pid: int) -> ProcInfo | None:
    """What /proc says about `pid`, or None when it is gone."""
    base = Path("/proc") / str(pid)
    try:
        stat = (base / "stat").read_text()
        raw = (base / "cmdline").read_bytes()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        cwd: str | None = os.readlink(base / "cwd")
    except OSError:
        cwd = None
    return ProcInfo(
        pid=pid,
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        state=fields[0],
        cmdline=[a.decode(errors="replace") for a in raw.split(b"\0") if a],
        cwd=cwd,
    )


def all_processes() -> Iterable[ProcInfo]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = proc_info(int(entry.name))
            if info is not None:
                yield info


def is_live(info: ProcInfo) -> bool:
    return info.state not in ("Z", "X")


def alive(pid: int) -> bool:
    info = proc_info(pid)
    return info is not None and is_live(info)


def children_of(pid: int) -> list[ProcInfo]:
    return [p for p in all_processes() if p.ppid == pid and is_live(p)]


def engine_children(pid: int) -> list[ProcInfo]:
    """The processes of the engine of `pivot up` (pid `pid`): its broker, and the pool and
    watcher (started by `pivot up` itself and adopted by the broker, or restarted by the
    broker: children of either)."""
    everything = [p for p in all_processes() if is_live(p)]
    found = [p for p in everything if p.ppid == pid]
    for broker in [p for p in found if "broker" in p.cmdline]:
        found += [p for p in everything if p.ppid == broker.pid]
    return found


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def mentions(info: ProcInfo, root: str) -> bool:
    """True when the process runs in `root` or names a path in it on its command line."""
    if info.cwd is not None and _under(info.cwd.removesuffix(" (deleted)"), root):
        return True
    for arg in info.cmdline:
        for part in arg.replace("=", " ").split():
            if _under(part, root):
                return True
    return False


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass
class ProcGuard:
    """What one test started: directories its processes run in and process groups.

    `leftovers()` lists live processes (never this one) that mention a directory or
    belong to a group; `check()` waits briefly for them to exit, kills the rest and
    returns what it had to kill.
    """

    dirs: list[Path] = field(default_factory=list)
    pgids: set[int] = field(default_factory=set)
    popens: list[subprocess.Popen[str]] = field(default_factory=list)

    def watch_dir(self, path: Path) -> Path:
        self.dirs.append(path.resolve())
        return path

    def track(self, proc: subprocess.Popen[str]) -> subprocess.Popen[str]:
        """A Popen started in its own session: its group is watched too."""
        self.popens.append(proc)
        self.pgids.add(proc.pid)
        return proc

    def start(self, cwd: Path, *args: str) -> subprocess.Popen[str]:
        return self.track(start_pivot(cwd, *args))

    def leftovers(self) -> list[ProcInfo]:
        me = os.getpid()
        roots = [str(d) for d in self.dirs]
        found = []
        for info in all_processes():
            if info.pid == me or not is_live(info):
                continue
            if info.pgid in self.pgids or any(mentions(info, r) for r in roots):
                found.append(info)
        return found

    def check(self, grace: float = LEFTOVER_GRACE_S) -> list[ProcInfo]:
        # Our own children that exited must be reaped, or they stay zombies (ignored
        # anyway) and a Popen still running is itself a leftover.
        deadline = time.monotonic() + grace
        while True:
            for proc in self.popens:
                proc.poll()
            left = self.leftovers()
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)
        if left:
            for info in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(info.pid, signal.SIGKILL)
                if info.pgid in self.pgids:
                    kill_group(info.pgid)
        for proc in self.popens:
            if proc.poll() is None:
                kill_group(proc.pid)
            with contextlib.suppress(Exception):
                proc.communicate(timeout=5)
        return left


# --- the project folders -----------------------------------------------------------


def socket_dirs(root: Path) -> list[Path]:
    """Where a project's ipc sockets may live: .pivot/run/, or the short fallback dir."""
    import hashlib
    import tempfile

    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    return [root / ".pivot" / "run", Path(tempfile.gettempdir()) / f"pivot-{os.getuid()}" / digest]


def run_dir_leftovers(root: Path) -> list[str]:
    """Files left in the run directory besides the two lock files that stay (`lock`, and
    `pools.lock` once an engine started a pool): sockets, endpoints.json."""
    left = []
    for folder in socket_dirs(root):
        if folder.is_dir():
            left += [str(p) for p in folder.iterdir() if p.name not in ("lock", POOLS_LOCK)]
    return left


def write_files(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# --- a pipeline whose first stage waits for the test -------------------------------

# `held` writes its pid to held.started, then polls (with its own deadline) for
# held.release before writing its output; `after` depends on it. Stages run with the
# project folder as their working directory.
HELD_PIPELINE = '''\
import os
import time

from pivot import stage


@stage(outs=["held.txt"])
def held() -> None:
    with open("held.started.tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace("held.started.tmp", "held.started")
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


def held_stage_pid(root: Path, timeout: float = 20.0) -> int:
    """Wait until the held stage started; the pid of the process running it."""
    marker = root / "held.started"
    wait_for(marker.exists, timeout, f"the held stage to start ({marker})")
    return int(marker.read_text())


def release_held_stage(root: Path) -> None:
    (root / "held.release").write_text("go\n")


# wave_finished lists, named like the statuses (docs/events.md)
WAVE_LISTS = ("ran", "restored", "skipped", "failed", "blocked", "cancelled", "lost", "moved")


def check_wave_contract(events: list[dict[str, Any]]) -> None:
    """docs/events.md: stage_finished after its stage_started, wave_finished after every
    stage_finished of its wave, and every stage of the wave in exactly one list."""
    started: dict[int, list[str]] = {}
    running: set[tuple[int, str]] = set()
    done: dict[int, list[str]] = {}
    for e in events:
        kind = e["event"]
        if kind == "wave_started":
            started[e["wave"]] = e["stages"]
        elif kind == "stage_started":
            running.add((e["wave"], e["stage"]))
        elif kind == "stage_finished":
            if e["status"] == "ran":
                assert (e["wave"], e["stage"]) in running, f"ran without stage_started: {e}"
            done.setdefault(e["wave"], []).append(e["stage"])
        elif kind == "wave_finished":
            wave = e["wave"]
            listed = [name for key in WAVE_LISTS for name in e[key]]
            assert sorted(listed) == sorted(started[wave]), f"wave lists != wave stages: {e}"
            assert sorted(done.get(wave, []) + e["moved"]) == sorted(started[wave]), (
                f"wave_finished before every stage_finished: {events}"
            )


def pivot_ok(cwd: Path, *args: str) -> str:
    """stdout of `pivot ARGS`, which must succeed without a traceback."""
    result = run_pivot(cwd, *args)
    assert result.returncode == 0, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    return result.stdout


# --- `pivot up`: a live engine, read while it runs ----------------------------------


def inotify_inodes(pid: int) -> set[int]:
    """Inodes of the folders process `pid` watches with inotify (its fdinfo lines)."""
    found: set[int] = set()
    fds = Path("/proc") / str(pid) / "fd"
    try:
        entries = list(fds.iterdir())
    except OSError:
        return found
    for fd in entries:
        try:
            if os.readlink(fd) != "anon_inode:inotify":
                continue
            info = (Path("/proc") / str(pid) / "fdinfo" / fd.name).read_text()
        except OSError:
            continue
        for line in info.splitlines():
            if line.startswith("inotify wd:"):
                ino = next(f for f in line.split() if f.startswith("ino:"))
                found.add(int(ino.removeprefix("ino:"), 16))
    return found


class LiveRun:
    """A started `pivot up --display json` (own session) whose stdout a thread parses
    into `events` as lines arrive; stderr is collected by another thread.

    `mark()` is where to look from for what an action causes; `wait_event` waits on a
    Condition with a deadline (never a bare sleep) and fails at once when the process
    exits or writes a line that is not an event. `stop()` sends SIGTERM to the process
    group and checks the exit code is 0.
    """

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self._stderr: list[str] = []
        self._eof = False
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._read_stdout, name="up-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name="up-stderr", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @classmethod
    def start(
        cls,
        guard: ProcGuard,
        cwd: Path,
        *args: str,
        debounce_ms: int = 20,
        env: dict[str, str] | None = None,
    ) -> LiveRun:
        """`pivot up --display json --debounce MS ARGS` in `cwd` (as `start_pivot`;
        `env` replaces the environment), tracked by `guard`."""
        argv = ["up", "--display", "json", "--debounce", str(debounce_ms), *args]
        if env is None:
            return cls(guard.start(cwd, *argv))
        return cls(guard.track(start_pivot(cwd, *argv, env=env)))

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                record, problem = parse_events(line)[0], None
            except (AssertionError, IndexError) as exc:
                record, problem = None, f"{exc} (line {line!r})"
            with self._cond:
                if record is not None:
                    self.events.append(record)
                else:
                    self.problems.append(str(problem))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self._stderr.append(line)

    @property
    def stderr(self) -> str:
        with self._cond:
            return "".join(self._stderr)

    def mark(self) -> int:
        """How many events were read so far: an index for `wait_event(start=...)`."""
        with self._cond:
            return len(self.events)

    def since(self, start: int) -> list[dict[str, Any]]:
        with self._cond:
            return list(self.events[start:])

    def wait_event(
        self,
        pred: Callable[[dict[str, Any]], object],
        timeout: float = 20.0,
        what: str = "an event",
        start: int = 0,
    ) -> dict[str, Any]:
        """The first event at index >= `start` matching `pred`, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                assert not self.problems, f"pivot up wrote a bad line: {self.problems}"
                while i < len(self.events):
                    if pred(self.events[i]):
                        return self.events[i]
                    i += 1
                if self._eof:
                    raise AssertionError(
                        f"pivot up closed its output (exit code {self.proc.poll()}) before "
                        f"{what}\n{self._show(start)}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout:.1f} s waiting for {what}\n{self._show(start)}"
                    )
                self._cond.wait(left)

    def _show(self, start: int) -> str:
        lines = [json.dumps(e) for e in self.events[start:]]
        return "--- events ---\n" + "\n".join(lines) + "\n--- stderr ---\n" + "".join(self._stderr)

    def watcher(self) -> ProcInfo | None:
        """The watcher process (`python -m pivot.watch`) this engine started."""
        found = [p for p in engine_children(self.proc.pid) if "pivot.watch" in p.cmdline]
        return found[0] if found else None

    def wait_watching(self, *folders: Path, timeout: float = 20.0) -> None:
        """Wait until the watcher's inotify watches cover `folders`: edits there are seen.

        The engine publishes no event when its watcher is ready (`watcher_ready` goes to
        the broker only), so this reads the watcher's inotify watches in /proc."""
        wanted = {f.stat().st_ino for f in folders}

        def watching() -> bool:
            info = self.watcher()
            return info is not None and wanted <= inotify_inodes(info.pid)

        wait_for(watching, timeout, f"the watcher to watch {[str(f) for f in folders]}")

    def stop(self, timeout: float = 15.0) -> str:
        """SIGTERM to the process group; the exit code must be 0. Returns stderr."""
        self.terminate()
        rc = self.wait_exit(timeout)
        with self._cond:
            assert rc == 0, f"pivot up exited with code {rc} after SIGTERM\n{self._show(0)}"
            return "".join(self._stderr)

    def terminate(self) -> None:
        """SIGTERM to the process group (`stop` without waiting)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the exit (killing the group on timeout) and for every line it wrote
        to be read; its exit code."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc.pid)
            self.proc.wait()
            raise AssertionError(f"pivot up did not exit within {timeout:.1f} s") from None
        for thread in self._threads:
            thread.join(5.0)
        return rc


# --- a standalone broker ------------------------------------------------------------

BROKER_WAIT_S = 20.0


class Broker:
    """A `pivot broker` process of a test, and its control endpoint (read from the
    broker's endpoints.json once it has bound: tests bind port 0 and never race)."""

    def __init__(self, root: Path, proc: subprocess.Popen[str]) -> None:
        self.root = root
        self.proc = proc
        self.control = ""

    def wait_bound(self) -> str:
        def bound() -> str | None:
            if self.proc.poll() is not None:
                raise AssertionError("the broker exited:\n" + describe(wait_exit(self.proc, 5, "broker")))
            try:
                info = json.loads((self.root / ".pivot" / "run" / "endpoints.json").read_text())
            except (OSError, ValueError):
                return None
            return info["control"] if info.get("pid") == self.proc.pid else None

        self.control = str(wait_for(bound, BROKER_WAIT_S, "the broker to bind"))
        return self.control

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return wait_exit(self.proc, 15, "the broker after SIGTERM")


def start_pool(guard: ProcGuard, root: Path, control: str, name: str, *args: str) -> subprocess.Popen[str]:
    """A `pivot workers` joining the broker at `control`."""
    return guard.track(start_pivot(root, "workers", "--broker", control, "--name", name, *args))


# Pipeline source: whether a pid is gone (a zombie counts as gone), for stages that
# check that an earlier attempt's process was over before they began.
GONE = '''\
def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True
'''


# A pipeline whose stage `hold` runs until its process is stopped (at most 30 s) on its
# first attempt; a later attempt records (pid, parent pid, whether the first attempt's
# process was over when it began) in hold.runs, and finishes.
HOLD = '''\
import os
import time

from pivot import stage


{gone}

@stage(outs=["hold.txt"])
def hold() -> None:
    # The first attempt runs until its process is killed (at most 30 s); the next one
    # records whether the first was over when it began, and finishes.
    with open("hold.runs", "a+") as f:
        f.seek(0)
        before = f.read().split()
        over = not before or _gone(int(before[0]))
        f.write(f"{os.getpid()} {os.getppid()} {over}\\n")
    deadline = time.monotonic() + 30
    while not before and time.monotonic() < deadline:
        time.sleep(0.01)
    with open("hold.txt", "w") as f:
        f.write("done\\n")
'''
HOLD = HOLD.replace("{gone}", GONE)
