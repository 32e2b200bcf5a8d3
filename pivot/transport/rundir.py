"""The run directory: where one engine's ipc endpoints live, guarded by a lock.

A second bind on the same ipc path succeeds and silently steals new connections, so the
broker takes an exclusive flock on `.pivot/run/lock` before binding anything. The
endpoints actually bound are written to `.pivot/run/endpoints.json` for clients; when
`.pivot/run/` would pass the 107-character ipc path limit, the sockets go to a short
per-user folder under the system temp dir and endpoints.json is the pointer to it.

The worker pools an engine starts hold a shared flock on `.pivot/run/pools.lock` for
their lives. An engine (or a command that needs none running) that takes the project's
lock then waits until no pool holds that one: a pool whose engine was killed (SIGKILL,
out of memory) still runs its stages and writes their outputs for a moment, and a new
run on the same files meanwhile would mix the two (a truncated output stored in the run
cache under the old run's inputs was seen). Standalone pools (`pivot workers`) do not
hold it: they wait for a broker, which must not wait for them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import IO

from pivot.errors import StackRunning
from pivot.protocol.record import Record, record

__all__ = ["Endpoints", "RunDir", "engine_info", "engine_mode", "engine_running", "hold_pools_lock", "read_endpoints"]

IPC_PATH_LIMIT = 107
POOLS_LOCK = "pools.lock"
# How long a new engine waits for the pools of one that is gone: each stops its stages at
# once when it sees its engine gone (or after the broker's silence, ~3 s).
POOLS_WAIT_S = 30.0
_SAID_AFTER_S = 0.5  # a wait shorter than this is not worth a line
_SOCKETS = ("work", "control", "events", "changes")


@record
class Endpoints(Record):
    work: str
    control: str
    events: str
    changes: str


def run_dir_of(root: Path) -> Path:
    return root / ".pivot" / "run"


def engine_running(root: Path) -> bool:
    """Whether a Pivot engine holds the project's run-directory lock right now."""
    lock = run_dir_of(root) / "lock"
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def engine_mode(root: Path) -> str | None:
    """"up" or "repro" for the engine that published endpoints.json, else None."""
    try:
        mode = json.loads((run_dir_of(root) / "endpoints.json").read_text()).get("mode")
    except (OSError, ValueError, AttributeError):
        return None
    return mode if isinstance(mode, str) else None


def engine_info(root: Path) -> dict[str, object]:
    """What the running engine published in endpoints.json ({} when none did): its
    endpoints, `mode`, `pid` (of the broker's process) and `broker` (its id)."""
    try:
        data = json.loads((run_dir_of(root) / "endpoints.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_endpoints(root: Path) -> Endpoints | None:
    try:
        data = json.loads((run_dir_of(root) / "endpoints.json").read_text())
        return Endpoints(**{k: str(data[k]) for k in _SOCKETS})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def hold_pools_lock(root: Path) -> None:
    """For a pool its engine started: the shared lock new engines wait on, held until this
    process exits (never unlocked: the processes it forks close their copy, which leaves
    the lock to this one)."""
    path = run_dir_of(root)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / POOLS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)  # an engine only ever tests for it: no wait here
    _held_fds.append(fd)
    if len(_held_fds) == 1:
        # A stage's own forked children (and the workers' forkserver) must not keep the
        # project's engines waiting after this pool is gone.
        os.register_at_fork(after_in_child=_close_held)


_held_fds: list[int] = []


def _close_held() -> None:
    for fd in _held_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_fds.clear()


def wait_for_pools(root: Path, timeout: float = POOLS_WAIT_S, say: Callable[[str], None] | None = None) -> None:
    """Return once no pool of an earlier engine holds the project's pools lock; raises
    StackRunning (naming them) if some still do after `timeout`."""
    lock = run_dir_of(root) / POOLS_LOCK
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        start = time.monotonic()
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            waited = time.monotonic() - start
            if waited >= timeout:
                holders = ", ".join(str(pid) for pid in lock_holders(lock)) or "unknown"
                raise StackRunning(
                    f"a worker pool of a Pivot engine that is gone still runs for {root} (pid {holders}) "
                    f"after {timeout:.0f} s: stop it (kill it), then run again"
                )
            if not said and waited >= _SAID_AFTER_S and say is not None:
                said = True
                say("waiting for the worker pool of a Pivot engine that is gone to stop its stages")
            time.sleep(0.02)
    finally:
        os.close(fd)


def lock_holders(path: Path) -> list[int]:
    """The pids holding a flock on `path` (from /proc/locks; [] where it cannot tell)."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    inode = f":{st.st_ino}"
    pids = set()
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].endswith(inode) and fields[4].isdigit():
            pids.add(int(fields[4]))
    return sorted(pids)


class RunDir:
    """Owns the run directory for the life of one broker: lock, socket folder, pointer."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = run_dir_of(root)
        self._lock_file: IO[str] | None = None
        self._handed: IO[str] | None = None
        self._socket_dir: Path | None = None

    def lock(self, doing: str = "") -> None:
        """Take the project's engine lock; `doing` names a command that needs the engine idle."""
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        lock_file = open(self.path / "lock", "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            lock_file.close()
            if doing:
                raise StackRunning(
                    f"cannot {doing} while a Pivot engine (pid {holder}) is running for "
                    f"{self.root}; wait for it to finish or stop it first"
                ) from None
            if engine_info(self.root).get("mode") == "repro":
                raise StackRunning(
                    f"a `pivot repro` (pid {holder}) is running for {self.root}: it runs its own "
                    "wave and stops, taking no other; `pivot attach` shows it live. Run again when "
                    "it is done, or keep an engine with `pivot up`: every `pivot repro` then asks it"
                ) from None
            raise StackRunning(
                f"another Pivot engine (pid {holder}) is already running for {self.root}; "
                "`pivot attach` shows it live, `pivot repro` asks it for a run; or stop it first"
            ) from None
        try:
            wait_for_pools(self.root, say=_say)
        except BaseException:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
            lock_file.close()
            raise
        self._hold(lock_file)

    def _hold(self, lock_file: IO[str]) -> None:
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(str(os.getpid()))
        lock_file.flush()
        self._lock_file = lock_file

    def adopt_lock(self, fd: int) -> None:
        """Hold the lock `pivot up` took and passed down as an open descriptor (the flock
        belongs to the open file, which this process now shares)."""
        lock_file = os.fdopen(fd, "a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: no wait
        except BlockingIOError:
            lock_file.close()
            raise StackRunning(f"the engine lock of {self.root} is not held by this engine") from None
        self._hold(lock_file)

    def hand_over(self) -> int:
        """The lock's descriptor for a child process to adopt (`adopt_lock`); this object
        then forgets it without unlocking (unlocking would free the child's lock too)."""
        assert self._lock_file is not None
        fd = self._lock_file.fileno()
        self._handed = self._lock_file  # closed when this process exits
        self._lock_file = None
        return fd

    def acquire(self, mode: str = "repro") -> Endpoints:
        """Lock, choose the socket folder and publish the endpoints; `mode` ("repro" or
        "up") tells other commands whether the engine takes requests beyond its own."""
        self.lock()
        endpoints = self.ipc_endpoints()
        self.publish(endpoints, mode)
        return endpoints

    def ipc_endpoints(self) -> Endpoints:
        """ipc endpoints in the socket folder (call with the lock held)."""
        self._socket_dir = self._choose_socket_dir()
        for name in _SOCKETS:  # left by a crashed engine; we hold the lock now
            (self._socket_dir / f"{name}.sock").unlink(missing_ok=True)
        return Endpoints(**{name: f"ipc://{self._socket_dir / (name + '.sock')}" for name in _SOCKETS})

    def publish(self, endpoints: Endpoints, mode: str, **extra: object) -> None:
        """Write endpoints.json: where local commands find the engine (what was bound)."""
        tmp = self.path / "endpoints.json.tmp"
        data = {**asdict(endpoints), "mode": mode, "pid": os.getpid(), **extra}
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.path / "endpoints.json")

    def _choose_socket_dir(self) -> Path:
        longest = self.path / "control.sock"
        if len(str(longest)) <= IPC_PATH_LIMIT:
            return self.path
        import hashlib  # (here only: loading OpenSSL is ~4 ms of every command's start)
        import tempfile  # (as shutil below: imported where used, off a no-op's path)

        digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:12]
        short = Path(tempfile.gettempdir()) / f"pivot-{os.getuid()}" / digest
        short.parent.mkdir(mode=0o700, exist_ok=True)
        os.chmod(short.parent, 0o700)
        short.mkdir(mode=0o700, exist_ok=True)
        return short

    def release(self) -> None:
        if self._lock_file is None:
            return
        (self.path / "endpoints.json").unlink(missing_ok=True)
        if self._socket_dir is not None:
            for name in _SOCKETS:
                (self._socket_dir / f"{name}.sock").unlink(missing_ok=True)
            if self._socket_dir != self.path:
                import shutil

                shutil.rmtree(self._socket_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
        self._lock_file = None


def _say(text: str) -> None:
    print(f"pivot: {text}", file=sys.stderr, flush=True)
