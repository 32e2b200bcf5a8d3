"""One engine for one command: the broker in a thread of this process, a pool process.

The pool runs in its own session (process group) so that Ctrl-C reaches only us, and so
that one killpg stops the pool, its loader and its loky workers together: nothing is
left behind, whatever path the run took.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import zmq

    from broker.service import BrokerService
    from broker.state import LiveOptions
    from pivot.display.client import EngineClient
from pivot.pipeline.project import pivot_dir
from pivot.runtime.procs import kill_group
from pivot.runtime.spawn import python_cmd
from pivot.transport.rundir import Endpoints, RunDir

__all__ = ["Stack"]

log = logging.getLogger(__name__)

POOL_NAME = "pool-1"
GRACE_S = 3.0


class Stack:
    """Context manager: binds the broker, starts the pool, and always cleans both up."""

    def __init__(
        self, root: Path, jobs: int, live: LiveOptions | None = None, poll: bool = False,
        grace_s: float = 0.0,
    ) -> None:
        self.root = root
        self.jobs = jobs
        self.grace_s = grace_s  # on a normal stop, how long running stages may finish
        self.live = live  # set: `pivot up` (a watcher, and the broker reacts to changes)
        self.poll = poll
        self.watcher: subprocess.Popen[bytes] | None = None
        self.watcher_log = pivot_dir(root) / "logs" / "watcher.log"
        self.rundir = RunDir(root)
        self.ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self.broker: BrokerService | None = None  # imported after the pool is spawned
        self.thread: threading.Thread | None = None
        self.pool: subprocess.Popen[bytes] | None = None
        self.pool_log = pivot_dir(root) / "logs" / "pool.log"
        self.endpoints: Endpoints
        self.client: EngineClient | None = None
        self.pool_reported = False

    def __enter__(self) -> Stack:
        try:
            endpoints = self.rundir.acquire("up" if self.live is not None else "repro")
            self.endpoints = endpoints
            # The pool starts first, before this process even imports ZeroMQ: the pool's
            # interpreter and its loader then run while we import the broker and display
            # code. The pool connects before the broker binds; ZeroMQ retries the connect.
            self._start_pool(endpoints.work)
            import zmq

            from broker.service import BrokerService
            from broker.state import BrokerState
            from pivot.display.client import EngineClient
            from pivot.runtime.logsetup import configure

            configure("engine", self.root)  # the broker thread and the CLI
            self.ctx = zmq.Context()
            state = BrokerState(live=self.live)
            self.broker = BrokerService(self.root, endpoints, self.ctx, state=state)
            self.broker.bind()
            if self.live is not None:
                self._start_watcher(endpoints.changes)
            self.thread = threading.Thread(target=self.broker.run, name="broker", daemon=True)
            self.thread.start()
            self.client = EngineClient(self.ctx, endpoints, "cli")
        except BaseException:
            self._close()
            raise
        return self

    def _start_pool(self, work_endpoint: str) -> None:
        self.pool_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.pool_log, "ab") as out:  # a restarted pool keeps its predecessor's log
            self.pool = subprocess.Popen(
                python_cmd(
                    "workers", "--root", str(self.root), "--work", work_endpoint,
                    "--name", POOL_NAME, "--jobs", str(self.jobs),
                ),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _start_watcher(self, changes_endpoint: str) -> None:
        args = ["--root", str(self.root), "--changes", changes_endpoint]
        with open(self.watcher_log, "ab") as out:
            self.watcher = subprocess.Popen(
                python_cmd("pivot.watch", *args, *(["--poll"] if self.poll else [])),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def watcher_exit(self) -> int | None:
        return self.watcher.poll() if self.watcher is not None else None

    def restart_pool(self) -> None:
        """Start a new pool under the same name (the dead one's group is already killed:
        `pool_exit` does that before the broker re-queues its stages)."""
        self.pool_reported = False
        self._start_pool(self.endpoints.work)

    def restart_watcher(self) -> None:
        self._stop_watcher()  # the dead watcher: whatever is left of its group goes too
        self._start_watcher(self.endpoints.changes)

    def pool_exit(self) -> int | None:
        """The pool's exit code the first time it is seen dead (reported to the broker)."""
        if self.pool is None or self.pool_reported:
            return None
        rc = self.pool.poll()
        if rc is None:
            return None
        self.pool_reported = True
        self._kill_pool_group()  # its loky workers may outlive it
        from pivot.protocol.messages import PoolExited
        from pivot.transport.sockets import send_msg

        assert self.client is not None
        send_msg(self.client.control, PoolExited(POOL_NAME, rc), sender="cli")
        return rc

    def kill_lost_pool(self) -> None:
        """The broker gave the pool up (no heartbeat: hung, or stopped with SIGSTOP) and
        will dispatch its stages again: its group goes first, so that an attempt of a
        stage never outlives it. `pool_exit` then sees the exit and it is restarted."""
        if self.pool is not None and self.pool.poll() is None:
            log.warning("the broker lost the pool %d while it was alive: killing its group", self.pool.pid)
            self._kill_pool_group()

    def broker_alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def pool_log_tail(self, lines: int = 15) -> str:
        try:
            text = self.pool_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        graceful = exc_type is None
        self._close(graceful)

    # --- shutdown ------------------------------------------------------------------

    def _stop_watcher(self) -> None:
        if self.watcher is not None:
            _stop_group(self.watcher, "watcher")

    def _close(self, graceful: bool = False) -> None:
        self._stop_watcher()
        if graceful and self.pool is not None and self.pool.poll() is None and self.client:
            # Even a third Ctrl-C must not skip the clean-up below.
            with contextlib.suppress(Exception, KeyboardInterrupt):
                self._shutdown_engine(self.client)
                self.pool.wait(GRACE_S)
        self._stop_pool()
        if self.client is not None:
            self.client.close()
        if self.broker is not None:
            self.broker.stop()
        if self.thread is not None:
            self.thread.join(GRACE_S)
            if self.thread.is_alive():
                log.error("the broker thread did not stop within %.0f s", GRACE_S)
        if self.ctx is not None:
            self.ctx.destroy(linger=0)
        self.rundir.release()

    def _shutdown_engine(self, client: EngineClient) -> None:
        """Ask the broker to stop: stages running get the grace period to finish, then
        are cancelled. Ctrl-C or SIGTERM meanwhile cancels them at once.

        Normally nothing runs by now: `pivot up`'s display has already stopped the
        engine (and told the user about the grace period, follow.StopRequests), and
        `repro` comes here once its wave is over."""
        from pivot.runtime.cancel import HARD_KILL_S

        try:
            with _interruptible_by_sigterm():
                client.shutdown(timeout=self.grace_s + HARD_KILL_S + GRACE_S, grace_s=self.grace_s)
        except KeyboardInterrupt:
            client.shutdown(timeout=HARD_KILL_S + GRACE_S, grace_s=0.0)

    def _stop_pool(self) -> None:
        if self.pool is not None:
            _stop_group(self.pool, "pool")

    def _kill_pool_group(self) -> None:
        """SIGKILL whatever is left in the pool's process group (loky workers, loader)."""
        assert self.pool is not None
        if not kill_group(self.pool.pid, GRACE_S):
            log.error("processes of the pool group %d survived SIGKILL", self.pool.pid)


@contextlib.contextmanager
def _interruptible_by_sigterm() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt meanwhile (the first one already asked for the
    stop this waits for; another one means: now)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_group(proc: subprocess.Popen[bytes], what: str) -> None:
    """SIGTERM a process started in its own session, wait a grace period, then SIGKILL
    whatever is left of its group (loky workers, a loader)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(GRACE_S)
    if not kill_group(proc.pid, GRACE_S):
        log.error("processes of the %s group %d survived SIGKILL", what, proc.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(GRACE_S)  # reap it
