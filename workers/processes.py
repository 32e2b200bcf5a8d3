"""The pool's own worker processes, each fed through a pipe that the pool's loop polls.

    pool loop --job--> pipe --> worker (pivot/runtime/worker.py `serve`) --outcome--> pipe
                 ^ polls every worker's pipe and exit sentinel beside its socket

Why not loky (which ran them until issue 14): a stage's job went through loky's queue
manager thread and feeder thread, and its result came back through them and a
callback, each hop a GIL handoff in the pool's process: 0.8 ms in and 0.7 ms out per
stage on this machine, against ~0.05 ms for a pipe the loop writes and polls itself
(docs/benchmarks.md, issue 14 fifth session). Only starting a worker blocks (the
forkserver may still be importing the pipeline's libraries): a thread does that and
wakes the loop through `wake`.

A worker holds up to PREFETCH stages: the one it runs and the next, already in its pipe,
which it starts as soon as it sends the outcome before it, without waiting for the
pool's loop to read that and send another (on two cores the loop is often not running
then: cold 1000-stage runs 12 % faster). Only once every worker exists: a stage is not
queued behind another while a worker that could run it is starting. A stage's
`on_start` is called when its worker begins it, not when it is queued: its pool says
"running" then.

What a death means is loky's rule, which the pool's bookkeeping is built on: when a
worker dies running a stage, every stage in flight fails with `BrokenExecutor` (the
pool charges the one whose worker is dead and hands the others back as lost), and the
executor refuses work until the pool replaces its workers. A worker that dies idle (the
idle timeout, a kill) is simply gone: the next stage starts another.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pickle
import queue
import select
import signal
import threading
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pivot.runtime.cancel import request_cancel
from pivot.runtime.command import kill_group_of
from pivot.runtime.job import RESUME, StageJob, StageOutcome
from workers.executors import discard_if_died

__all__ = ["WorkerProcesses"]

log = logging.getLogger(__name__)

IDLE_EXIT_S = 3600.0  # a worker idle this long exits (its imports' memory goes with it)
REAP_S = 2.0  # a killed worker is reaped within this (its pid must be dead when judged)
PREFETCH = 2  # stages a worker holds: the one it runs, and the next


@dataclass(eq=False)
class _Sent:
    stage: str
    future: Future[StageOutcome]
    on_start: Callable[[], None] | None


@dataclass(eq=False)
class _Worker:
    proc: Any  # multiprocessing's process object (forkserver or spawn)
    conn: Connection  # the pool's end of its pipe
    # The stages sent to it, in order: the first runs (none: it is idle).
    sent: collections.deque[_Sent] = field(default_factory=collections.deque)
    paused: bool = False  # a stage of it failed: the next waits for `resume`
    abandoned: bool = False  # its stages were failed (a death beside it): it may still run one


def _exit_description(code: int | None) -> str:
    if code is None:
        return "it exited"
    if code < 0:
        try:
            return f"it was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"it was killed by signal {-code}"
    return f"it exited with status {code}"


def _fail(future: Future[StageOutcome], why: str) -> None:
    if not future.done():
        future.set_exception(BrokenExecutor(why))


class WorkerProcesses:
    """Up to `jobs` worker processes, started when a stage first must run, forked from
    the preloading server (pivot/runtime/preload.py) when there is one. The pool's loop
    calls `collect` with the descriptors of `waitables` that are ready: results are
    set on the futures there, in the loop's own thread."""

    remote = False
    prefetch = PREFETCH

    def __init__(self, jobs: int) -> None:
        self.jobs = max(1, jobs)
        self.generation = 0
        self._preload: tuple[str, ...] = ()
        self._preload_key = ""
        self._workers: list[_Worker] = []
        self._starting = 0
        self._pending: collections.deque[tuple[StageJob, _Sent]] = collections.deque()
        self._started: queue.SimpleQueue[tuple[tuple[str, int], _Worker | BaseException]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._broken: str | None = None
        self._closed = False  # (under `_lock`): a start thread must not write to a closed pipe
        self._lock = threading.Lock()
        # Killed while idle: no stage waits for their end, reaped when the loop sees it.
        self._dying: list[_Worker] = []
        # Spares (`keep_spares`): forked, never given a stage, so no project code in them;
        # a code change's first stages start in them instead of waiting for a fork.
        self.spares_wanted = 0
        self._spares: list[_Worker] = []
        self._spares_starting = 0
        self._spare_epoch = 0  # spares forked before a change of the server's modules go

    def configure(self, preload: tuple[str, ...], preload_key: str) -> None:
        if (preload, preload_key) != (self._preload, self._preload_key):
            # The server is restarted for the new modules (preload.worker_context), and a
            # worker's exit status comes through the server it was forked from.
            self._drop_spares()
        self._preload, self._preload_key = preload, preload_key

    def keep_spares(self, count: int) -> None:
        """Keep `count` spare workers forked while the pool is idle (a live engine: its
        next code change replaces every worker)."""
        self.spares_wanted = max(0, count)
        if not self.spares_wanted:
            self._drop_spares()

    def _drop_spares(self) -> None:
        self._spare_epoch += 1
        spares, self._spares = self._spares, []
        self._kill(spares)

    @property
    def started(self) -> bool:
        return bool(self._workers) or self._starting > 0

    @property
    def spare_pids(self) -> tuple[int, ...]:
        return tuple(w.proc.pid for w in self._spares)

    # --- the loop's side -------------------------------------------------------------

    def waitables(self) -> list[int]:
        fds = [self._wake_r]
        for w in self._workers:
            fds += (w.conn.fileno(), w.proc.sentinel)
        fds += [w.proc.sentinel for w in (*self._spares, *self._dying)]
        return fds

    def collect(self, ready: set[int]) -> None:
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
            self._take_started()
        for w in list(self._workers):
            if w.conn.fileno() in ready or w.proc.sentinel in ready:
                self._read(w, ready)
        for group in (self._spares, self._dying):  # (a spare that died: its idle timeout)
            for w in [w for w in group if w.proc.sentinel in ready]:
                group.remove(w)
                _reap(w)
        self._dispatch()
        self._top_up()

    def submit(self, job: StageJob, on_start: Callable[[], None] | None = None) -> Future[StageOutcome]:
        if self._broken is not None:
            # A worker died in a stage: no new work until the pool replaced them all
            # (it judges which stage's worker died first).
            self.replace()
        future: Future[StageOutcome] = Future()
        future.set_running_or_notify_cancel()
        if job.pid_file:
            # Added before the pool's own callback, so it runs first: the outputs are
            # clean before the pool reports the attempt (and the broker runs it again).
            future.add_done_callback(lambda f: discard_if_died(job, f))
        self._pending.append((job, _Sent(job.stage, future, on_start)))
        self._dispatch()
        return future

    def _dispatch(self) -> None:
        self._dispatch_to_workers()
        missing = min(len(self._pending), self.jobs - len(self._workers)) - self._starting
        if missing > 0 and self._spares:  # a spare is a worker at once
            while missing > 0 and self._spares:
                self._workers.append(self._spares.pop())
                missing -= 1
            self._dispatch_to_workers()
            missing = min(len(self._pending), self.jobs - len(self._workers)) - self._starting
        for _ in range(max(0, missing)):
            self._start_one()

    def _dispatch_to_workers(self) -> None:
        # Idle workers first; queued behind a running stage only when every worker exists.
        depth = PREFETCH if len(self._workers) == self.jobs else 1
        for held in range(depth):
            for w in self._workers:
                if not self._pending:
                    return
                if len(w.sent) == held:
                    self._send(w)

    def _top_up(self) -> None:
        """Fork the spares wanted, one at a time, only while nothing runs or waits (a
        fork is never in the way of a stage), and from the server the workers came
        from: one whose modules changed is restarted only when workers are replaced."""
        from pivot.runtime.preload import serves

        idle = not self._pending and not self._starting and all(not w.sent for w in self._workers)
        wanted = self._spares_starting == 0 and len(self._spares) < self.spares_wanted and not self._closed
        if idle and wanted and (serves(self._preload, self._preload_key) or not self._workers):
            self._start_one(spare=True)

    def _send(self, w: _Worker) -> None:
        job, sent = self._pending.popleft()
        try:
            # (pickle's own: multiprocessing's ForkingPickler builds a pickler a call)
            w.conn.send_bytes(pickle.dumps(job, pickle.HIGHEST_PROTOCOL))
        except (OSError, ValueError) as exc:  # its worker died this instant
            self._pending.appendleft((job, sent))
            log.info("worker %s gone before its stage was sent: %s", w.proc.pid, exc)
            return  # its sentinel says so at the next poll
        w.sent.append(sent)
        if len(w.sent) == 1 and not w.paused and sent.on_start is not None:
            sent.on_start()

    def start(self, count: int) -> None:
        for _ in range(min(count, self.jobs) - len(self._workers) - self._starting):
            self._start_one()

    def resume(self) -> None:
        """Workers that stopped after a stage that failed go on (serve's RESUME)."""
        for w in self._workers:
            if not w.paused:
                continue
            try:
                w.conn.send(RESUME)
            except (OSError, ValueError):
                continue  # it died: its sentinel says so
            w.paused = False
            if w.sent and (on_start := w.sent[0].on_start) is not None:
                on_start()

    def _start_one(self, *, spare: bool = False) -> None:
        from pivot.runtime.preload import worker_context

        context = worker_context(self._preload, self._preload_key)
        if context is None:
            import multiprocessing

            context = multiprocessing.get_context("spawn")
        if spare:
            self._spares_starting += 1
            tag = ("spare", self._spare_epoch)
        else:
            self._starting += 1
            tag = ("worker", self.generation)

        def start() -> None:
            from pivot.runtime.worker import serve

            try:
                ours, theirs = context.Pipe(duplex=True)
                proc = context.Process(target=serve, args=(theirs, IDLE_EXIT_S), name="pivot-worker")
                proc.start()
                theirs.close()
                started: _Worker | BaseException = _Worker(proc, ours)
            except BaseException as exc:  # (a forkserver that cannot start, fds exhausted)
                started = exc
            with self._lock:
                if self._closed:  # the pool is exiting: a worker started now has no use
                    if isinstance(started, _Worker):
                        _signal_kill(started)
                        _reap(started)
                    return
                self._started.put((tag, started))
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"s")

        threading.Thread(target=start, name="worker-start", daemon=True).start()

    def _take_started(self) -> None:
        while True:
            try:
                (kind, epoch), started = self._started.get_nowait()
            except queue.Empty:
                return
            if kind == "spare":
                self._take_spare(epoch, started)
                continue
            if epoch != self.generation:  # started for workers replaced since
                if isinstance(started, _Worker):
                    self._kill([started])
                continue
            self._starting -= 1
            if isinstance(started, BaseException):
                why = f"could not start a worker process: {type(started).__name__}: {started}"
                log.error("%s", why)
                if not self._workers and not self._starting:
                    while self._pending:  # failed, not lost: it would only fail again
                        self._pending.popleft()[1].future.set_exception(RuntimeError(why))
                continue
            self._workers.append(started)

    def _take_spare(self, epoch: int, started: _Worker | BaseException) -> None:
        self._spares_starting -= 1
        if isinstance(started, BaseException):
            log.warning("could not start a spare worker: %s: %s", type(started).__name__, started)
            self.spares_wanted = 0  # workers start when stages need them, as without spares
        elif epoch != self._spare_epoch:  # forked before the server's modules changed
            self._kill([started])
        else:
            self._spares.append(started)

    def _read(self, w: _Worker, ready: set[int]) -> None:
        """Its results, then its death if it died. (select on the one descriptor: the
        Connection's own poll builds a selector each call, ~30 us.)"""
        gone = False
        fd = w.conn.fileno()
        readable = fd in ready
        try:
            while readable or select.select([fd], [], [], 0)[0]:
                readable = False
                ok, value = w.conn.recv()
                if not w.sent:
                    continue
                future = w.sent.popleft().future
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
                w.paused = not ok or value.status == "failed"  # as `serve` does
                if w.sent and not w.paused and (on_start := w.sent[0].on_start) is not None:
                    on_start()  # it began the next one as it sent this outcome
        except (EOFError, OSError):
            gone = True  # it died (after its last result, if it sent one)
        if (gone or w.proc.sentinel in ready) and not w.proc.is_alive():
            self._died(w)

    def _died(self, w: _Worker) -> None:
        w.proc.join(REAP_S)  # reaped: its pid no longer passes for alive when judged
        self._workers.remove(w)
        w.conn.close()
        how = _exit_description(w.proc.exitcode)
        if not w.sent:
            log.info("worker %s ended while idle: %s", w.proc.pid, how)
            return
        log.warning("worker %s died running stage %s: %s", w.proc.pid, w.sent[0].stage, how)
        self._broken = how
        while w.sent:
            _fail(w.sent.popleft().future, how)
        self._fail_all(f"worker {w.proc.pid} died: {how}")

    def _fail_all(self, why: str) -> None:
        """Every stage in flight or waiting for a worker fails (`BrokenExecutor`)."""
        for w in self._workers:
            w.abandoned = w.abandoned or bool(w.sent)
            while w.sent:
                _fail(w.sent.popleft().future, why)
        while self._pending:
            _fail(self._pending.popleft()[1].future, why)

    # --- stopping ---------------------------------------------------------------------

    def replace(self) -> None:
        """Kill every worker now; the stages they ran, or that waited for one, fail
        (`BrokenExecutor`) once their processes are gone. The next `submit` starts
        fresh workers."""
        workers = self._workers
        self._broken = None
        self._starting = 0
        self.generation += 1
        self._kill(workers)
        self._fail_all("its worker was stopped")
        self._workers = []

    def _kill(self, workers: list[_Worker]) -> None:
        """SIGKILL each; wait for the end of those given stages (no attempt of theirs may
        outlive this); the idle ones are reaped when the loop sees them gone (a fork of a
        server holding scikit-learn takes 5-9 ms to end: on the way to a code change's
        first stage)."""
        for w in workers:
            _signal_kill(w)
        for w in workers:
            if w.sent or w.abandoned:
                _reap(w)
            else:
                self._dying.append(w)

    def cancel(self, pid_file: Path) -> int:
        return request_cancel(pid_file)

    def kill(self, pid_file: Path, handle: int, why: str) -> None:
        # Stuck in native code: its worker goes (the stages beside it are lost and run
        # again), and the attempt is reported cancelled, not a death.
        with contextlib.suppress(ProcessLookupError):
            os.kill(handle, signal.SIGKILL)
        kill_group_of(pid_file)  # a command stage's processes go with its worker

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.replace()
        self._drop_spares()
        dying, self._dying = self._dying, []
        for w in dying:
            _reap(w)
        os.close(self._wake_r)
        os.close(self._wake_w)


def _signal_kill(w: _Worker) -> None:
    with contextlib.suppress(ProcessLookupError):
        if w.proc.pid:
            os.kill(w.proc.pid, signal.SIGKILL)


def _reap(w: _Worker) -> None:
    w.proc.join(REAP_S)
    w.conn.close()
