"""The broker's I/O shell: binds every endpoint, feeds BrokerState, executes its commands.

    clients <-DEALER->  ROUTER  control   hello (every role, first), run, snapshot, ps,
                                          pool exits, shutdown
    watcher  --PUSH-->  PULL    changes   watcher_ready, files_changed
    pool(s) <-DEALER->  ROUTER  work      pool hello, manifests, stages, results, heartbeats
    displays <--SUB---  XPUB    events    [b"state", msg] with sequence numbers; [b"log", msg]
    libzmq   <--REQ---  REP     ZAP       (with CURVE) may this key use this link?

One thread, one poll loop whose timeout is the next timer. `stop()` may be called from
any thread: it writes to an inproc pipe the loop polls. Clients need only the control
endpoint: the others (bound on given or free ports) are announced in the hello reply.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from broker.access import Access
from broker.events import (
    ChangesConfirmed,
    Command,
    ConfirmChanges,
    Event,
    FilesReported,
    InstallReported,
    LoadOwnManifest,
    ManifestArrived,
    ManifestRejected,
    Note,
    Noticed,
    OutputReceived,
    PauseRequested,
    PoolGone,
    PoolHeard,
    PoolJoined,
    PoolManifest,
    Publish,
    PublishLog,
    Reply,
    ResultReceived,
    RunRequested,
    SendWork,
    ShutdownRequested,
    SnapshotRequested,
    StageRunningReported,
    Tick,
    WatcherJoined,
    WavePlanned,
)
from broker.state import BrokerState
from pivot.errors import PipelineError, ProtocolError
from pivot.gcpause import paused
from pivot.launch.procs import describe_exit
from pivot.pipeline.graph import StageGraph, build_graph
from pivot.pipeline.manifest import Manifest
from pivot.protocol.codec import PROTOCOL_VERSION, Envelope, VersionMismatch, decode, encode
from pivot.protocol.messages import (
    BusTick,
    EventsWelcome,
    FilesChanged,
    Heartbeat,
    Hello,
    HelloReply,
    InstallChanged,
    ManifestFailed,
    ManifestLoaded,
    Message,
    Notice,
    PauseRequest,
    PipelineInvalid,
    PipelineLoaded,
    PlanWave,
    PoolExited,
    PoolHello,
    PoolLeaving,
    PoolLost,
    PsReply,
    PsRequest,
    Refused,
    RunRequest,
    ShutdownRequest,
    SnapshotRequest,
    StageOutput,
    StageResult,
    StageRunning,
    WatcherReady,
    WaveFinished,
    WavePlan,
    WaveStarted,
)
from pivot.transport.rundir import Endpoints
from pivot.transport.sockets import decode_or_log, make_socket

if TYPE_CHECKING:
    from broker.changes import ChangeChecker, SourceReaders
    from pivot.transport.curve import ServerKeys

__all__ = ["BrokerIdentity", "BrokerService", "Security"]

# Messages read in one pass of a socket before what they caused is sent (`_drain`).
HOLD_FOR = 32
# State events sent in one message of the events link, at most (`_send_held`).
EVENTS_PER_MESSAGE = 1000

log = logging.getLogger(__name__)

SENDER = "broker"
TICK_S = 0.25
BUS_TICK_S = 1.0
EVENTS_HWM = 100_000


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, "")))
    except ValueError:
        return default

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
FLUSH_MS = 500
HANDSHAKE_NOTE_S = 10.0
WATCHER_SEEN_S = 10.0  # a watcher re-says hello every few seconds; ps shows it this long


@dataclass(frozen=True)
class BrokerIdentity:
    """Who this broker is, as its hello reply and `pivot ps` tell it."""

    project: str = ""
    id: str = field(default_factory=lambda: os.urandom(6).hex())  # new at every start
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)


@dataclass(frozen=True)
class Security:
    """CURVE on every bound socket: the broker's keys and its allow-list."""

    keys: ServerKeys
    access: Access


@dataclass
class Seen:
    """A client that said hello (for `pivot ps`)."""

    role: str
    name: str
    pid: int
    host: str
    first: float
    last: float


class BrokerService:
    def __init__(
        self,
        root: Path,
        endpoints: Endpoints,
        ctx: zmq.Context[zmq.Socket[bytes]],
        state: BrokerState | None = None,
        clock: Callable[[], float] = time.monotonic,
        identity: BrokerIdentity | None = None,
        security: Security | None = None,
    ) -> None:
        self.root = root
        self.endpoints = endpoints
        self.ctx = ctx
        self.state = state or BrokerState()
        self.clock = clock
        self.identity = identity or BrokerIdentity()
        self.security = security
        self.access = security.access if security else Access(None)
        self.started = clock()
        self.seen: dict[str, Seen] = {}
        self._unknown_told: dict[str, float] = {}
        self.dropped = 0  # messages not acted on (see _drop)
        # Set: the loop returns once the engine has stopped (a standalone broker process);
        # unset: only stop() ends it (the broker thread of `pivot repro`).
        self.exit_when_stopped = False
        self.wake_fds: list[int] = []  # more fds the loop polls; `on_wake` handles them
        self.on_wake: Callable[[int], None] | None = None
        self.on_publish: Callable[[Message], None] | None = None  # sees each state event
        self._held: list[bytes] | None = None  # state events of the `_feed` under way
        self._held_work: dict[bytes, list[bytes]] = {}  # ... and what it sends each pool (by identity)
        self.local_ps: Callable[[float], list[dict[str, object]]] | None = None  # its own children
        self._stop_addr = f"inproc://broker-stop-{id(self)}"
        self._confirm_addr = f"inproc://broker-confirm-{id(self)}"
        self._loaded_addr = f"inproc://broker-loaded-{id(self)}"
        self._local_control_addr = f"inproc://broker-control-{id(self)}"
        self._local_events_addr = f"inproc://broker-events-{id(self)}"
        self._checker: ChangeChecker | None = None
        self._readers: tuple[Manifest, SourceReaders] | None = None  # (for this manifest)
        # Pipelines a pool forked in this process names instead of sending (`handed` on
        # manifest_loaded): token -> the pipeline and, if built already, its graph.
        self.handed: dict[str, tuple[Manifest, StageGraph | None]] = {}
        # The first wave's plan as `pivot repro` made it moments before (its stages, and
        # those up to date): taken for that wave instead of asking the pool again.
        self.planned: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._deferred: list[Event] = []  # fed once the step that made them is done
        self._sockets: list[zmq.Socket[bytes]] = []
        self._stop_lock = threading.Lock()
        self._stop_sender: zmq.Socket[bytes] | None = None
        self.bound = False

    # --- lifecycle -----------------------------------------------------------------

    def bind(self) -> None:
        """Bind every endpoint (call before starting any other process)."""
        ctx = self.ctx
        self.work = make_socket(ctx, zmq.ROUTER)
        self.work.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.control = make_socket(ctx, zmq.ROUTER)
        self.events = make_socket(ctx, zmq.XPUB)
        self.events.setsockopt(zmq.XPUB_VERBOSE, 1)
        # Messages queued for each display before the bus drops for it (a display stopped
        # with Ctrl-Z, or too slow): PIVOT_EVENTS_HWM, for a host short of memory.
        self.events.setsockopt(zmq.SNDHWM, _env_int("PIVOT_EVENTS_HWM", EVENTS_HWM))
        self.changes = make_socket(ctx, zmq.PULL)
        self.stop_pipe = make_socket(ctx, zmq.PAIR)
        # The change checker thread answers on its own inproc pair (hashing is off the loop).
        self.confirmed = make_socket(ctx, zmq.PAIR)
        self.confirmed.bind(self._confirm_addr)
        self.own_loaded = make_socket(ctx, zmq.PAIR)
        self.own_loaded.bind(self._loaded_addr)
        self._sockets = [
            self.work, self.control, self.events, self.changes, self.confirmed, self.own_loaded, self.stop_pipe
        ]
        self.stop_pipe.bind(self._stop_addr)
        self._stop_sender = make_socket(ctx, zmq.PAIR)
        self._stop_sender.connect(self._stop_addr)
        self.zap: zmq.Socket[bytes] | None = None
        self.monitors: dict[zmq.Socket[bytes], str] = {}  # handshake failures per link
        self._handshake_failures: dict[str, int] = {}
        self._next_handshake_note = 0.0
        if self.security is not None:
            # libzmq asks this socket about every CURVE handshake (one per context).
            self.zap = make_socket(ctx, zmq.REP)
            self.zap.bind(ZAP_ENDPOINT)
            self._sockets.append(self.zap)
            for sock, domain in (
                (self.work, "work"), (self.control, "control"), (self.events, "events"), (self.changes, "changes"),
            ):
                self.security.keys.apply(sock, domain)
                # A client holding another broker's public key fails before ZAP is asked.
                self.monitors[sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)] = domain
        # Control first: a port already in use fails before anything else is bound.
        # tcp port 0 (or *) takes a free port; what was bound is announced at hello.
        bound = {}
        for name, sock in (
            ("control", self.control), ("work", self.work), ("events", self.events), ("changes", self.changes),
        ):
            sock.bind(getattr(self.endpoints, name))
            bound[name] = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.endpoints = Endpoints(**bound)
        if self.security is None:
            # A client in this process (the CLI of `pivot repro`) links over inproc:
            # no I/O thread, socket pair or wake-up between the two threads.
            self.events.bind(self._local_events_addr)
            self.control.bind(self._local_control_addr)
        self.bound = True

    def local_endpoints(self) -> Endpoints:
        """Where a client in this process (same ZeroMQ context) connects: its control and
        events links over inproc, which skips ZeroMQ's I/O thread and a unix socket per
        message each way; the other links as bound. As bound, under CURVE (a client
        then proves its key like any other)."""
        if self.security is not None:
            return self.endpoints
        return Endpoints(self.endpoints.work, self._local_control_addr, self._local_events_addr, self.endpoints.changes)

    def stop(self) -> None:
        """Ask the loop to exit; safe from any thread, idempotent."""
        with self._stop_lock:
            if self._stop_sender is not None:
                self._stop_sender.send(b"stop")
                self._stop_sender.close(linger=0)
                self._stop_sender = None

    def run(self) -> None:
        """The poll loop; returns after stop(). Closes every socket it owns."""
        try:
            self._loop()
        except Exception:
            log.exception("broker loop crashed")
            raise
        finally:
            if self._checker is not None:
                self._checker.stop()
            # A stopped engine's last words (shutdown replies, pool_shutdown, the last
            # events) get a moment to leave; otherwise nothing may hold the close up.
            linger = FLUSH_MS if self.exit_when_stopped and self.state.stopped else 0
            for monitor in self.monitors:
                monitor.close(linger=0)
            for sock in self._sockets:
                sock.close(linger=linger)

    # --- the loop ------------------------------------------------------------------

    def _loop(self) -> None:
        poller = zmq.Poller()
        for sock in (self.work, self.control, self.events, self.changes, self.confirmed, self.own_loaded, self.stop_pipe):
            poller.register(sock, zmq.POLLIN)
        if self.state.manifest_source == "":
            self._load_own_manifest()  # the first load
        if self.zap is not None:
            poller.register(self.zap, zmq.POLLIN)
        for monitor in self.monitors:
            poller.register(monitor, zmq.POLLIN)
        for fd in self.wake_fds:
            poller.register(fd, zmq.POLLIN)
        now = self.clock()
        next_tick, next_bus = now + TICK_S, now + BUS_TICK_S
        while True:
            wake = min(next_tick, next_bus)
            deadline = self.state.next_deadline()
            if deadline is not None:
                wake = min(wake, deadline)
            timeout_ms = max(0.0, (wake - self.clock()) * 1000)
            ready = dict(poller.poll(int(timeout_ms) + 1))
            if self.stop_pipe in ready:
                return
            if self.zap is not None and self.zap in ready:
                self._answer_zap()
            for monitor, link in self.monitors.items():
                if monitor in ready:
                    self._note_handshake_failures(monitor, link)
            for fd in self.wake_fds:
                if fd in ready and self.on_wake is not None:
                    self.on_wake(fd)
            if self.work in ready:
                self._drain(self.work, self._on_work)
            if self.control in ready:
                self._drain_control()
            if self.events in ready:
                self._drain(self.events, self._on_subscription)
            if self.changes in ready:
                self._drain(self.changes, self._on_changes)
            if self.confirmed in ready:
                self._drain(self.confirmed, self._on_confirmed)
            if self.own_loaded in ready:
                self._drain(self.own_loaded, self._on_own_manifest)
            now = self.clock()
            deadline = self.state.next_deadline()
            if now >= next_tick or (deadline is not None and now >= deadline):
                next_tick = now + TICK_S
                self._feed(Tick(now))
            if now >= next_bus:
                next_bus = now + BUS_TICK_S
                self._send_state(BusTick(self.state.seq, self.state.log_seq), seq=0)
            if self.exit_when_stopped and self.state.stopped and not self.state.shutdown_clients:
                return

    def feed(self, event: Event) -> None:
        """Hand the state machine an event from the loop's own thread (a signal handler,
        a supervised child's exit)."""
        self._feed(event)

    def _note_handshake_failures(self, monitor: zmq.Socket[bytes], link: str) -> None:
        """Log failed CURVE handshakes: at once, then at most once per HANDSHAKE_NOTE_S."""
        while True:
            try:
                monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._handshake_failures[link] = self._handshake_failures.get(link, 0) + 1
        now = self.clock()
        if now < self._next_handshake_note:
            return
        self._next_handshake_note = now + HANDSHAKE_NOTE_S
        counts = ", ".join(f"{n} on {name}" for name, n in sorted(self._handshake_failures.items()))
        self._handshake_failures.clear()
        log.warning(
            "CURVE handshakes failed (%s): a client holds another broker's public key, or "
            "speaks without CURVE", counts,
        )

    def _answer_zap(self) -> None:
        assert self.zap is not None
        while True:
            try:
                frames = self.zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.zap.send_multipart(self.access.zap(frames))

    def _drain(self, sock: zmq.Socket[bytes], handler: Callable[[list[bytes]], None]) -> None:
        # What the messages of one pass cause is sent together, every HOLD_FOR of them:
        # a pool's result and its next stage's start, read in one pass, are answered in
        # one message to it (each send wakes another thread or process).
        with self._holding() as outer:
            for i in range(1000):  # bounded, so one busy socket cannot starve the others
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return
                try:
                    handler(frames)
                except ProtocolError as exc:
                    self._drop("dropped a message: %s", exc)
                if outer and i % HOLD_FOR == HOLD_FOR - 1:
                    self._send_held()

    def _drain_control(self) -> None:
        """Like `_drain`, keeping each message's ZAP user id (the sender's key name)."""
        for _ in range(1000):
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            user = ""
            if self.access.curve:
                try:
                    user = str(frames[-1].get("User-Id") or "")
                except zmq.ZMQError:
                    user = ""
            try:
                self._on_control([f.bytes for f in frames], user)
            except ProtocolError as exc:
                self._drop("dropped a message: %s", exc)

    def _feed(self, event: Event) -> None:
        # A wave plan finishes thousands of stages at once (pivot/gcpause.py).
        with self._holding(), paused():
            for command in self.state.handle(event):
                self._execute(command)
            while self._deferred:
                for command in self.state.handle(self._deferred.pop(0)):
                    self._execute(command)

    @contextlib.contextmanager
    def _holding(self) -> Iterator[bool]:
        """What the block sends (state events, messages to pools) is held and sent at its
        end; a block within another sends with the outer one. Yields whether it is the
        outermost."""
        outer = self._held is None
        if outer:
            self._held = []
        try:
            yield outer
        finally:
            if outer:
                try:
                    self._send_held()
                finally:  # a send that raised must not leave every later step held
                    self._held = None

    def _send_held(self) -> None:
        """What the step under way sends: to each pool, its messages as the frames of
        one (a pool reads a frame at a time: each is one message to it, in order); then
        the state events, in messages of up to EVENTS_PER_MESSAGE: a wave plan that
        skips 10,000 stages was 10,000 sends, each giving the GIL to a display thread in
        this process (~25 us a send)."""
        if self._held_work:
            for identity, payloads in self._held_work.items():
                self.work.send_multipart([identity, *payloads])
            self._held_work.clear()
        held = self._held
        if held:
            for i in range(0, len(held), EVENTS_PER_MESSAGE):
                self.events.send_multipart([b"state", *held[i : i + EVENTS_PER_MESSAGE]])
            held.clear()

    def _emit(self, topic: bytes, payload: bytes) -> None:
        """State events wait for the end of the step (`_feed`); a log line goes at once,
        after them: one line a message, so that the displays' queue bound
        (PIVOT_EVENTS_HWM) still counts what a chatty stage prints line by line."""
        if topic == b"state" and self._held is not None:
            self._held.append(payload)
            return
        self._send_held()
        self.events.send_multipart([topic, payload])

    def _execute(self, command: Command) -> None:
        match command:
            case SendWork(pool, PlanWave() as plan) if self._planned_already(pool, plan):
                pass
            case SendWork(pool, msg):
                self._to_pool(pool.encode(), encode(msg, sender=SENDER))
                self.state.note_sent(pool, self.clock())
            case Reply(client, msg):
                if client:  # b"": a request the broker made itself (SIGTERM)
                    self.control.send_multipart([client, encode(msg, sender=SENDER)])
            case Publish(msg, seq, parent):
                self._send_state(msg, seq, parent)
                if self.on_publish is not None:
                    self.on_publish(msg)
                if isinstance(msg, (WaveStarted, WaveFinished, PipelineLoaded, PipelineInvalid, PoolLost)):
                    log.info("%s %s", msg.TAG, _summary(msg), extra={"wave": getattr(msg, "wave", None)})
            case PublishLog(msg, seq):
                self._emit(b"log", encode(msg, sender=SENDER, seq=seq))
            case Note(text):
                log.warning("%s", text)
            case LoadOwnManifest(load=load):
                self._load_own_manifest(load)
            case ConfirmChanges(paths, unsettled):
                if self._checker is None:
                    # Imported on first use: the state cache (sqlite3) is not needed to
                    # start an engine, whose start every process's imports slow down.
                    from broker.changes import ChangeChecker

                    self._checker = ChangeChecker(self.root, self.ctx, self._confirm_addr)
                self._checker.submit(paths, self._source_readers(), unsettled)

    def _planned_already(self, pool: str, plan: PlanWave) -> bool:
        """Whether `plan` is the wave `planned` holds the answer to, which is then fed
        as the pool's (once the step is done) instead of asking it: the first wave's
        only, so later waves ask."""
        if self.planned is None:
            return False
        (stages, up_to_date), self.planned = self.planned, None
        if tuple(plan.stages) != stages:
            return False
        self._deferred.append(WavePlanned(pool, plan.wave, up_to_date))
        return True

    def _send_state(self, msg: Message, seq: int, parent: str | None = None) -> None:
        self._emit(b"state", encode(msg, sender=SENDER, seq=seq, parent=parent))

    # --- inbound -------------------------------------------------------------------

    def _on_work(self, frames: list[bytes]) -> None:
        """A pool's message: its identity, then what one pass of its loop sent, an
        envelope a frame, in order (docs/protocol.md)."""
        if len(frames) < 2:
            self._drop("dropped a work message with %d frames", len(frames))
            return
        identity = frames[0]
        for payload in frames[1:]:
            try:
                self._on_pool_message(identity, payload)
            except ProtocolError as exc:  # that frame only: the pass's others stand
                self._drop("dropped a message: %s", exc)

    def _on_pool_message(self, identity: bytes, payload: bytes) -> None:
        env = self._decode_or_refuse(self.work, identity, payload, "work")
        if env is None:
            return
        pool = identity.decode(errors="replace")
        now = self.clock()
        msg = env.msg
        if isinstance(msg, PoolHello):
            if msg.pool != pool:
                self._drop("dropped pool_hello: name %r does not match its identity %r", msg.pool, pool)
                return
            self._feed(
                PoolJoined(
                    pool, msg.slots, now, msg.incarnation, frozenset(msg.tags), msg.host, msg.pid,
                    tuple(msg.running.items()), max(0, msg.queue),
                )
            )
            return
        if pool not in self.state.pools:
            # A pool of a broker that restarted (or one this broker gave up): it says
            # hello again when told, instead of after its own silence timeout.
            self.dropped += 1
            if now - self._unknown_told.get(pool, -1e9) >= 1.0:
                self._unknown_told[pool] = now
                log.info("%s from unknown pool %r: asking it for a hello", msg.TAG, pool)
                self._refuse(self.work, identity, "unknown", "this broker does not know this pool: say pool_hello")
            return
        self._feed(PoolHeard(pool, now))
        match msg:
            case Heartbeat():
                pass
            case PoolLeaving():
                self._feed(PoolGone(pool, "the pool stopped", confirmed=True, leaving=True))
            case ManifestLoaded(handed=token, load=load) if token:
                self._feed(self._handed_manifest(pool, token, load))
            case ManifestLoaded(manifest=wire, load=load) if pool == self.state.manifest_source:
                self._feed(self._check_manifest(pool, wire, load))
            case ManifestLoaded(manifest=wire, load=load):
                try:
                    self._feed(PoolManifest(pool, Manifest.from_wire(dict(wire)), load=load))
                except ProtocolError as exc:
                    self._feed(PoolManifest(pool, None, f"unreadable manifest: {exc}", load))
            case ManifestFailed(message=message, detail=detail, load=load) if pool == self.state.manifest_source:
                self._feed(ManifestRejected(message, detail, pool, load))
            case ManifestFailed(message=message, load=load):
                self._feed(PoolManifest(pool, None, message, load))
            case StageRunning(attempt=attempt, reason_code=code, reason=reason, details=details):
                self._feed(StageRunningReported(pool, attempt, code, reason, details))
            case StageOutput(attempt=attempt, lines=lines):
                self._feed(OutputReceived(pool, attempt, tuple((str(s), str(t), bool(p)) for s, t, p in lines)))
            case WavePlan(wave=wave, up_to_date=up_to_date):
                self._feed(WavePlanned(pool, wave, tuple(up_to_date)))
            case StageResult():
                self._feed(
                    ResultReceived(
                        pool, msg.attempt, msg.status, msg.reason_code, msg.reason,
                        msg.duration_s, msg.error, tuple(msg.logs), msg.details, msg.incarnation,
                    )
                )
            case Notice(message=message):
                self._feed(Noticed(f"pool {pool}: {message}"))
            case InstallChanged(folders=folders):
                self._feed(InstallReported(pool, tuple(folders)))
            case _:
                self._drop("dropped %s: not a message a pool sends", msg.TAG)

    def _load_own_manifest(self, load: int = 0) -> None:
        """The broker's own loader (a standalone broker is its manifest source): a
        process beside the broker, waited for in a thread; the broker imports no user
        code. The answer comes back through an inproc pair the loop polls, naming `load`."""
        from pivot.errors import PivotError
        from pivot.launch.spawn import LoaderRun

        def run() -> None:
            try:
                manifest = LoaderRun(self.root).result()
                payload = [b"ok", encode(ManifestLoaded("", manifest.to_wire(), load), sender=SENDER)]
            except PivotError as exc:
                detail = exc.detail if isinstance(exc, PipelineError) else ""
                payload = [b"failed", encode(ManifestFailed("", str(exc), detail, load), sender=SENDER)]
            except Exception as exc:  # ours: said like a load that failed, never a thread's traceback
                log.exception("the broker's own loader failed")
                message = f"loading the pipeline failed inside Pivot: {type(exc).__name__}: {exc}"
                payload = [b"failed", encode(ManifestFailed("", message, "", load), sender=SENDER)]
            try:
                sender = self.ctx.socket(zmq.PAIR)
            except zmq.ZMQError:
                return  # the broker stopped while it loaded (its context is closed): nobody waits
            try:
                sender.setsockopt(zmq.LINGER, 1000)
                sender.connect(self._loaded_addr)
                sender.send_multipart(payload)
            except zmq.ZMQError:
                pass  # the same, a moment later
            finally:
                sender.close()

        threading.Thread(target=run, name="own-loader", daemon=True).start()

    def _on_own_manifest(self, frames: list[bytes]) -> None:
        env = decode_or_log(frames[-1], "own loader")
        if env is None:
            return
        match env.msg:
            case ManifestLoaded(manifest=wire, load=load):
                self._feed(self._check_manifest("", wire, load))
            case ManifestFailed(message=message, detail=detail, load=load):
                self._feed(ManifestRejected(message, detail, "", load))

    def _handed_manifest(self, pool: str, token: str, load: int) -> Event:
        """A pool's manifest named by its token (`self.handed`): held here, not sent."""
        held = self.handed.get(token)
        if held is None:
            why = "a pipeline handed in-process that this broker does not hold"
            if pool == self.state.manifest_source:
                return ManifestRejected(f"the pool's manifest cannot be read: {why}", "", pool, load)
            return PoolManifest(pool, None, f"unreadable manifest: {why}", load)
        manifest, graph = held
        if pool != self.state.manifest_source:
            return PoolManifest(pool, manifest, load=load)
        if graph is None:
            try:
                graph = build_graph(manifest)
            except PipelineError as exc:
                return ManifestRejected(str(exc), exc.detail, pool, load)
        return ManifestArrived(pool, manifest, graph, load)

    def _check_manifest(self, pool: str, wire: dict[str, object], load: int) -> Event:
        try:
            manifest = Manifest.from_wire(dict(wire))
            # A dep that does not exist fails only its stage (dep_missing); live, creating
            # it runs the stage. The rest of the pipeline keeps working.
            graph = build_graph(manifest)
        except PipelineError as exc:
            return ManifestRejected(str(exc), exc.detail, pool, load)
        return ManifestArrived(pool, manifest, graph, load)

    def _on_control(self, frames: list[bytes], user: str = "") -> None:
        if len(frames) != 2:
            self._drop("dropped a control message with %d frames", len(frames))
            return
        client, payload = frames
        env = self._decode_or_refuse(self.control, client, payload, "control")
        if env is None:
            return
        role = self.access.role_of(user)
        refusal = self.access.refusal(role, env.msg)
        if refusal is not None:
            log.warning("refused %s from %r: %s", env.msg.TAG, user or env.sender, refusal)
            self._refuse(self.control, client, "access", refusal)
            return
        match env.msg:
            case Hello() as hello:
                self._hello(client, hello, role)
            case PsRequest():
                self.control.send_multipart([client, encode(PsReply(self.ps()), sender=SENDER)])
            case RunRequest(stages=stages, force=force, keep_going=keep_going, select=select, glob=glob):
                self._feed(RunRequested(client, tuple(stages), force, keep_going, env.id, select, glob))
            case SnapshotRequest():
                self._feed(SnapshotRequested(client))
            case ShutdownRequest(grace_s=grace):
                self._feed(ShutdownRequested(client, grace, self.clock()))
            case PauseRequest(paused=paused):
                self._feed(PauseRequested(client, paused))
            case PoolExited(pool=pool, returncode=rc):
                self._feed(PoolGone(pool, describe_exit(rc)))
            case _:
                self._drop("dropped %s: not a control request", env.msg.TAG)

    def _decode_or_refuse(
        self, sock: zmq.Socket[bytes], peer: bytes, payload: bytes, where: str
    ) -> Envelope | None:
        """Decode a message from `peer` on a ROUTER socket; one of another protocol
        version is answered with `refused` (naming both versions) and logged."""
        try:
            return decode(payload)
        except VersionMismatch as exc:
            who = f"{exc.kind or 'a message'} from {exc.sender or peer!r}"
            log.warning(
                "refused %s on the %s link: it speaks protocol version %s, this broker speaks %d",
                who, where, exc.version, PROTOCOL_VERSION,
            )
            reason = f"protocol version {exc.version} is not this broker's version {PROTOCOL_VERSION}"
            self._refuse(sock, peer, "version", reason)
            self.dropped += 1
            return None
        except ProtocolError as exc:
            self._drop("dropped a malformed message on %s (%d bytes): %s", where, len(payload), exc)
            return None

    def _drop(self, what: str, *args: object) -> None:
        """A message not acted on (malformed, of another version, from a stranger, of the
        wrong kind): counted (`pivot ps --json` shows it) and logged."""
        self.dropped += 1
        log.warning(what, *args)

    def _refuse(self, sock: zmq.Socket[bytes], peer: bytes, code: str, reason: str) -> None:
        payload = encode(Refused(code, reason, PROTOCOL_VERSION), sender=SENDER)
        if sock is self.work:
            self._to_pool(peer, payload)  # after what is held for it: a pool's messages keep their order
        else:
            sock.send_multipart([peer, payload])

    def _to_pool(self, identity: bytes, payload: bytes) -> None:
        """Every message to a pool goes through here: held with the step's others when a
        step is under way (`_holding`), else sent now."""
        if self._held is not None:
            self._held_work.setdefault(identity, []).append(payload)
        else:
            self.work.send_multipart([identity, payload])

    def _hello(self, client: bytes, hello: Hello, role: str) -> None:
        ours = self.identity.project
        if hello.project and ours and hello.project != ours:
            why = (
                f"{hello.role} {hello.name!r} on {hello.host} sees another project "
                f"(id {hello.project}) than this broker (id {ours}, {self.root}); every "
                "process of one engine must see the same project folder and .pivot/ "
                "(on other hosts: a shared file system)"
            )
            log.warning("refused hello: %s", why)
            self._refuse(self.control, client, "project", why)
            return
        now = self.clock()
        seen = self.seen.get(hello.name)
        first = seen.first if seen is not None and seen.pid == hello.pid else now
        self.seen[hello.name] = Seen(hello.role, hello.name, hello.pid, hello.host, first, now)
        e = self.endpoints
        reply = HelloReply(
            self.identity.id, self.identity.pid, self.identity.host, e.work, e.events, e.changes,
            ours, self.state.heartbeat_s, self.state.liveness, role,
        )
        self.control.send_multipart([client, encode(reply, sender=SENDER)])

    def ps(self) -> list[dict[str, object]]:
        """The engine's processes: this broker, its pools, the watchers seen lately."""
        now = self.clock()
        rows: list[dict[str, object]] = [{
            "role": "broker", "name": self.identity.id, "pid": self.identity.pid,
            "host": self.identity.host, "uptime_s": round(now - self.started, 1),
            "endpoint": self.endpoints.control, "dropped": self.dropped,
        }]
        for name, pool in sorted(self.state.pools.items()):
            rows.append({
                "role": "pool", "name": name, "pid": pool.pid, "host": pool.host,
                "uptime_s": round(now - pool.joined, 1), "slots": pool.slots,
                # It runs up to `slots` of its attempts; the others wait in its queue.
                "busy": min(len(pool.attempts), pool.slots),
                "queued": max(0, len(pool.attempts) - pool.slots), "tags": sorted(pool.tags),
                # Whether its own manifest was checked against the engine's, and the
                # stages it loaded other code for (it gets none of those).
                "current": pool.current, "mismatched": sorted(pool.mismatched),
            })
        if self.local_ps is not None:
            rows += self.local_ps(now)
        for seen in sorted(self.seen.values(), key=lambda s: s.name):
            if seen.role == "watcher" and now - seen.last < WATCHER_SEEN_S:
                rows.append({
                    "role": "watcher", "name": seen.name, "pid": seen.pid, "host": seen.host,
                    "uptime_s": round(now - seen.first, 1),
                })
        return rows

    def _on_changes(self, frames: list[bytes]) -> None:
        if len(frames) != 1:  # a watcher sends one frame (PUSH): anything else is not one
            self._drop("dropped a changes message with %d frames", len(frames))
            return
        env = decode_or_log(frames[0], "changes")
        if env is None:
            self.dropped += 1
            return
        match env.msg:
            case FilesChanged(paths=paths, settled=settled):
                self._feed(FilesReported(tuple(paths), self.clock(), env.id, settled))
            case WatcherReady(pid=pid):
                self._feed(WatcherJoined(pid))
            case other:
                self._drop("dropped %s: not a message a watcher sends", other.TAG)

    def _source_readers(self) -> SourceReaders | None:
        """Who reads each source file of the pipeline the engine runs, made once a manifest."""
        from broker.changes import SourceReaders

        manifest = self.state.manifest
        if manifest is None:
            return None
        if self._readers is None or self._readers[0] is not manifest:
            try:
                self._readers = (manifest, SourceReaders(manifest))
            except PipelineError:  # two producers of a path: the load said so; rows alone
                return None
        return self._readers[1]

    def _on_confirmed(self, frames: list[bytes]) -> None:
        paths = tuple(p.decode() for p in frames[1:]) if frames and frames[0] == b"ok" else ()
        self._feed(ChangesConfirmed(paths))

    def _on_subscription(self, frames: list[bytes]) -> None:
        frame = frames[0] if frames else b""
        if frame[:1] not in (b"\x00", b"\x01"):  # not a (un)subscription: a stray message
            self._drop("dropped a %d-byte message sent to the events socket", len(frame))
            return
        if frame[:1] == b"\x01":
            # Tell every subscriber the current seq: the new one now knows it is live.
            self._send_state(EventsWelcome(self.state.seq), seq=0)


def _summary(msg: Message) -> str:
    """A short text of an event for the engine's log records."""
    fields = {k: v for k, v in dataclasses.asdict(msg).items() if k != "stages"}
    return " ".join(f"{k}={v}" for k, v in fields.items() if v not in ([], None, ""))[:500]
