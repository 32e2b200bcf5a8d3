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
each of which it starts as soon as it sends the outcome before it, without waiting for the
pool's loop to read that and send another (on two cores the loop is often not running
then: cold 1000-stage runs 12 % faster). Only once every worker exists: a stage is not
queued behind another while a worker that could run it is starting. A stage's
`on_start` is called when its worker begins it, not when it is queued: its pool says
"running" then. Stages queued behind one that has run WITHDRAW_AFTER_S while another
worker is idle are taken back before they begin and given to that one (`rebalance`,
pivot/runtime/claim.py): a short stage queued behind a long one would wait for it.

What a death means is loky's rule, which the pool's bookkeeping is built on: when a
worker dies running a stage, every stage in flight fails with `BrokenExecutor` (the
pool charges the one whose worker is dead and hands the others back as lost), and the
executor refuses work until the pool replaces its workers. A worker that dies idle (the
idle timeout, a kill) is simply gone: the next stage starts another.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import os
import pickle
import queue
import select
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pivot.runtime.cancel import request_cancel
from pivot.runtime.claim import JobClaims
from pivot.runtime.command import kill_group_of
from pivot.runtime.job import RESUME, ChainLink, LinkBegan, StageJob, StageOutcome, paused_after
from workers.executors import discard_if_died

__all__ = ["WorkerProcesses"]

log = logging.getLogger(__name__)
_CLAIMS = itertools.count(1)

IDLE_EXIT_S = 3600.0  # a worker idle this long exits (its imports' memory goes with it)
REAP_S = 2.0  # a killed worker is reaped within this (its pid must be dead when judged)
# Stages a worker holds: the one it runs and two more. Three rather than two: a cold
# layered run of 10,000 stages 7.46 -> 7.09 s, of 1000 0.90 -> 0.86 s; chains, which take
# links instead, unchanged (docs/benchmarks.md, twenty-first session).
PREFETCH = 3
# A stage queued behind one that has run this long moves to a worker gone idle: the most
# a short stage waits behind a long one with a core free (a small stage's run never does).
WITHDRAW_AFTER_S = 0.02


@dataclass(eq=False)
class _Sent:
    stage: str
    future: Future[StageOutcome]
    on_start: Callable[[], None] | None
    pid_file: str = ""
    on_began: Callable[[LinkBegan], None] | None = None  # (a chain link) its worker runs it
    work: StageJob | ChainLink | None = None  # what was sent (again, if it moves)
    number: int = 0  # in its worker's sequence (pivot/runtime/claim.py)


@dataclass(eq=False)
class _Worker:
    proc: Any  # multiprocessing's process object (forkserver or spawn)
    conn: Connection  # the pool's end of its pipe
    # The stages sent to it, in order: the first runs (none: it is idle).
    sent: collections.deque[_Sent] = field(default_factory=collections.deque)
    paused: bool = False  # a stage of it failed: the next waits for `resume`
    # Stages sent and not answered yet, as the worker sees them: `sent` is emptied when
    # their futures fail (a death beside them) while the worker may still run one.
    unanswered: int = 0
    claims: JobClaims | None = None  # which of those queued it may still begin
    numbered: int = 0  # the last number given to a job sent to it
    began_at: float = 0.0  # when it began its first `sent`, as the loop saw it


def _exit_description(code: int | None) -> str:
    if code is None:
        return "it exited"
    if code < 0:
        try:
            return f"it was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"it was killed by signal {-code}"
    return f"it exited with status {code}"


def _drop_claims(w: _Worker) -> None:
    if w.claims is not None:
        w.claims.close(remove=True)
        w.claims = None


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
    # Where each worker's claims file goes (pivot/runtime/claim.py); None: its queued
    # stages never move to another worker.
    claims_folder: str | None = None

    def __init__(self, jobs: int) -> None:
        self.jobs = max(1, jobs)
        self.generation = 0
        self._generations = 0  # the last generation numbered (`_new_generation`)
        self._preload: tuple[str, ...] = ()
        self._preload_key = ""
        self._workers: list[_Worker] = []
        # Workers of replaced code finishing a stage the new code left as it was
        # (`replace(keep=...)`): read until it ends, then killed; never given another.
        self._retiring: list[_Worker] = []
        self._starting = 0
        self._pending: collections.deque[tuple[StageJob, _Sent]] = collections.deque()
        self._started: queue.SimpleQueue[tuple[int, _Worker | BaseException]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._broken: str | None = None
        self._dying: list[Any] = []  # idle workers killed, until their server says they are gone
        self._closed = False  # (under `_lock`): a start thread must not write to a closed pipe
        self._lock = threading.Lock()
        # A worker of the code being loaded (`prepare`), its generation, and whether it
        # is still starting: the next `replace(adopt=True)` makes it the first worker.
        self._next: list[_Worker] = []
        self._next_generation: int | None = None
        self._next_starting = 0
        self._next_key = ""  # the preload key of the server it came from

    def _new_generation(self) -> int:
        self._generations += 1
        return self._generations

    def configure(self, preload: tuple[str, ...], preload_key: str) -> None:
        self._preload, self._preload_key = preload, preload_key

    @property
    def started(self) -> bool:
        return bool(self._workers) or self._starting > 0 or bool(self._next) or self._next_starting > 0

    # --- the loop's side -------------------------------------------------------------

    def waitables(self) -> list[int]:
        fds = [self._wake_r]
        for w in (*self._workers, *self._retiring):
            fds += (w.conn.fileno(), w.proc.sentinel)
        fds += (proc.sentinel for proc in self._dying)
        return fds

    def collect(self, ready: set[int]) -> None:
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
            self._take_started()
        if self._dying:
            self._forget_dead()
        for w in list(self._workers):
            if w.conn.fileno() in ready or w.proc.sentinel in ready:
                self._read(w, ready)
        for w in list(self._retiring):
            if w.conn.fileno() in ready or w.proc.sentinel in ready:
                self._read(w, ready)
            if w in self._retiring and not w.sent and not w.unanswered:
                self._retiring.remove(w)
                self._kill([w])  # its stage done: nothing more runs on the old code
        self._dispatch()

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
        self._pending.append((job, _Sent(job.stage, future, on_start, job.pid_file)))
        self._dispatch()
        return future

    def submit_after(self, link: ChainLink, on_began: Callable[[LinkBegan], None]) -> Future[Any] | None:
        """`link` to the worker whose last job is its upstream's, behind it; None (not
        sent) when no worker's is: its pool decides it the usual way then."""
        if self._broken is not None:
            return None
        w = next((w for w in self._workers if w.sent and w.sent[-1].pid_file == link.upstream), None)
        if w is None or w.paused:
            return None
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        future.add_done_callback(lambda f: discard_if_died(link, f))
        sent = _Sent(link.stage, future, None, link.pid_file, on_began, link)
        if not self._give(w, sent):
            return None
        return future

    def _free(self) -> int:
        """Workers that may begin a stage now: a retiring one's stage counts against
        `jobs` as much as a current worker's."""
        return self.jobs - len(self._retiring) - sum(1 for w in self._workers if w.sent)

    def _dispatch(self) -> None:
        # Idle workers first; queued behind a running stage only when every worker exists.
        depth = PREFETCH if len(self._workers) + len(self._retiring) >= self.jobs else 1
        free = self._free()
        for held in range(depth):
            for w in self._workers:
                if not self._pending:
                    return
                if len(w.sent) == held and (held or free > 0):
                    free -= not held
                    self._send(w)
        missing = min(len(self._pending), self.jobs - len(self._workers) - len(self._retiring)) - self._starting
        for _ in range(max(0, missing)):
            self._start_one()

    def _send(self, w: _Worker) -> None:
        job, sent = self._pending.popleft()
        sent.work = job
        if not self._give(w, sent):
            self._pending.appendleft((job, sent))  # its sentinel says it died at the next poll

    def _give(self, w: _Worker, sent: _Sent) -> bool:
        """`sent` to `w`, numbered in its sequence; False if its worker died this instant."""
        number = w.numbered + 1
        try:
            # (pickle's own: multiprocessing's ForkingPickler builds a pickler a call)
            w.conn.send_bytes(pickle.dumps((number, sent.work), pickle.HIGHEST_PROTOCOL))
        except (OSError, ValueError) as exc:
            log.info("worker %s gone before its stage was sent: %s", w.proc.pid, exc)
            return False
        w.numbered = sent.number = number
        w.sent.append(sent)
        w.unanswered += 1
        if len(w.sent) == 1:
            w.began_at = time.monotonic()
            if not w.paused and sent.on_start is not None:
                sent.on_start()
        return True

    def rebalance(self, now: float) -> float | None:
        """Stages queued behind one that has run WITHDRAW_AFTER_S, taken back before their
        worker begins them and given to an idle worker, in order (with the chain links
        among them: each follows its upstream's job). Returns when to look again (None:
        nothing queued that could move)."""
        if self._pending or self._broken is not None:
            return None  # (an idle worker takes what is pending first)
        idle = [w for w in self._workers if not w.sent and not w.paused][: max(0, self._free())]
        if not idle:
            return None
        due: float | None = None
        for w in self._workers:
            if len(w.sent) < 2 or w.paused or w.claims is None or w.sent[1].on_began is not None:
                continue  # (a link first in the queue follows the job its worker runs)
            if now < w.began_at + WITHDRAW_AFTER_S:
                due = min(math.inf if due is None else due, w.began_at + WITHDRAW_AFTER_S)
                continue
            queued = list(w.sent)[1:]
            if not w.claims.withdraw(w.sent[0].number, queued[-1].number):
                continue  # it began the next one (its answer is on its way), or not this one yet
            to = idle.pop()
            log.info("stages %s moved from worker %s, busy with %s for %.0f ms, to idle worker %s",
                     ", ".join(q.stage for q in queued), w.proc.pid, w.sent[0].stage,
                     (now - w.began_at) * 1000, to.proc.pid)
            for _ in queued:
                w.sent.pop()
                w.unanswered -= 1
            for q in queued:
                if not self._give(to, q):
                    to.sent.append(q)  # fails with its worker, which died this instant
            if not idle:
                break
        return due

    def start(self, count: int, root: Path | None = None) -> None:
        for _ in range(min(count, self.jobs) - len(self._workers) - self._starting):
            self._start_one(warm=None if root is None else str(root))

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
            w.began_at = time.monotonic()
            if w.sent and (on_start := w.sent[0].on_start) is not None:
                on_start()

    def prepare(self, root: Path) -> None:
        """Start a worker for the code about to be loaded, beside its loader: it imports
        the pipeline as it starts, and `replace(adopt=True)` (once that code is accepted)
        makes it the first of the new workers, so a code change's first stage waits for
        neither a worker's start nor its import. A worker prepared before is stopped."""
        self._drop_next()
        self._next_generation = self._new_generation()
        self._next_starting = 1
        self._next_key = self._preload_key
        self._start_one(self._next_generation, str(root))

    def _drop_next(self) -> None:
        self._kill(self._next)
        self._next, self._next_generation, self._next_starting = [], None, 0

    def _start_one(self, generation: int | None = None, warm: str | None = None) -> None:
        from pivot.runtime.preload import worker_context

        context = worker_context(self._preload, self._preload_key)
        if context is None:
            import multiprocessing

            context = multiprocessing.get_context("spawn")
        if generation is None:
            self._starting += 1
            generation = self.generation

        def start() -> None:
            from pivot.runtime.worker import serve

            claims = None
            if self.claims_folder is not None:
                try:
                    claims = JobClaims(os.path.join(self.claims_folder, f"claims-{next(_CLAIMS)}"), create=True)
                except OSError as exc:  # its queued stages just never move
                    log.warning("worker claims file not made in %s: %s", self.claims_folder, exc)
            try:
                ours, theirs = context.Pipe(duplex=True)
                proc = context.Process(target=serve, args=(theirs, IDLE_EXIT_S, warm, claims and claims.path),
                                       name="pivot-worker")
                proc.start()
                theirs.close()
                started: _Worker | BaseException = _Worker(proc, ours, claims=claims)
            except BaseException as exc:  # (a forkserver that cannot start, fds exhausted)
                if claims is not None:
                    claims.close(remove=True)
                started = exc
            with self._lock:
                if self._closed:  # the pool is exiting: a worker started now has no use
                    if isinstance(started, _Worker):
                        self._kill([started])
                    return
                self._started.put((generation, started))
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"s")

        threading.Thread(target=start, name="worker-start", daemon=True).start()

    def _take_started(self) -> None:
        while True:
            try:
                generation, started = self._started.get_nowait()
            except queue.Empty:
                return
            if generation == self._next_generation:  # prepared, not adopted yet
                self._next_starting -= 1
                if isinstance(started, BaseException):
                    log.warning("could not start a worker for the code being loaded: %s", started)
                else:
                    self._next.append(started)
                continue
            if generation != self.generation:  # started for workers replaced since
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

    def _read(self, w: _Worker, ready: set[int]) -> None:
        """Its results, then its death if it died. (select on the one descriptor: the
        Connection's own poll builds a selector each call, ~30 us.)"""
        gone = False
        fd = w.conn.fileno()
        readable = fd in ready
        try:
            while readable or select.select([fd], [], [], 0)[0]:
                readable = False
                got = w.conn.recv()
                if isinstance(got, LinkBegan):  # its chain link runs now (its reply follows)
                    if w.sent and (on_began := w.sent[0].on_began) is not None:
                        on_began(got)
                    continue
                ok, value = got
                w.unanswered = max(0, w.unanswered - 1)
                if not w.sent:
                    continue
                future = w.sent.popleft().future
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
                w.paused = paused_after(ok, value)  # as `serve` does
                w.began_at = time.monotonic()
                if w.sent and not w.paused and (on_start := w.sent[0].on_start) is not None:
                    on_start()  # it began the next one as it sent this outcome
        except (EOFError, OSError):
            gone = True  # it died (after its last result, if it sent one)
        if (gone or w.proc.sentinel in ready) and not w.proc.is_alive():
            self._died(w)

    def _died(self, w: _Worker) -> None:
        w.proc.join(REAP_S)  # reaped: its pid no longer passes for alive when judged
        retired = w in self._retiring
        (self._retiring if retired else self._workers).remove(w)
        w.conn.close()
        _drop_claims(w)
        how = _exit_description(w.proc.exitcode)
        if not w.sent:
            log.info("worker %s ended while idle: %s", w.proc.pid, how)
            return
        log.warning("worker %s died running stage %s: %s", w.proc.pid, w.sent[0].stage, how)
        if retired:  # of replaced code: the workers beside it are not its generation
            while w.sent:
                _fail(w.sent.popleft().future, how)
            return
        self._broken = how
        while w.sent:
            _fail(w.sent.popleft().future, how)
        self._fail_all(f"worker {w.proc.pid} died: {how}")

    def _fail_all(self, why: str) -> None:
        """Every stage in flight or waiting for a worker fails (`BrokenExecutor`)."""
        for w in self._workers:
            while w.sent:
                _fail(w.sent.popleft().future, why)
        while self._pending:
            _fail(self._pending.popleft()[1].future, why)

    # --- stopping ---------------------------------------------------------------------

    def replace(self, adopt: bool = False, keep: frozenset[str] = frozenset()) -> None:
        """Kill every worker now; the stages they ran, or that waited for one, fail
        (`BrokenExecutor`) once their processes are gone. The next `submit` starts
        fresh workers; with `adopt`, the worker `prepare` started is the first of them,
        unless the new code's third-party modules are not its server's (an upgraded
        package: its server has the old version imported). A worker running a job of
        `keep` (pid files) finishes it, and only it, and is killed then."""
        workers = []
        for w in self._workers:
            if w.sent and w.sent[0].pid_file in keep and not w.paused:
                self._retire(w)
            else:
                workers.append(w)
        self._workers = workers
        self._broken = None
        self._kill(workers)
        self._fail_all("its worker was stopped")
        if adopt and self._next_key != self._preload_key:
            self._drop_next()
        if adopt and self._next_generation is not None:
            self.generation, self._workers, self._starting = self._next_generation, self._next, self._next_starting
            self._next, self._next_generation, self._next_starting = [], None, 0
        else:
            self.generation, self._workers, self._starting = self._new_generation(), [], 0

    def _retire(self, w: _Worker) -> None:
        """`w` runs its first job to the end, and nothing queued behind it (the pool
        cancelled those; taken back here when its claims allow)."""
        queued = list(w.sent)[1:]
        if queued and w.claims is not None and w.claims.withdraw(w.sent[0].number, queued[-1].number):
            for _ in queued:
                w.sent.pop()
                w.unanswered -= 1
            for q in queued:
                _fail(q.future, "its worker was stopped")
        self._retiring.append(w)

    def _kill(self, workers: list[_Worker]) -> None:
        """SIGKILL `workers`. One that may still run a stage is waited for: the stage's
        outputs are judged and cleaned once it is gone (`discard_if_died`). An idle one
        is forgotten once its server reports it gone (`collect`): a code change's first
        stage waited 6-11 ms here for idle workers of the old code to exit."""
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                if w.proc.pid:
                    os.kill(w.proc.pid, signal.SIGKILL)
        for w in workers:
            if w.unanswered:
                w.proc.join(REAP_S)
            else:
                self._dying.append(w.proc)
            w.conn.close()
            _drop_claims(w)

    def _forget_dead(self) -> None:
        dying = []
        for proc in self._dying:
            if proc.is_alive():
                dying.append(proc)
            else:
                proc.close()  # (its sentinel's descriptor)
        self._dying = dying

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
            self._closed = True  # no start thread adds one after this
        self.replace()
        retiring, self._retiring = self._retiring, []
        self._kill(retiring)
        for w in retiring:
            while w.sent:
                _fail(w.sent.popleft().future, "its pool closed")
        self._drop_next()
        while True:  # started, not yet taken by the loop
            try:
                _, started = self._started.get_nowait()
            except queue.Empty:
                break
            if isinstance(started, _Worker):
                self._kill([started])
        for proc in self._dying:  # the pool's exit leaves no worker behind
            proc.join(REAP_S)
        os.close(self._wake_r)
        os.close(self._wake_w)
