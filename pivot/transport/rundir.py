"""The run directory: where one engine's ipc endpoints live, guarded by a lock.

A second bind on the same ipc path succeeds and silently steals new connections, so the
broker takes an exclusive flock on `.pivot/run/lock` before binding anything. The
endpoints actually bound are written to `.pivot/run/endpoints.json` for clients; when
`.pivot/run/` would pass the 107-character ipc path limit, the sockets go to a short
per-user folder under the system temp dir and endpoints.json is the pointer to it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import IO

from pivot.errors import StackRunning
from pivot.protocol.record import Record, record

__all__ = ["Endpoints", "RunDir", "engine_info", "engine_mode", "engine_running", "read_endpoints"]

IPC_PATH_LIMIT = 107
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
                shutil.rmtree(self._socket_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
        self._lock_file = None
