"""The worker pool process: decides skip-or-run and runs stale stages on its workers.

    broker ROUTER <--DEALER-- main loop --+-- decide thread(s): hash deps/outs, read locks
                                          +-- loader process: imports the pipeline
                                          +-- worker processes (jobs): run stages, fed by pipes it polls
    threads and futures' callbacks never touch the socket: they put (kind, attempt, result)
    on a queue and write one byte to a wake pipe the main loop polls.

Heartbeats go out from the main loop every second. A broker silent for `liveness`
intervals is gone: the pool stops what it runs (fencing: the broker runs those stages
elsewhere only after that time plus a margin, so two attempts of one stage are never
alive at once), then exits (a pool its engine started: `--work`) or keeps saying hello
until a broker answers (a pool started on its own: `--broker CONTROL`, with
`--broker-timeout` to give up). Results are resent until acknowledged.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import queue
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Future, ThreadPoolExecutor
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from pivot.errors import PipelineError, PivotError, UserError
from pivot.faults import reached
from pivot.launch.limits import HARD_KILL_S
from pivot.launch.logsetup import HeldRecords, configure
from pivot.launch.procs import group_members, is_alive, is_stopped
from pivot.launch.scratch import (
    SHORT_TEMP,
    attempts_temp,
    multiprocessing_scratch,
    scratch_dir,
    sweep,
)
from pivot.launch.spawn import Loading, run_loader
from pivot.launch.stderrlog import fatal, log_to_stderr
from pivot.pipeline.gitignore import cached_outputs, keep_outputs_ignored
from pivot.pipeline.manifest import Manifest
from pivot.protocol.codec import encode
from pivot.protocol.messages import (
    CancelStage,
    Heartbeat,
    InstallChanged,
    LoadManifest,
    ManifestAccepted,
    ManifestFailed,
    ManifestLoaded,
    Message,
    Notice,
    PlanWave,
    PoolHello,
    PoolLeaving,
    PoolShutdown,
    PoolWelcome,
    Refused,
    ResultAck,
    RunStage,
    StageOutput,
    StageResult,
    StageRunning,
    Status,
    WavePlan,
)
from pivot.protocol.record import MutableRecord, mutable_record
from pivot.runtime.cancel import marker_path, writing_path
from pivot.runtime.command import kill_group_of
from pivot.runtime.dask_task import ALIVE_SUFFIX, CLAIM_SUFFIX, KILL_SUFFIX
from pivot.runtime.job import ChainLink, LinkBegan, LinkDecided, StageJob, StageOutcome
from pivot.runtime.lease import LEASE_NAME
from pivot.runtime.preload import drop_standby, install_stamp, serve_loaders, warm_up
from pivot.state.lock import LockPrefetch, read_lock
from pivot.state.notices import LOGGER as NOTICES_LOGGER
from pivot.state.notices import StoredStateNotices
from pivot.state.outputs import ProjectState
from pivot.state.plan import (
    QUICK_READ_BYTES,
    DepProducers,
    Prepared,
    dep_producers,
    plan_wave,
    prepare,
    prepare_quickly,
)
from pivot.state.reasons import ReasonCode
from pivot.state.stagelogs import QuietRun
from pivot.state.statecache import settled_rows
from pivot.transport.rundir import hold_pools_lock
from pivot.transport.sockets import decode_or_log, make_socket, send_msg
from workers.attempts import Attempt, Phase, linger_s, validate
from workers.executors import Executor
from workers.liveness import HELLO_EVERY_S, BrokerWatch
from workers.outcomes import Outbox, Result, after_decision, after_run
from workers.processes import WorkerProcesses
from workers.quietlogs import QuietLogs
from workers.streams import TAIL_S, AttemptOutput

if TYPE_CHECKING:  # (CURVE's module, ~2 ms of every pool's start, is imported when keys are given)
    from pivot.transport.curve import ClientKeys

__all__ = ["PoolService", "main"]

log = logging.getLogger(__name__)

LEAVE_LINGER_MS = 1000
PREFETCH_FRESH_S = 10.0  # the locks read at start serve a first wave planned within this
LEASE_EVERY_S = 1.0
FRAMES_PER_SEND = 100  # messages of one pass sent as the frames of one, at most
# Stages a pool holds decided beyond its workers, per job. A result's round trip to the
# broker and back (its next stage) crosses three processes: with one stage queued per
# job, a cold 1000-stage run's workers waited on it; four per job: -13 to -16 % (sixteen
# per job: no better). docs/benchmarks.md, fifteenth session.
QUEUE_PER_JOB = 4
CODE_CHANGED = "cancelled: Python code changed"
_ENDED_WELL = frozenset({Status.RAN, Status.SKIPPED, Status.RESTORED})  # (the broker's OK_STATUSES)


@mutable_record
class Link(MutableRecord):
    """How the pool reaches its broker: the work endpoint (its engine started it), or the
    control endpoint (hello first: the broker says where its work socket is)."""

    work: str | None = None
    control: str | None = None
    keys: ClientKeys | None = None
    timeout: float | None = None  # give up after this much broker silence; None: never
    tags: list[str] = field(default_factory=list)


class PoolService:
    def __init__(
        self, root: Path, link: Link | str, name: str, jobs: int, first_load: Loading | None = None,
        clock: Callable[[], float] = time.monotonic, executor: Executor | None = None, start_workers: int = 0,
        one_shot: bool = False, handed: str = "", planned: bool = False,
    ) -> None:
        self.clock = clock  # every time the pool reads (liveness, resends, cancels)
        self.root = root
        self.first_load = first_load
        self.name = name
        self.jobs = max(1, jobs)
        self.link = link if isinstance(link, Link) else Link(work=link)
        self.incarnation = os.urandom(6).hex()  # new at every start of this pool
        self.broker_id = ""
        self.said_hello_again = False  # its pipeline goes with the broker's next welcome
        self.exit_code = 0
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self._socket(self.link.work) if self.link.work else None
        self.manifest: Manifest | None = None
        self.handed = handed  # the token its broker holds `first_load`'s pipeline under
        # The broker's number of the last load it asked for (0: this pool's own first), and
        # of the load `manifest` came from: only the last one's answer is applied and sent.
        self.load_asked = 0
        self.manifest_load = 0
        self.producers: DepProducers = {}
        # Read while the first loader runs, for the first wave's plan only (each lock is
        # handed out once, and a plan checks outputs against the lock it uses).
        # (`planned`: its broker has the first wave's plan from the command that started it.)
        self.first_locks = (LockPrefetch(root), self.clock()) if first_load is not None and not planned else None
        self.state = ProjectState.open(root)
        self.unacked = Outbox()  # results sent, until the broker acknowledges them
        self.done: queue.SimpleQueue[tuple[str, str, Any]] = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()
        self.loop_thread = threading.get_ident()  # (run() sets it again: the loop's own)
        os.set_blocking(self.wake_w, False)
        self.threads = ThreadPoolExecutor(max_workers=self.jobs + 1, thread_name_prefix="decide")
        # Its workers start when a stage first must run (or with the pipeline: start_workers).
        self.workers: Executor = executor if executor is not None else WorkerProcesses(self.jobs)
        # Workers to start once the first pipeline is in, before any stage is dispatched
        # (the process that started this pool found that many stages to run): a worker's
        # start (the forkserver's, then its own) then overlaps the hello and the plan.
        self.start_workers = start_workers
        self.capacity = self.jobs * self.workers.prefetch  # stages handed to workers at once
        # Stages taken beyond `jobs`, decided and held (Phase.QUEUED) until a worker frees:
        # the next stage then starts without a round trip to the broker (~3 ms a stage on
        # this machine, of which the run was ~1). Not for a remote executor: it queues.
        # The broker uses more of it than `jobs` only while this is its one pool.
        self.queue_depth = 0 if self.workers.remote else QUEUE_PER_JOB * self.jobs
        self.held: collections.deque[str] = collections.deque()  # queued attempts, in order
        # Attempts given behind others here, all of which ended well: decided in this turn.
        self.released: collections.deque[str] = collections.deque()
        # Results that did not succeed, until the broker acknowledges them: the queued
        # attempts wait meanwhile, since a failure may stop them (fail fast), and the
        # broker's cancels come before its ack.
        self.unsettled: set[str] = set()
        self.written: set[str] = set()  # outputs its workers wrote (refreshed at a graceful exit)
        self.quiet = QuietLogs(self.state.hashes, root, one_shot=one_shot)  # what its workers leave it to store
        # Attempts cancelled while they waited in a worker behind another stage: reported
        # at once; their worker skips them when it gets there (the cancel marker).
        self.abandoned: set[str] = set()
        self.attempts: dict[str, Attempt] = {}  # every attempt until its result is sent
        self.outputs: dict[str, AttemptOutput] = {}  # what each running attempt prints
        self.next_look = 0.0
        self.restart_on_load = False  # a code change: new workers once a manifest loads
        self.serve_loaders = False  # the preloading server runs for the loads to come
        self.replace_on_accept = False  # ... and once the broker accepted it
        # Each running stage's worker writes its pid here, so a dead worker's stage is known,
        # and watches the lease this pool's loop renews every second (pivot/runtime/lease.py).
        # (A remote executor's workers read and write them on the project's shared file
        # system: pivot/runtime/dask_task.py.)
        if self.workers.remote:
            self.pid_dir = root / ".pivot" / "run" / "pools" / f"{name}-{self.incarnation}"
            self.pid_dir.mkdir(parents=True)
        else:
            self.pid_dir = scratch_dir("workers", attempts_temp())
            if isinstance(self.workers, WorkerProcesses):
                self.workers.claims_folder = str(self.pid_dir)
        self.mp_dir = multiprocessing_scratch()
        self.lease = self.pid_dir / LEASE_NAME
        self.lease_renewed = 0.0
        self.rebalance_at: float | None = None  # when queued stages may move (time.monotonic)
        self.lease_count = 0
        # The installed packages as the last load may have seen them (see `_look_for_installs`).
        self.installed = install_stamp()
        self.stopping = False
        self.leaving = False  # SIGTERM: handing back its stages before it exits
        self.leave_by: float | None = None
        self.watch = BrokerWatch(self.clock(), standalone=self.link.control is not None, give_up_after=self.link.timeout)
        self.notices = StoredStateNotices(lambda text: self._post("notice", "", text))
        self.holding: list[Message] | None = None  # sends held during a pass of the loop
        self.records: HeldRecords | None = None  # this pool's log file, written before each wait
        self.engine_pid = 0  # the process of its broker, watched: gone, this pool stops at once
        logging.getLogger(NOTICES_LOGGER).addHandler(self.notices)

    # --- plumbing ------------------------------------------------------------------

    def _socket(self, work_endpoint: str) -> zmq.Socket[bytes]:
        # A pool its engine started (`--work`) connects before the broker has bound.
        sock = make_socket(self.ctx, zmq.DEALER, steady=self.link.control is None)
        sock.setsockopt(zmq.ROUTING_ID, self.name.encode())
        if self.link.keys is not None:
            self.link.keys.apply(sock)
        sock.connect(work_endpoint)
        return sock

    def _send(self, msg: Message) -> None:
        if self.holding is not None:  # within a pass of the loop: sent at its end
            self.holding.append(msg)
            return
        self.quiet.sending(self.clock(), idle=not self.attempts)
        assert self.sock is not None
        send_msg(self.sock, msg, sender=self.name)
        self.watch.sent(self.clock())

    def _send_held(self) -> None:
        """What the pass held, as the frames of one message (docs/protocol.md): each send
        wakes this process's ZeroMQ I/O thread, then the broker's and the broker, and on
        two cores each wake-up takes the CPU from someone; a pass that hands out a stage
        and reports another's result sent two."""
        held, self.holding = self.holding, None
        self.quiet.sending(self.clock(), idle=not self.attempts)  # before the results among `held`
        if not held:
            return
        assert self.sock is not None
        payloads = [encode(msg, sender=self.name) for msg in held]
        for i in range(0, len(payloads), FRAMES_PER_SEND):
            self.sock.send_multipart(payloads[i : i + FRAMES_PER_SEND], copy=False)
        self.watch.sent(self.clock())

    def _hello(self) -> None:
        running = {name: a.stage for name, a in self.attempts.items() if a.cancel is None}
        self._send(PoolHello(
            self.name, os.getpid(), self.jobs, self.incarnation, socket.gethostname(),
            list(self.link.tags), running, self.queue_depth,
        ))

    def _greet(self, timeout: float) -> bool:
        """Ask the broker at the control endpoint where its work socket is, and (re)connect
        there. False when no broker answered in time."""
        from pivot.pipeline.project import project_id
        from pivot.transport.greet import BrokerRefused, NoBroker, greet

        assert self.link.control is not None
        try:
            info = greet(
                self.ctx, self.link.control, role="pool", name=self.name,
                project=project_id(self.root), timeout=timeout, keys=self.link.keys,
            )
        except NoBroker:
            return False
        if info.access not in ("pool", "operator", "local"):
            raise BrokerRefused(
                f"this pool's key is a {info.access} key: the broker lets only pool (or "
                "operator) keys run stages; create one with `pivot keys add NAME --role pool`",
                "access",
            )
        if self.sock is not None:
            self.sock.close(linger=0)
        self.sock = self._socket(info.work)
        self.watch.heartbeat_s, self.watch.liveness = info.heartbeat_s, info.liveness
        return True

    def _connect_first(self) -> bool:
        """A standalone pool waits for its broker (bounded by --broker-timeout)."""
        if self.link.control is None:
            return True
        started = self.clock()
        told = False
        while not self.stopping:
            if self._greet(timeout=HELLO_EVERY_S):
                return True
            if not told:
                log.warning("waiting for the broker at %s", self.link.control)
                told = True
            timeout = self.link.timeout
            if timeout is not None and self.clock() - started > timeout:
                fatal(log, f"no broker answered at {self.link.control} within {timeout:.0f} s; "
                      "start one (`pivot broker`), or check the endpoint and --broker-timeout")
                return False
        return False

    def _hello_again(self) -> bool:
        """A standalone pool asks again for a broker. False: one answered, refusing it
        (of another version, say): exit."""
        from pivot.transport.greet import BrokerRefused

        try:
            if self._greet(timeout=HELLO_EVERY_S):
                self._hello()
                self.said_hello_again = True
        except BrokerRefused as exc:
            fatal(log, str(exc))
            self.exit_code = 2
            return False
        return True

    def _fence(self, why: str) -> None:
        """Stop every stage this pool runs: the broker gives them to another pool once it
        has given this one up, and two attempts of a stage must never run at once."""
        log.warning("%s: stopping the %d stage(s) this pool runs", why, len(self.attempts))
        for a in self.attempts.values():
            a.cancel, a.stop = a.cancel or f"not finished: {why}", None
        if self._running():
            self._stop_workers()

    def _post(self, kind: str, attempt: str, value: Any) -> None:
        """Hand a result to the main loop (called from threads and futures' callbacks)."""
        self.done.put((kind, attempt, value))
        if threading.get_ident() == self.loop_thread:
            return  # (the executor's `collect`): the loop drains `done` next
        with contextlib.suppress(BlockingIOError):  # full pipe: the loop will wake anyway
            os.write(self.wake_w, b"x")

    def _in_thread(self, kind: str, attempt: str, fn: Callable[[], Any]) -> None:
        future = self.threads.submit(fn)
        future.add_done_callback(lambda f: self._post(kind, attempt, f))

    def request_stop(self, *_: object) -> None:
        """SIGTERM/SIGINT: hand back what runs (cancelled here, reported `lost`, so the
        broker runs it elsewhere at once), say goodbye, exit. A second one: exit now."""
        if self.leaving:
            self.stopping = True
        self.leaving = True
        self._post("stop", "", None)

    def _leave(self, now: float) -> bool:
        """Once every stage is handed back and acknowledged (or after a bounded wait),
        tell the broker and stop. True when done."""
        if self.leave_by is None:
            self.leave_by = now + HARD_KILL_S + 2.0
            if self.sock is not None:  # first: the broker sends nothing new here
                self._send(PoolLeaving(self.name))
            for attempt in list(self.attempts):
                self._cancel(attempt, "its worker pool stopped (SIGTERM); it runs again elsewhere")
        return not (self.attempts or self.unacked) or now >= self.leave_by

    # --- the loop ------------------------------------------------------------------

    def run(self) -> int:
        self.loop_thread = threading.get_ident()
        if self.link.control is not None:  # (else its engine gave it the work endpoint)
            # The greeting's module only here: a one-shot run's pool is on its first
            # stage's way until its hello.
            from pivot.transport.greet import BrokerRefused

            try:
                if not self._connect_first():
                    return 0 if self.stopping else 3
            except BrokerRefused as exc:
                fatal(log, str(exc))
                self.exit_code = 2
                return 2
        engine = self._engine_fd()
        self._hello()
        first, self.first_load = self.first_load, None
        if first is not None:
            self._in_thread("manifest", "", first.result)
        else:
            self._in_thread("manifest", "", lambda: run_loader(self.root))
        polled: zmq.Socket[bytes] | None = None
        poller = zmq.Poller()
        workers_polled: list[int] = []
        try:
            if self.engine_pid and engine is None:
                log.warning("its engine (pid %d) is gone: exiting", self.engine_pid)
                return 3
            while not self.stopping:
                now = self.clock()
                if self.leaving and self._leave(now):
                    return self.exit_code
                if self.watch.silent(now) and is_stopped(os.getppid()):
                    # `pivot up` (the broker's process) was stopped by Ctrl-Z: it comes
                    # back with fg. Its silence is not its death.
                    self.watch.heard(now)
                due = self.watch.due(now)
                silent_s = now - self.watch.last_heard
                if due.fence and self.attempts:
                    self._fence(f"the broker has been silent for {silent_s:.1f} s")
                if due.give_up:
                    log.error("broker silent for %.1f s: exiting", silent_s)
                    return 3
                if due.hello and not self._hello_again():
                    return self.exit_code
                if due.heartbeat:
                    if self._running():
                        reached("heartbeat")
                    self._send(Heartbeat(self.name))
                self._resend(now)
                self._enforce_cancels(now)
                self.quiet.sending(now, idle=not self.attempts)
                if now - self.lease_renewed >= LEASE_EVERY_S:
                    self.lease_renewed = now
                    self.lease_count += 1
                    self.lease.write_text(f"{self.lease_count}\n")
                    self._look_for_installs()
                if polled is not self.sock:  # a new socket when the broker moved
                    polled, poller, workers_polled = self.sock, zmq.Poller(), []
                    poller.register(self.sock, zmq.POLLIN)
                    poller.register(self.wake_r, zmq.POLLIN)
                    if engine is not None:
                        poller.register(engine, zmq.POLLIN)
                if (fds := self.workers.waitables()) != workers_polled:
                    for fd in workers_polled:
                        poller.unregister(fd)
                    for fd in fds:
                        poller.register(fd, zmq.POLLIN)
                    workers_polled = fds
                if self.records is not None:
                    self.records.flush()
                events = poller.poll(int(self._timeout_ms(now)) + 1)
                if engine is not None and any(fd == engine for fd, _ in events):
                    # Nothing it runs may be kept or reported: a new run may follow at once
                    # (it waits for this process's exit: pivot/transport/rundir.py).
                    log.warning("its engine (pid %d) exited: stopping the %d stage(s) it runs and exiting",
                                self.engine_pid, len(self.attempts))
                    return 3
                # What the pass sends goes at its end, in order: a chain's next stage is
                # handed to its worker before its upstream's result (a ZeroMQ send, a
                # wake-up of its I/O thread) goes to the broker.
                self.holding = []
                try:
                    self._pass(events)
                finally:
                    self._send_held()
                validate(self.attempts, self.unacked.names())
            return self.exit_code
        finally:
            if engine is not None:
                os.close(engine)
            self._shutdown()

    def _engine_fd(self) -> int | None:
        """A pidfd of its engine's process (`engine_pid`), readable once it has exited;
        None without one, or when it is gone already."""
        if not self.engine_pid:
            return None
        try:
            fd = os.pidfd_open(self.engine_pid)
        except ProcessLookupError:
            return None
        if os.getppid() != self.engine_pid:  # gone, and its pid taken by another since
            os.close(fd)
            return None
        return fd

    def _pass(self, events: list[tuple[Any, int]]) -> None:
        """One turn of the loop after its wait: what came in, then what can start."""
        ready: set[int] = set()
        for sock, _ in events:
            if sock is self.sock:
                self._drain_socket()
            elif sock == self.wake_r:
                os.read(self.wake_r, 4096)
            else:
                ready.add(sock)
        if ready:
            self.workers.collect(ready)
        self._drain_done()
        self._decide_released()
        self._start_held()
        self._drain_done()  # (what those workers began)
        self.rebalance_at = self.workers.rebalance(time.monotonic())
        self._look(self.clock())

    def _timeout_ms(self, now: float) -> float:
        deadlines = [self.watch.next_deadline(), self.lease_renewed + LEASE_EVERY_S]
        if (resend := self.unacked.next_send()) is not None:
            deadlines.append(resend)
        if self.outputs:
            deadlines.append(self.next_look)
        if self.quiet.due is not None:
            deadlines.append(self.quiet.due)
        if self.rebalance_at is not None:  # (time.monotonic's, as the default clock's)
            deadlines.append(now + self.rebalance_at - time.monotonic())
        # An attempt whose worker was not known yet is signalled as soon as it is.
        deadlines += [now + 0.02 if not a.worker_pid else a.kill_at for a in self.attempts.values() if a.stop]
        return max(0.0, (min(deadlines) - now) * 1000)

    def _resend(self, now: float) -> None:
        for msg in self.unacked.due(now):
            self._send(msg)

    def _drain_socket(self) -> None:
        assert self.sock is not None
        while True:
            try:
                payload = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.watch.heard(self.clock())
            env = decode_or_log(payload, "work")
            if env is None:
                continue
            match env.msg:
                case PoolWelcome(heartbeat_s=hb, liveness=liveness, broker=broker):
                    self.watch.welcomed(hb, liveness)
                    if broker != self.broker_id and self.broker_id:
                        log.warning("a new broker (%s) took over from %s", broker, self.broker_id)
                    if self.manifest is not None and (self.said_hello_again or self.broker_id not in ("", broker)):
                        # A welcome after a hello said again: a new broker, or this one,
                        # which may have given this pool up (a silence) and forgotten its
                        # pipeline. Without it, the broker would send this pool nothing.
                        self._send(ManifestLoaded(self.name, self.manifest.to_wire(), self.manifest_load))
                    self.said_hello_again = False
                    self.broker_id = broker
                case Refused(code="unknown"):
                    if not self.leaving:
                        self._hello()  # a broker that restarted: it learns of us now
                        self.said_hello_again = True
                case Refused(reason=reason):
                    log.error("the broker refused this pool: %s", reason)
                    self.exit_code = 2
                    self.stopping = True
                case Heartbeat():
                    pass
                case RunStage() as job:
                    self._start(job)
                case PlanWave() as plan:
                    self._plan(plan)
                case ResultAck(attempt=attempt):
                    self.unacked.acked(attempt)
                    if attempt in self.unsettled:
                        self.unsettled.discard(attempt)
                        if not self.unsettled:  # the broker's cancels, if any, came first
                            self.workers.resume()
                case LoadManifest(restart_workers=restart, load=load):
                    self.installed = install_stamp()  # (what this load sees)
                    if restart:
                        self._cancel_unbegun("not started: code changed")
                        self.restart_on_load = True
                    self.serve_loaders = True  # a live pipeline: its next loads fork warm
                    self.load_asked = load
                    self._in_thread("manifest", str(load), lambda: run_loader(self.root))
                    if restart:  # its import beside the loader's, off the first stage's way
                        self.workers.prepare(self.root)
                case ManifestAccepted():
                    if self.replace_on_accept:
                        # New code: no worker that imported the old pipeline may run
                        # another stage (the broker dispatches only after this message).
                        self.replace_on_accept = False
                        self.workers.replace(adopt=True, keep=self._spared())
                case CancelStage(attempt=attempt, reason=why):
                    self._cancel(attempt, why)
                case PoolShutdown():
                    self._refresh_written()
                    self.stopping = True
                case other:
                    log.warning("dropped %s: not a message the broker sends a pool", other.TAG)

    # --- stages --------------------------------------------------------------------

    def _start(self, job: RunStage) -> None:
        if job.attempt in self.attempts or job.attempt in self.unacked:
            return  # a resent dispatch we already have
        a = self.attempts[job.attempt] = Attempt(job, Phase.WAITING)
        if self.leaving:
            self._report(job.attempt, Result(Status.LOST, ReasonCode.POOL_LOST, "its worker pool is stopping"))
            return
        for up in job.after:  # given behind attempts of its upstream stages
            if up in self.attempts:
                a.after.add(up)
            elif (status := self.unacked.status(up)) not in _ENDED_WELL:
                self._give_back(job.attempt, up, status)
                return
        if a.after:
            a.phase = Phase.BEHIND
            if len(a.after) == 1:
                self._hand_ahead(next(iter(a.after)))
        elif self.manifest is not None:  # else: decided once this pool's pipeline loaded
            self._decide(a)

    def _give_back(self, attempt: str, upstream: str, status: str | None) -> None:
        """An attempt given behind `upstream`, which did not end well here (or is not
        this pool's): reported lost, unstarted. The broker dropped it on that result (it
        runs once its upstream has), or runs it again now."""
        ended = f"ended {status}" if status else "is not this pool's"
        self._report(attempt, Result(Status.LOST, ReasonCode.BLOCKED, f"not started: upstream attempt {upstream} {ended}"))

    def _behind(self, attempt: str, status: str) -> None:
        """`attempt` ended: those given behind it wait for one fewer (and are decided in
        this turn of the loop once they wait for none), or are given back."""
        for name, b in list(self.attempts.items()):
            if b.ahead_of == attempt and status not in _ENDED_WELL and name in self.attempts:
                # Its worker runs it only after an upstream that ended well there; the
                # marker stops it had that upstream run well after all (a cancel that
                # came as it ended): the broker may run it elsewhere now.
                self.workers.cancel(self.pid_dir / name)
                self.abandoned.add(name)
                self._give_back(name, attempt, status)
                continue
            if attempt not in b.after or name not in self.attempts:  # (given back meanwhile)
                continue
            if status not in _ENDED_WELL:
                self._give_back(name, attempt, status)
                continue
            b.after.discard(attempt)
            if not b.after:
                b.phase = Phase.WAITING
                self.released.append(name)

    def _decide_released(self) -> None:
        """Attempts whose upstream attempts here all ended well: decided now, in order."""
        while self.released:
            a = self.attempts.get(self.released.popleft())
            if a is not None and a.phase is Phase.WAITING and self.manifest is not None:
                self._decide(a)

    def _decide(self, attempt: Attempt) -> None:
        """Skip, restore or run: decided here when that takes little I/O (small files to
        hash, nothing to restore: `prepare_quickly`), else in a thread."""
        assert self.manifest is not None
        job = attempt.job
        attempt.phase = Phase.DECIDING
        spec = self.manifest.by_name.get(job.stage)
        if spec is None:
            msg = f"stage {job.stage!r} is not in this pool's pipeline"
            self._report(job.attempt, Result(Status.FAILED, ReasonCode.FAILED, msg))
            return
        producers = self.producers
        hashes = self.state.hashes
        # The rows of the files it read (a data file's, hashed here first) are stored with
        # its workers' (quietlogs.py): dropped, every one was read again by the next check
        # (the first no-op after a cold run read every data file a stage reads). Not a
        # racy one (an upstream output just written): no check trusts it.
        with hashes.batched():
            try:
                quick = prepare_quickly(self.state, spec, force=job.force, producers=producers)
            except Exception:  # said by `prepare` in the thread, which meets it again
                quick = None
            finally:
                rows = settled_rows(hashes.take_held())
        if rows:
            self.quiet.hold(None, rows, self.clock())
        if quick is not None:
            self._on_decision(job.attempt, quick)
            return
        self.quiet.keep()  # a restore's log is its run's: its head line may be held here
        self._in_thread(
            "decided", job.attempt,
            lambda: prepare(self.state, spec, force=job.force, producers=producers),
        )

    def _plan(self, plan: PlanWave) -> None:
        manifest, producers = self.manifest, self.producers
        if manifest is None:
            self._send(WavePlan(plan.wave, []))
            return

        prefetched, self.first_locks = self.first_locks, None
        if prefetched is not None and self.clock() - prefetched[1] > PREFETCH_FRESH_S:
            prefetched = None  # the first wave came late: read the locks as they are now

        def work() -> list[str]:
            read = prefetched[0].reader() if prefetched is not None else read_lock
            return plan_wave(self.state, manifest, plan.stages, plan.upstream, producers, read=read)

        self._in_thread("planned", str(plan.wave), work)

    def _drain_done(self) -> None:
        while True:
            try:
                kind, attempt, value = self.done.get_nowait()
            except queue.Empty:
                return
            if kind == "manifest":
                self._manifest_done(value, int(attempt or 0))
            elif kind == "planned":
                self._planned(int(attempt), value)
            elif kind == "decided":
                self._decided(attempt, value)
            elif kind == "started":
                self._started(attempt)
            elif kind == "began":
                self._began(attempt, value)
            elif kind == "ran":
                self._ran(attempt, value)
            elif kind == "notice":
                self._send(Notice(value))

    def _manifest_done(self, future: Future[Manifest], load: int) -> None:
        if load != self.load_asked:
            # A later load is out: it may have been asked for a save this one read
            # before, or half of (its answer is the one the broker waits for).
            return
        previous = self.manifest
        try:
            self.manifest = future.result()
        except PivotError as exc:
            detail = exc.detail if isinstance(exc, PipelineError) else ""
            self._send(ManifestFailed(self.name, str(exc), detail, load))
            for a in self._waiting():
                self._report(a.job.attempt, Result(Status.FAILED, ReasonCode.FAILED, f"the pipeline did not load: {exc}"))
            return
        if self.restart_on_load or _code_moved(previous, self.manifest):
            # (Code changed with no project file edited: a package upgraded since, whose
            # new version the stages' fingerprints name. The workers imported the old one.)
            self.restart_on_load = False
            self.replace_on_accept = True
        self.manifest_load = load
        # The pipeline it was forked with (its own first load), once: its broker holds it.
        handed, self.handed = self.handed if load == 0 else "", ""
        self._send(ManifestLoaded(self.name, {} if handed else self.manifest.to_wire(), load, handed))
        try:
            self.workers.configure(self.manifest.preload, self.manifest.preload_key)
            if not self.workers.started:  # live workers keep the server they came from
                warm_up(self.manifest.preload, self.manifest.preload_key)
            if self.start_workers:
                # Each imports the pipeline as it starts: the broker's plan and its first
                # stages come meanwhile (10,000 stages: an 83 ms import that had waited
                # for the first stage).
                self.workers.start(self.start_workers, self.root)
                self.start_workers = 0
            if self.serve_loaders:
                serve_loaders(self.manifest.preload, self.manifest.preload_key)
        except OSError as exc:  # workers then start in fresh interpreters, later
            log.warning("could not start the workers' forkserver: %s", exc)
        # After the send: the broker checks the graph meanwhile. A manifest whose outputs
        # collide is rejected there; its stages are then never dispatched here.
        try:
            self.producers = dep_producers(self.manifest)
        except PipelineError:
            self.producers = {}
        for a in self._waiting():
            self._decide(a)
        # What its stages write stays out of git (pivot/pipeline/gitignore.py): a read and
        # a compare, a write only when the outputs changed.
        try:
            keep_outputs_ignored(self.root, cached_outputs(self.manifest))
        except OSError as exc:
            log.warning("could not update %s: %s", self.root / ".gitignore", exc)

    def _waiting(self) -> list[Attempt]:
        return [a for a in self.attempts.values() if a.phase is Phase.WAITING]

    def _running(self) -> list[Attempt]:
        return [a for a in self.attempts.values() if a.phase is Phase.RUNNING]

    def _look_for_installs(self) -> None:
        """A package installed, upgraded or removed on this host since the last load
        (`pip install -U` beside `pivot up`): the broker is told, and loads the pipeline
        again as for a code edit; its stages may now name other versions than the ones
        the workers imported."""
        if self.manifest is None:
            return
        stamp = install_stamp()
        if stamp != self.installed:
            changed = sorted({entry for entry, _ in set(stamp) ^ set(self.installed)})
            self.installed = stamp
            log.info("installed packages changed in %s", ", ".join(changed))
            self._send(InstallChanged(changed))

    def _cancel_unbegun(self, why: str) -> None:
        """Python code changed: every stage in flight that no worker has begun stops.
        Those begun go on until the broker, which compares the new manifest with the
        old, cancels those whose code changed (a stage the edit left as it was runs to
        its end: a long one beside the edited one is not lost)."""
        for name in list(self.attempts):
            a = self.attempts.get(name)
            if a is None or (a.phase is Phase.RUNNING and a.announce is None and a.ahead_of is None):
                continue
            self._cancel(name, why)

    def _spared(self) -> frozenset[str]:
        """The new code is accepted: its workers replace the old ones. The stages begun
        on the old code that the broker did not cancel finish where they run; the others
        go with their workers."""
        kept: set[str] = set()
        for name, a in self.attempts.items():
            if a.phase is not Phase.RUNNING:
                continue
            if a.cancel is None and a.stop is None and a.announce is None and a.ahead_of is None:
                kept.add(str(self.pid_dir / name))
            elif a.cancel is None and a.generation == self.workers.generation:
                # Its worker is killed now: it ends cancelled, not as a death. (One spared
                # by an earlier change runs on a worker this replace leaves: its cancel
                # goes on as asked.)
                a.cancel, a.stop = a.stop or CODE_CHANGED, None
        return frozenset(kept)

    def _cancel(self, attempt: str, why: str) -> None:
        """Stop one attempt; its worker survives (see pivot/runtime/cancel.py)."""
        a = self.attempts.get(attempt)
        if a is None or a.cancel is not None or a.stop is not None:
            return  # already over (its result is on its way), or already being stopped
        if a.phase is Phase.BEHIND:  # nothing of it began, nor is being decided
            self._report(attempt, Result(Status.CANCELLED, ReasonCode.CANCELLED, why))
            return
        if a.phase is not Phase.RUNNING:  # never handed to a worker
            a.cancel = why
            return
        if a.announce is not None or a.ahead_of is not None:  # its worker has not begun it: it ends now
            self.workers.cancel(self.pid_dir / attempt)  # (and stops it, had it begun meanwhile)
            a.cancel = why
            self.abandoned.add(attempt)
            self._report(attempt, Result(Status.CANCELLED, ReasonCode.CANCELLED, why))
            return
        a.stop, a.kill_at = why, self.clock() + HARD_KILL_S
        a.worker_pid = self.workers.cancel(self.pid_dir / attempt)

    def _enforce_cancels(self, now: float) -> None:
        for name, a in self.attempts.items():
            if a.stop is None:
                continue
            if not a.worker_pid:
                a.worker_pid = self.workers.cancel(self.pid_dir / name)
            elif now >= a.kill_at:
                log.warning("stage attempt %s ignored its cancel for %.0f s: killing its worker",
                            name, HARD_KILL_S)
                self.workers.kill(self.pid_dir / name, a.worker_pid, a.stop)
                a.cancel, a.stop = a.stop, None

    def _judge_deaths(self) -> None:
        """Each running attempt's worker: its pid if it died, else 0 (it lives, or the
        attempt never reached it)."""
        for a in self._running():
            pid = _read_pid(self.pid_dir / a.job.attempt)
            a.dead_pid = pid if pid and not is_alive(pid) else 0
            (self.pid_dir / a.job.attempt).unlink(missing_ok=True)

    def _stop_workers(self) -> None:
        self.workers.replace()

    def _planned(self, wave: int, future: Future[list[str]]) -> None:
        try:
            up_to_date = future.result()
        except Exception:
            # Not fatal: every stage is then decided when it is dispatched.
            log.exception("planning wave %d failed", wave)
            up_to_date = []
        self._send(WavePlan(wave, up_to_date))

    def _decided(self, attempt: str, future: Future[Prepared]) -> None:
        a = self.attempts[attempt]
        decided: Prepared | BaseException
        try:
            decided = future.result()
        except Exception as exc:
            if a.cancel is None:
                log.exception("deciding %s failed", a.stage)
            decided = exc
        self._on_decision(attempt, decided)

    def _on_decision(self, attempt: str, decided: Prepared | BaseException) -> None:
        a = self.attempts[attempt]
        result = after_decision(a, decided)
        if result is not None:
            self._report(attempt, result)
            return
        assert isinstance(decided, Prepared) and self.manifest is not None
        if self.held or self.unsettled or len(self._running()) >= self.capacity:  # it waits here, decided
            a.phase, a.held = Phase.QUEUED, decided
            self.held.append(attempt)
            return
        self._hand_to_worker(attempt, decided)

    def _start_held(self) -> None:
        """Queued attempts, in order, to the workers that freed; those cancelled while
        they waited end here."""
        if not self.held or self.unsettled:
            return
        free = self.capacity - len(self._running())
        waiting: collections.deque[str] = collections.deque()
        for attempt in self.held:
            a = self.attempts[attempt]
            if a.cancel is None and free <= 0:
                waiting.append(attempt)
                continue
            decided, a.held, a.phase = a.held, None, Phase.DECIDING
            assert decided is not None
            result = after_decision(a, decided)  # cancelled, or None: it runs
            if result is not None:
                self._report(attempt, result)
            else:
                self._hand_to_worker(attempt, decided)
                free -= 1
        self.held = waiting

    def _hand_to_worker(self, attempt: str, decided: Prepared) -> None:
        a = self.attempts[attempt]
        assert self.manifest is not None
        pid_file = self.pid_dir / attempt  # (one path a stage: each `/` parses one)
        work = StageJob.for_stage(
            self.root, self.manifest.by_name[a.stage], decided, pid_file=str(pid_file), pool_pid=os.getpid(),
            linger=linger_s(attempt, self.attempts),
        )
        reason = decided.reason
        a.announce = StageRunning(attempt, str(reason.code), reason.message, reason.details)
        a.run_key = work.run_key
        run_log = self.state.runs.log_path(work.run_key) if work.run_key else None
        self.outputs[attempt] = AttemptOutput(self.root, a.stage, pid_file, run_log=run_log)
        future_run = self.workers.submit(work, on_start=lambda: self._post("started", attempt, None))
        a.phase, a.generation = Phase.RUNNING, self.workers.generation  # (after: a submit may replace them)
        future_run.add_done_callback(lambda f: self._post("ran", attempt, f))
        self._hand_ahead(attempt)

    def _hand_ahead(self, upstream: str) -> None:
        """The first attempt given behind `upstream` alone, handed to the worker that has
        `upstream` as its last job, to decide and run right after it there: a chain's
        next stage then begins as its upstream ends, where it waited for this loop to
        read that result, decide it and send it (~0.45 ms of a 0.9 ms link here). One
        an upstream: another behind it may run beside it on another worker."""
        up = self.attempts.get(upstream)
        manifest = self.manifest
        if (up is None or up.phase is not Phase.RUNNING or up.cancel is not None or up.stop is not None
                or manifest is None):
            return
        name, b = next(((n, b) for n, b in self.attempts.items() if b.after == {upstream}), ("", None))
        if b is None or any(other.ahead_of == upstream for other in self.attempts.values()):
            return
        spec = manifest.by_name.get(b.stage)
        if spec is None:
            return  # decided (and failed) the usual way
        self.quiet.before_result(b.stage)  # a restore there reads the head line kept for its run
        stage_producers = self.producers.get(b.stage) if self.producers else None
        pid_file = self.pid_dir / name
        link = ChainLink(
            str(self.root), spec, str(self.pid_dir / upstream), str(pid_file), os.getpid(), b.job.force,
            {dep: stage_producers[dep] for dep in stage_producers} if stage_producers is not None else {},
        )
        future = self.workers.submit_after(link, lambda note: self._post("began", name, note))
        if future is None:
            return
        b.after.clear()
        b.phase, b.generation, b.ahead_of = Phase.RUNNING, self.workers.generation, upstream
        self.outputs[name] = AttemptOutput(self.root, b.stage, pid_file)
        future.add_done_callback(lambda f: self._post("ran", name, f))
        self._hand_ahead(name)

    def _began(self, attempt: str, note: LinkBegan) -> None:
        """Its worker decided to run an attempt handed ahead, and runs it now."""
        a = self.attempts.get(attempt)
        if a is None or a.ahead_of is None:
            return  # (given back, or cancelled, meanwhile)
        a.ahead_of = None
        if note.run_key:
            a.run_key = note.run_key
            output = self.outputs.get(attempt)
            if output is not None:
                output.run_log = self.state.runs.log_path(note.run_key)
        if a.cancel is None:
            self._send(StageRunning(attempt, note.reason_code, note.reason, note.details))

    def _link_decided(self, attempt: str, decided: LinkDecided) -> None:
        """An attempt handed ahead that its worker did not run: skipped, restored or
        failed unrun, as the pool's own decision would have ended it."""
        a = self.attempts[attempt]
        self.quiet.before_result(a.stage)
        if decided.rows:
            self.quiet.hold(None, decided.rows, self.clock())
        output = self.outputs.pop(attempt, None)
        if output is not None:
            output.close()
            output.remove_files()
        self._forget_files(attempt)
        result: Result | None
        if decided.prepared is not None:
            result = after_decision(a, decided.prepared)
        elif decided.error is not None:
            result = after_decision(a, RuntimeError(decided.error))
        else:  # (its upstream did not end well: given back then, so not here)
            result = Result(Status.LOST, ReasonCode.BLOCKED, "not started: its upstream attempt did not end well")
        if result is None:  # (a decision to run is run there, not answered)
            result = Result(Status.FAILED, ReasonCode.FAILED, "its worker decided it would run, but did not")
        self._report(attempt, result)

    def _started(self, attempt: str) -> None:
        """Its worker began it (it may have waited behind another stage there): the
        broker hears it runs now, unless it was cancelled meanwhile (a cancel of one not
        yet begun is reported at once: `_cancel`)."""
        a = self.attempts.get(attempt)
        if a is None or a.announce is None:
            return
        announce, a.announce = a.announce, None
        if a.cancel is None:
            self._send(announce)
            self._hand_ahead(attempt)  # (it had waited for a worker to start, maybe)

    def _ran(self, attempt: str, future: Future[StageOutcome]) -> None:
        if attempt in self.abandoned:
            self._abandoned_ran(attempt, future)
            return
        a = self.attempts[attempt]
        ran: StageOutcome | BaseException
        tidied = False  # its worker kept its log and removed its files
        try:
            ran = future.result()
        except Exception as exc:
            ran = exc
        if isinstance(ran, LinkDecided):
            self._link_decided(attempt, ran)
            return
        if a.cancel is not None:
            judged = a.dead_pid is not None
            self._forget_files(attempt)
            if isinstance(ran, BrokenExecutor) and not judged and a.generation == self.workers.generation:
                # Its worker was killed (a cancel it could not see) and no stage beside
                # it has replaced the executor yet: it refuses new work from now on.
                self._judge_deaths()
                self._stop_workers()
        elif isinstance(ran, BrokenExecutor):
            # The executor fails every in-flight future when one worker dies. Only a stage whose
            # own worker is dead is charged; the others were collateral: "lost", and the
            # broker dispatches them again. Judged before the survivors are stopped (not
            # workers of a later generation: the broken ones were replaced already).
            if a.dead_pid is None:
                self._judge_deaths()
                if a.generation == self.workers.generation:
                    self._stop_workers()
        elif isinstance(ran, BaseException):
            log.error("running %s failed inside Pivot", attempt, exc_info=ran)
        else:
            tidied = ran.tidied and a.stop is None  # (a cancel asked for: its marker is here)
            self._forget_files(attempt, tidied=tidied)
        self._hold_quiet(a, ran, tidied)
        result = after_run(a, ran)
        if result.status == Status.RAN and self.manifest is not None and a.stage in self.manifest.by_name:
            self.written.update(o for o in self.manifest.by_name[a.stage].outs if not o.endswith("/"))
        self._end_output(attempt, result, tidied=tidied)
        self._report(attempt, result)

    def _abandoned_ran(self, attempt: str, future: Future[StageOutcome]) -> None:
        """An attempt reported cancelled before its worker began it came back: skipped
        there (or, begun in that instant, run): its files go, its result was sent."""
        self.abandoned.discard(attempt)
        output = self.outputs.pop(attempt, None)
        if output is not None:
            with contextlib.suppress(OSError):
                output.discard()
                output.remove_files()
        self._forget_files(attempt)
        ran = future.exception() or future.result()
        if (not isinstance(ran, StageOutcome) or ran.status == Status.FAILED) and not self.unsettled:
            self.workers.resume()  # its worker waits for the word after a failure

    def _hold_quiet(self, a: Attempt, ran: object, tidied: bool) -> None:
        """What the attempt's worker left this pool to store (workers/quietlogs.py)."""
        if not isinstance(ran, StageOutcome):
            return
        self.quiet.before_result(a.stage)
        if ran.rows or ran.quiet_head:
            quiet = None
            if tidied and ran.quiet_head:
                output = self.outputs.get(a.job.attempt)
                quiet = QuietRun(a.stage, ran.quiet_head, ran.reason, a.run_key, output.run_log if output else None)
            self.quiet.hold(quiet, ran.rows, self.clock())

    def _refresh_written(self) -> None:
        """Before a graceful exit (the end of a `repro`): the outputs its workers wrote
        have racy state-cache rows (hashed moments after their write), which the next
        check would read again, all of them (the first no-op after a cold run was 20-30 %
        slower than the next). Those written longer ago than the file system's timestamp
        window are hashed and stored now. Small files only: a big one is left to the next
        check rather than delay this exit."""
        self.quiet.keep()  # (the rows its workers hashed: the refresh reads them)
        written, self.written = self.written, set()
        if written:
            with contextlib.suppress(Exception):  # an optimisation: never in the way of the exit
                under = os.path.join(self.root, "")  # (declared paths: see decide.decide)
                self.state.hashes.refresh([under + out for out in sorted(written)], QUICK_READ_BYTES)

    def _look(self, now: float) -> None:
        """Send what the running attempts printed since the last look."""
        if not self.outputs or now < self.next_look:
            return
        more = False
        for attempt, output in self.outputs.items():
            try:
                lines, behind = output.look(now)
            except OSError as exc:  # the log's disk full: the stage runs on, unseen
                log.warning("reading the output of %s: %s", attempt, exc)
                continue
            more = more or behind
            if lines:
                self._send(StageOutput(attempt, lines))
        self.next_look = now if more else now + TAIL_S

    def _end_output(self, attempt: str, result: Result, *, tidied: bool = False) -> None:
        """The attempt is over: the rest of what it printed is sent (before its result),
        and its log becomes the stage's (unless its worker `tidied`: it printed nothing)."""
        output = self.outputs.pop(attempt, None)
        if output is None:
            return
        if tidied:
            output.close()
            return
        try:
            while True:
                lines, more = output.look(self.clock(), final=True)
                if lines:
                    self._send(StageOutput(attempt, lines))
                if not more:
                    break
            output.finish(str(result.status), result.reason, result.error)
        except OSError as exc:
            log.warning("keeping the output of %s: %s", attempt, exc)
            output.discard()
        output.remove_files()

    def _forget_files(self, attempt: str, *, tidied: bool = False) -> None:
        """Remove the attempt's files: what its worker did not (`tidied`: all but a
        remote executor's)."""
        if not tidied:
            pid_file = self.pid_dir / attempt
            kill_group_of(pid_file)  # a command its dead worker left running
            for path in (pid_file, marker_path(pid_file), writing_path(pid_file)):
                path.unlink(missing_ok=True)
        if self.workers.remote:
            for suffix in (KILL_SUFFIX, CLAIM_SUFFIX, ALIVE_SUFFIX):
                (self.pid_dir / (attempt + suffix)).unlink(missing_ok=True)

    def _report(self, attempt: str, result: Result) -> None:
        """Send an attempt's result (resent until acknowledged); the attempt is over."""
        job = self.attempts.pop(attempt).job
        if self.leaving:
            result = result.handed_back()
        log.info("stage %s %s: %s", job.stage, result.status, result.reason,
                 extra={"stage": job.stage, "attempt": attempt, "wave": job.wave})
        msg = StageResult(
            attempt, job.stage, result.status, str(result.code), result.reason, result.duration_s,
            result.error, result.logs, result.details, self.incarnation,
        )
        self.unacked.add(msg, self.clock())
        if result.status not in _ENDED_WELL:
            self.unsettled.add(attempt)
        self._send(msg)
        self._behind(attempt, result.status)

    def _shutdown(self) -> None:
        with contextlib.suppress(Exception):  # (said, if it could not be kept): the exit goes on
            self.quiet.keep()
        logging.getLogger(NOTICES_LOGGER).removeHandler(self.notices)
        drop_standby()  # the loader forked ahead of a next load
        self.workers.close()
        for attempt in list(self.attempts):  # command stages' processes leave with their workers
            kill_group_of(self.pid_dir / attempt)
        for output in self.outputs.values():
            with contextlib.suppress(OSError):
                output.look(self.clock(), final=True)
                output.finish("cancelled", "its pool stopped while it ran", None)
        self.outputs.clear()
        if os.getpgrp() == os.getpid():
            # Whatever this pool started goes with it: its workers and their forkserver
            # (which outlive a pool whose engine died otherwise). Not the resource
            # trackers: they end on their own once the last process holding their pipe
            # has (this one, in a moment), and one killed first is started anew, with a
            # warning, by the next process to touch it (a worker, the forkserver, a
            # finalizer of this one).
            for pid in group_members(os.getpid()):
                if pid != os.getpid() and not _is_resource_tracker(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            # The forkserver was one of them: its folder goes too. (A pool that is not
            # its group's leader, as in the tests, leaves its process's server running.)
            shutil.rmtree(self.mp_dir, ignore_errors=True)
        self.threads.shutdown(wait=False, cancel_futures=True)
        self.state.close()
        shutil.rmtree(self.pid_dir, ignore_errors=True)
        if self.workers.remote:
            with contextlib.suppress(OSError):  # the last pool of this project gone
                self.pid_dir.parent.rmdir()
        if self.sock is not None:
            # A goodbye (pool_leaving) must reach the broker; nothing else may hold us.
            # (No broker ever welcomed it: nobody to say it to, nothing to wait for.)
            self.sock.close(linger=LEAVE_LINGER_MS if self.leaving and self.broker_id else 0)
        self.ctx.term()
        os.close(self.wake_r)
        os.close(self.wake_w)


def _is_resource_tracker(pid: int) -> bool:
    """multiprocessing's resource tracker: this process's (forked from it:
    pivot/runtime/mpforks.py), or by its command line."""
    from multiprocessing import resource_tracker

    if pid == getattr(resource_tracker._resource_tracker, "_pid", None):
        return True
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


def _code_moved(old: Manifest | None, new: Manifest) -> bool:
    """Whether a stage's code fingerprint differs between two loads."""
    if old is None:
        return False
    before = old.by_name
    return any((was := before.get(spec.name)) is not None and was.fingerprint != spec.fingerprint
               for spec in new.stages)


def main(args: argparse.Namespace, first_load: Loading | None = None) -> int:
    """Run a pool (see workers/args.py); `first_load` is a loader already started."""
    log_to_stderr(logging.WARNING, "%(asctime)s pool %(levelname)s %(message)s")
    records = configure("pool", args.root, hold=True)
    os.chdir(args.root)
    # What pools and loaders killed outright left: in the background, a temp folder may
    # hold thousands of entries (7 ms here) and the pool's start is on the way to the
    # first stage.
    def sweep_all() -> None:
        for kind in ("workers", "manifest", "mp"):
            sweep(kind)
        if attempts_temp() != tempfile.gettempdir():
            sweep("workers", attempts_temp())
        if tempfile.gettempdir() != SHORT_TEMP:  # (a long TMPDIR: multiprocessing_scratch)
            sweep("mp", SHORT_TEMP)

    sweeper = threading.Thread(target=sweep_all, name="sweep", daemon=True)
    sweeper.start()
    try:
        keys = _keys(args)
    except UserError as exc:
        fatal(log, str(exc))
        return 2
    link = Link(work=args.work, control=args.broker, keys=keys, timeout=args.broker_timeout, tags=list(args.tag))
    if link.control is None:  # its engine's own: a new engine waits for it (pivot/transport/rundir.py)
        hold_pools_lock(args.root)
    executor: Executor | None = None
    jobs = args.jobs
    if args.dask:
        from workers.dask_pool import DaskWorkers

        try:
            dask = DaskWorkers(args.dask, args.dask_timeout)
        except UserError as exc:
            fatal(log, str(exc))
            return 2
        executor, jobs = dask, jobs or dask.slots()
    service = PoolService(args.root, link, args.name, jobs, first_load, executor=executor,
                          start_workers=args.start_workers, one_shot=args.one_shot,
                          handed=args.handed, planned=args.planned)
    service.records = records
    if args.one_shot:
        # Its engine is the `pivot repro` that started it, a process with no other way to
        # say it is gone when it is killed outright.
        service.engine_pid = os.getppid()
    signal.signal(signal.SIGTERM, service.request_stop)
    signal.signal(signal.SIGINT, service.request_stop)
    try:
        return service.run()
    finally:
        sweeper.join(5.0)  # done long before, but a pool that exits at once waits for it


def _keys(args: argparse.Namespace) -> ClientKeys | None:
    """CURVE keys when given (or found: `pool.key_secret` in the keys folder)."""
    from pivot.transport.curve import client_keys

    endpoint = args.broker or args.work
    return client_keys(endpoint, args.key, args.broker_key, default_name="pool")
