"""The roles a broker process starts beside itself for `pivot up`: a pool and a watcher.

Each runs in its own session (process group), so one killpg stops a pool with its loader
and worker processes. A thread per child waits for its exit and wakes the broker's loop
through a pipe; the loop then kills what is left of the group, tells the state machine
(a dead pool's stages run again only now: no attempt of theirs can still be alive) and
restarts the role after a backoff (`broker/supervisor.py`). A pool the broker gives up
while its process lives (hung, SIGSTOPped) is killed with its group first. With an
owner (the foreground `pivot up`), the engine stops when that process is gone, even
SIGKILLed.

    broker loop --poll--> wake pipe <-- reaper thread per child (proc.wait())
                                    <-- owner thread (pidfd of `pivot up`)
                                    <-- restart timers
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from broker.supervisor import GiveUp, Supervisor
from pivot.launch import python_cmd
from pivot.launch.procs import describe_exit, exit_code, is_alive, kill_group
from pivot.launch.scratch import open_role_log

if TYPE_CHECKING:
    from broker.service import BrokerService
    from pivot.protocol.messages import Message
    from pivot.transport.rundir import Endpoints

# Imported light on purpose: the pool and watcher start before the broker imports its
# heavier modules (ZeroMQ, the message catalog); those come in the loop's methods below.

__all__ = ["POOL_NAME", "LocalRoles"]

log = logging.getLogger(__name__)

POOL_NAME = "pool-1"
GRACE_S = 3.0


class Child:
    """A process the broker supervises: one it started (its exit code is known), or one
    the foreground `pivot up` started for it a moment earlier, to save start-up time
    (adopted by pid: the broker is not its parent, so a pidfd tells when it ends)."""

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.popen = popen
        self.code: int | None = None  # an adopted one's, read while it is a zombie

    def wait(self, timeout: float | None = None) -> bool:
        """True once the process has ended; False if it still runs after `timeout`."""
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        try:
            fd = os.pidfd_open(self.pid)
        except OSError:  # gone already
            return True
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
        if ready and self.code is None:
            self.code = exit_code(self.pid)  # its parent (`pivot up`) reaps it later
        return bool(ready)

    def running(self) -> bool:
        return self.popen.poll() is None if self.popen is not None else is_alive(self.pid)

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode if self.popen is not None else self.code


class LocalRoles:
    """Started before the broker binds when its endpoints are known (ipc, fixed ports):
    the pool's interpreter and loader then start while the broker imports ZeroMQ and
    its own modules; they connect before the bind and ZeroMQ retries. `attach(service)`
    before the broker's loop runs."""

    def __init__(self, root: Path, endpoints: Endpoints | None, args: argparse.Namespace) -> None:
        self.root = root
        self.endpoints = endpoints
        self.service: BrokerService | None = None
        self.args = args
        self.logs = root / ".pivot" / "logs"
        self.procs: dict[str, Child] = {}
        self.supervisor = Supervisor()
        self.events: queue.SimpleQueue[tuple[str, str, object]] = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.stopping = False
        self.started = False
        self.started_at: dict[str, float] = {}
        self.timers: list[threading.Timer] = []

    def attach(self, service: BrokerService) -> None:
        self.service = service
        self.endpoints = service.endpoints
        service.on_publish = self._published
        service.local_ps = self._ps

    def _ps(self, now: float) -> list[dict[str, object]]:
        """The watcher this broker runs (its pool reports itself at hello)."""
        proc = self.procs.get("watcher")
        if proc is None or not proc.running():
            return []
        return [{
            "role": "watcher", "name": "watcher", "pid": proc.pid, "host": socket.gethostname(),
            "uptime_s": round(now - self.started_at.get("watcher", now), 1),
        }]

    def fds(self) -> list[int]:
        return [self.wake_r]

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        if self.args.owner:
            threading.Thread(target=self._watch_owner, args=(self.args.owner,), name="owner", daemon=True).start()
        for role, wanted, adopted in (
            ("pool", self.args.pool_jobs, self.args.adopt_pool), ("watcher", self.args.watch, self.args.adopt_watcher),
        ):
            if adopted:
                self._track(role, Child(adopted))
            elif wanted:
                self._start(role)

    def stop(self) -> None:
        """The engine stopped: the pool was told to exit; the watcher is stopped; whatever
        is left of either group after a grace period is killed."""
        self.stopping = True
        for timer in self.timers:
            timer.cancel()
        watcher = self.procs.get("watcher")
        if watcher is not None:
            _stop_group(watcher, "watcher", terminate=True)
        pool = self.procs.get("pool")
        if pool is not None:
            _stop_group(pool, "pool", terminate=False)
        # The wake pipe stays open: a reaper thread may still write to it, and a closed
        # descriptor's number could be another file's by then. The process ends soon.

    # --- processes -----------------------------------------------------------------

    def _start(self, role: str) -> None:
        ep = self.endpoints
        assert ep is not None
        if role == "pool":
            cmd = python_cmd(
                "workers", "--root", str(self.root), "--work", ep.work, "--name", POOL_NAME,
                "--jobs", str(self.args.pool_jobs),
            )
        else:
            cmd = python_cmd(
                "pivot.watch", "--root", str(self.root), "--changes", ep.changes, "--parent", str(os.getpid()),
                *(["--poll"] if self.args.poll else []),
            )
        self.logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self.args.keys is not None:  # over tcp with CURVE, they need their keys too
            env["PIVOT_KEYS_DIR"] = str(self.args.keys)
        with open_role_log(self.logs / f"{role}.log") as out:  # a restart keeps the old log
            popen = subprocess.Popen(
                cmd, cwd=self.root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=env,
            )
        self._track(role, Child(popen.pid, popen))

    def _track(self, role: str, child: Child) -> None:
        self.procs[role] = child
        self.started_at[role] = self.service.clock() if self.service else time.monotonic()
        threading.Thread(target=self._reap, args=(role, child), name=f"reap-{role}", daemon=True).start()

    def _reap(self, role: str, child: Child) -> None:
        child.wait()
        self._post("exited", role, child)

    def _watch_owner(self, owner: int) -> None:
        """Wait for the owner's exit (a pidfd is readable once the process is gone)."""
        try:
            fd = os.pidfd_open(owner)
        except OSError:  # already gone
            self._post("owner", "", None)
            return
        try:
            select.select([fd], [], [])
        finally:
            os.close(fd)
        self._post("owner", "", None)

    def _post(self, kind: str, role: str, value: object) -> None:
        self.events.put((kind, role, value))
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.wake_w, b"x")

    # --- in the broker's loop ------------------------------------------------------

    def on_fd(self, fd: int) -> None:
        from broker.events import ShutdownRequested

        assert self.service is not None
        with contextlib.suppress(BlockingIOError):
            os.read(fd, 4096)
        while True:
            try:
                kind, role, value = self.events.get_nowait()
            except queue.Empty:
                return
            if kind == "exited":
                assert isinstance(value, Child)
                self._exited(role, value)
            elif kind == "restart" and not self.stopping:
                self._start(role)
            elif kind == "owner" and not self.stopping:
                log.warning("the `pivot up` that started this engine (pid %d) is gone: stopping", self.args.owner)
                self.service.feed(ShutdownRequested(b"", 0.0, self.service.clock()))

    def _exited(self, role: str, proc: Child) -> None:
        from broker.events import Noticed, PoolGone, ShutdownRequested

        assert self.service is not None
        if self.procs.get(role) is not proc:
            return
        if not kill_group(proc.pid, GRACE_S):  # its workers may outlive a dead pool
            log.error("processes of the %s group %d survived SIGKILL", role, proc.pid)
        rc = proc.returncode
        if role == "pool":
            self.service.feed(PoolGone(POOL_NAME, describe_exit(rc), confirmed=True))
        if self.stopping or self.service.state.stopping:
            return
        what = "worker pool" if role == "pool" else "file watcher"
        decision = self.supervisor.exited(role, what, rc, str(self.logs / f"{role}.log"), self.service.clock())
        if isinstance(decision, GiveUp):
            log.error("%s", decision.message)
            self.service.feed(ShutdownRequested(b"", 0.0, self.service.clock(), decision.message))
            return
        log.warning("%s", decision.message)
        self.service.feed(Noticed(decision.message))
        delay = max(0.0, decision.at - self.service.clock())
        timer = threading.Timer(delay, self._post, args=("restart", role, None))
        timer.daemon = True
        self.timers = [t for t in self.timers if t.is_alive()] + [timer]
        timer.start()

    def _published(self, msg: Message) -> None:
        """The broker gave up a pool whose process lives (no heartbeat: hung, stopped):
        its group goes first, so that no attempt of its stages outlives it; the reaper
        then sees the exit and it is restarted."""
        from pivot.protocol.messages import PoolLost

        if isinstance(msg, PoolLost) and msg.pool == POOL_NAME:
            proc = self.procs.get("pool")
            if proc is not None and proc.running():
                log.warning("the broker lost the pool %d while it was alive: killing its group", proc.pid)
                kill_group(proc.pid, GRACE_S)


def _stop_group(proc: Child, what: str, *, terminate: bool) -> None:
    """Wait for a process started in its own session (SIGTERM first with `terminate`),
    then SIGKILL whatever is left of its group."""
    if proc.running():
        if terminate:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(GRACE_S)
    if not kill_group(proc.pid, GRACE_S):
        log.error("processes of the %s group %d survived SIGKILL", what, proc.pid)
    proc.wait(GRACE_S)
