"""One engine for one `pivot repro`: the broker in a thread of this process, a pool process.

This is the one-shot shortcut (measured in docs/benchmarks.md): `pivot up` runs the
broker as a process of its own (`python -P -m broker`), which supervises its pool and
watcher; both use the same broker and pool code.

The pool runs in its own session (process group) so that Ctrl-C reaches only us, and so
that one killpg stops the pool, its loader and its workers together: nothing is
left behind, whatever path the run took.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

    import zmq

    from broker.service import BrokerService
    from pivot.cli.settled import Settled
    from pivot.display.client import EngineClient
    from pivot.launch.spawn import Forked
    from pivot.pipeline.graph import StageGraph
    from pivot.pipeline.manifest import Manifest
from pivot.errors import InfraError
from pivot.launch import python_cmd
from pivot.launch.procs import kill_group
from pivot.launch.scratch import open_role_log
from pivot.pipeline.project import pivot_dir
from pivot.transport.rundir import Endpoints, RunDir

__all__ = ["Stack"]

log = logging.getLogger(__name__)

POOL_NAME = "pool-1"
GRACE_S = 3.0
POOL_EXIT_GRACE_S = 2.0  # after the pool exits: time for the broker's pool_lost to show


class Stack:
    """Context manager: binds the broker, starts the pool, and always cleans both up."""

    one_shot = True  # its only pool lost: the run ends (nothing replaces it)

    def __init__(self, root: Path, jobs: int, settle: Callable[[], Settled] | None = None) -> None:
        self.root = root
        self.jobs = jobs
        # Tried before anything starts: the run's exit code when it had nothing to do
        # (pivot/cli/settled.py), else the pipeline it loaded, for the pool.
        self.settle = settle
        self.settled: int | None = None
        self.grace_s = 0.0  # `repro` stops its engine once its wave is over: nothing runs
        self.rundir = RunDir(root)
        self.ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self.broker: BrokerService | None = None  # imported after the pool is spawned
        self.thread: threading.Thread | None = None
        self.pool: subprocess.Popen[bytes] | Forked | None = None
        self.pool_log = pivot_dir(root) / "logs" / "pool.log"
        self.endpoints: Endpoints
        self.client: EngineClient | None = None
        self.pool_died_at: float | None = None

    def __enter__(self) -> Stack:
        try:
            endpoints = self.rundir.acquire("repro")
            self.endpoints = endpoints
            handed: Manifest | None = None
            graph: StageGraph | None = None
            planned: tuple[tuple[str, ...], tuple[str, ...]] | None = None
            stale = 0
            if self.settle is not None:
                outcome = self.settle()
                if outcome.code is not None:
                    self.settled = outcome.code
                    return self
                handed, graph, planned = outcome.manifest, outcome.graph, outcome.planned
                stale = outcome.stale
            # The pool starts before this process even imports ZeroMQ: its interpreter
            # then starts while we import the broker and display code. It connects before
            # the broker binds; ZeroMQ retries the connect.
            token = self._start_pool(endpoints.work, handed, stale, planned is not None)
            import zmq

            from broker.service import BrokerService
            from broker.state import BrokerState
            from pivot.display.client import EngineClient
            from pivot.launch.logsetup import configure

            configure("engine", self.root)  # the broker thread and the CLI
            self.ctx = zmq.Context()
            self.broker = BrokerService(self.root, endpoints, self.ctx, state=BrokerState())
            if token and handed is not None:  # the pool names it rather than send it back
                self.broker.handed[token] = (handed, graph)
            self.broker.planned = planned  # (its first wave's, as settled here)
            self.broker.bind()
            self.thread = threading.Thread(target=self.broker.run, name="broker", daemon=True)
            self.thread.start()
            self.client = EngineClient(self.ctx, self.broker.local_endpoints(), "cli")
        except BaseException:
            self._close()
            raise
        return self

    def _start_pool(
        self, work_endpoint: str, manifest: Manifest | None = None, stale: int = 0, planned: bool = False,
    ) -> str:
        """Start the pool; returns the token its forked pool names `manifest` by ("": not
        forked, it sends the manifest it loads or reads)."""
        self.pool_log.parent.mkdir(parents=True, exist_ok=True)
        argv = ["--root", str(self.root), "--work", work_endpoint, "--name", POOL_NAME, "--jobs", str(self.jobs),
                "--one-shot"]
        if stale:  # its workers start beside its hello and the wave's plan, not after
            argv += ["--start-workers", str(stale)]
        if planned:  # its broker has the first wave's plan: no locks to read ahead for it
            argv.append("--planned")
        with open_role_log(self.pool_log) as out:
            if manifest is not None and _can_fork():
                # Forked, holding the pipeline loaded here (workers/launch.py `forked_pool`).
                from pivot.launch.spawn import Forked
                from workers.launch import forked_pool

                token = os.urandom(8).hex()
                forked = Forked(forked_pool, ([*argv, "--handed", token], manifest, out.fileno(), str(self.root)))
                forked.start()
                self.pool = forked
                return token
            if manifest is not None:  # loaded here already: the pool reads it instead
                from pivot.launch.spawn import write_manifest

                argv += ["--manifest", str(write_manifest(manifest))]
            import subprocess  # (where used: a run with nothing to do starts no pool)

            self.pool = subprocess.Popen(
                python_cmd("workers", *argv),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            return ""

    def check(self) -> None:
        """Raise InfraError when the engine broke: the broker thread died, or the pool
        exited (its group is killed and the broker told at once, so its stages are
        reported lost; then the run ends with the pool's log)."""
        if self.thread is None or not self.thread.is_alive():
            raise InfraError("the broker stopped unexpectedly; run again with -v for details")
        if self.pool is None:
            return
        if self.pool_died_at is None:
            rc = self.pool.poll()
            if rc is None:
                return
            self.pool_died_at = time.monotonic()
            self._kill_pool_group()  # its workers may outlive it
            from pivot.protocol.messages import PoolExited
            from pivot.transport.sockets import send_msg

            assert self.client is not None
            send_msg(self.client.control, PoolExited(POOL_NAME, rc), sender="cli")
        elif time.monotonic() - self.pool_died_at > POOL_EXIT_GRACE_S:
            raise InfraError(
                f"the worker pool exited (code {self.pool.returncode}) before the run "
                f"finished; its log {self.pool_log}:\n{self._pool_log_tail()}"
            )

    def _pool_log_tail(self, lines: int = 15) -> str:
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

    def _close(self, graceful: bool = False) -> None:
        if graceful and self.pool is not None and self.pool.poll() is None and self.client:
            # Even a third Ctrl-C must not skip the clean-up below.
            with contextlib.suppress(Exception, KeyboardInterrupt):
                self._shutdown_engine(self.client)
                self.pool.wait(GRACE_S)
        if self.pool is not None:
            _stop_group(self.pool, "pool")
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
        """Ask the broker to stop the pool (`repro` comes here once its wave is over);
        Ctrl-C or SIGTERM meanwhile cuts the wait short."""
        from pivot.launch.limits import HARD_KILL_S

        try:
            with _interruptible_by_sigterm():
                client.shutdown(timeout=HARD_KILL_S + GRACE_S, grace_s=0.0)
        except KeyboardInterrupt:
            client.shutdown(timeout=HARD_KILL_S + GRACE_S, grace_s=0.0)

    def _kill_pool_group(self) -> None:
        """SIGKILL whatever is left in the pool's process group (workers, loader)."""
        assert self.pool is not None
        if not kill_group(self.pool.pid, GRACE_S):
            log.error("processes of the pool group %d survived SIGKILL", self.pool.pid)


def _can_fork() -> bool:
    """Whether the pool may be forked from this process: a single thread (a fork copies
    no other, and a lock one of them held would stay held) and ZeroMQ not started, on a
    system with pidfds (pivot/launch/spawn.py `Forked`). `PIVOT_PRELOAD=0` starts fresh
    interpreters, as for the workers and loaders (pivot/runtime/preload.py)."""
    from pivot.launch.spawn import has_pidfds
    from pivot.runtime.preload import enabled

    return enabled() and threading.active_count() == 1 and "zmq" not in sys.modules and has_pidfds()


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


def _stop_group(proc: subprocess.Popen[bytes] | Forked, what: str) -> None:
    """SIGTERM a process started in its own session, wait, then SIGKILL whatever is left
    of its group (workers, a loader). The signal goes to the process alone: a pool
    cancels its stages first (each removes what it half wrote; one stuck in native code is
    killed after HARD_KILL_S), which a SIGTERM to its whole group would cut short. Another
    Ctrl-C meanwhile: kill now."""
    import subprocess

    from pivot.launch.limits import HARD_KILL_S

    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired, KeyboardInterrupt):
            proc.wait(HARD_KILL_S + GRACE_S)
    if not kill_group(proc.pid, GRACE_S):
        log.error("processes of the %s group %d survived SIGKILL", what, proc.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(GRACE_S)  # reap it
