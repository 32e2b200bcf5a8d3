"""The broker's I/O shell: binds every endpoint, feeds BrokerState, executes its commands.

    watcher  --PUSH-->  PULL    changes   (reserved for the watcher)
    pool(s) <-DEALER->  ROUTER  work      hello, manifests, stages, results, heartbeats
    clients <-DEALER->  ROUTER  control   run, snapshot, pool exits, shutdown
    displays <--SUB---  XPUB    events    [b"state", msg] with sequence numbers; [b"log", msg]

One thread, one poll loop whose timeout is the next timer. `stop()` may be called from
any thread: it writes to an inproc pipe the loop polls.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from broker.changes import ChangeChecker
from broker.events import (
    ChangesConfirmed,
    Command,
    ConfirmChanges,
    Event,
    FilesReported,
    ManifestArrived,
    ManifestRejected,
    PauseRequested,
    PoolGone,
    PoolHeard,
    PoolJoined,
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
from pivot.pipeline.graph import build_graph
from pivot.pipeline.manifest import Manifest
from pivot.protocol.codec import encode
from pivot.protocol.messages import (
    BusTick,
    EventsWelcome,
    FilesChanged,
    Heartbeat,
    ManifestFailed,
    ManifestLoaded,
    Message,
    PauseRequest,
    PipelineInvalid,
    PipelineLoaded,
    PoolExited,
    PoolHello,
    PoolLost,
    RunRequest,
    ShutdownRequest,
    SnapshotRequest,
    StageResult,
    StageRunning,
    WatcherReady,
    WaveFinished,
    WavePlan,
    WaveStarted,
)
from pivot.transport.rundir import Endpoints
from pivot.transport.sockets import decode_or_log, make_socket

__all__ = ["BrokerService"]

log = logging.getLogger(__name__)

SENDER = "broker"
TICK_S = 0.25
BUS_TICK_S = 1.0
EVENTS_HWM = 100_000


class BrokerService:
    def __init__(
        self,
        root: Path,
        endpoints: Endpoints,
        ctx: zmq.Context[zmq.Socket[bytes]],
        state: BrokerState | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.endpoints = endpoints
        self.ctx = ctx
        self.state = state or BrokerState()
        self.clock = clock
        self._stop_addr = f"inproc://broker-stop-{id(self)}"
        self._confirm_addr = f"inproc://broker-confirm-{id(self)}"
        self._checker: ChangeChecker | None = None
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
        self.events.setsockopt(zmq.SNDHWM, EVENTS_HWM)
        self.changes = make_socket(ctx, zmq.PULL)
        self.stop_pipe = make_socket(ctx, zmq.PAIR)
        # The change checker thread answers on its own inproc pair (hashing is off the loop).
        self.confirmed = make_socket(ctx, zmq.PAIR)
        self.confirmed.bind(self._confirm_addr)
        self._sockets = [
            self.work, self.control, self.events, self.changes, self.confirmed, self.stop_pipe
        ]
        self.stop_pipe.bind(self._stop_addr)
        self._stop_sender = make_socket(ctx, zmq.PAIR)
        self._stop_sender.connect(self._stop_addr)
        self.work.bind(self.endpoints.work)
        self.control.bind(self.endpoints.control)
        self.events.bind(self.endpoints.events)
        self.changes.bind(self.endpoints.changes)
        self.bound = True

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
            for sock in self._sockets:
                sock.close(linger=0)

    # --- the loop ------------------------------------------------------------------

    def _loop(self) -> None:
        poller = zmq.Poller()
        for sock in (self.work, self.control, self.events, self.changes, self.confirmed, self.stop_pipe):
            poller.register(sock, zmq.POLLIN)
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
            if self.work in ready:
                self._drain(self.work, self._on_work)
            if self.control in ready:
                self._drain(self.control, self._on_control)
            if self.events in ready:
                self._drain(self.events, self._on_subscription)
            if self.changes in ready:
                self._drain(self.changes, self._on_changes)
            if self.confirmed in ready:
                self._drain(self.confirmed, self._on_confirmed)
            now = self.clock()
            deadline = self.state.next_deadline()
            if now >= next_tick or (deadline is not None and now >= deadline):
                next_tick = now + TICK_S
                self._feed(Tick(now))
            if now >= next_bus:
                next_bus = now + BUS_TICK_S
                self._send_state(BusTick(self.state.seq, self.state.log_seq), seq=0)

    def _drain(self, sock: zmq.Socket[bytes], handler: Callable[[list[bytes]], None]) -> None:
        for _ in range(1000):  # bounded, so one busy socket cannot starve the others
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                handler(frames)
            except ProtocolError as exc:
                log.warning("dropped a message: %s", exc)

    def _feed(self, event: Event) -> None:
        for command in self.state.handle(event):
            self._execute(command)

    def _execute(self, command: Command) -> None:
        match command:
            case SendWork(pool, msg):
                self.work.send_multipart([pool.encode(), encode(msg, sender=SENDER)])
                self.state.note_sent(pool, self.clock())
            case Reply(client, msg):
                self.control.send_multipart([client, encode(msg, sender=SENDER)])
            case Publish(msg, seq):
                self._send_state(msg, seq)
                if isinstance(msg, (WaveStarted, WaveFinished, PipelineLoaded, PipelineInvalid, PoolLost)):
                    log.info("%s %s", msg.TAG, _summary(msg), extra={"wave": getattr(msg, "wave", None)})
            case PublishLog(msg, seq):
                self.events.send_multipart([b"log", encode(msg, sender=SENDER, seq=seq)])
            case ConfirmChanges(paths):
                if self._checker is None:
                    self._checker = ChangeChecker(self.root, self.ctx, self._confirm_addr)
                self._checker.submit(paths)

    def _send_state(self, msg: Message, seq: int) -> None:
        self.events.send_multipart([b"state", encode(msg, sender=SENDER, seq=seq)])

    # --- inbound -------------------------------------------------------------------

    def _on_work(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            log.warning("dropped a work message with %d frames", len(frames))
            return
        identity, payload = frames
        env = decode_or_log(payload, "work")
        if env is None:
            return
        pool = identity.decode(errors="replace")
        now = self.clock()
        msg = env.msg
        if isinstance(msg, PoolHello):
            if msg.pool != pool:
                log.warning("dropped pool_hello: name %r does not match its identity %r", msg.pool, pool)
                return
            self._feed(PoolJoined(pool, msg.slots, now))
            return
        if pool not in self.state.pools:
            log.warning("dropped %s from unknown pool %r (no hello)", msg.TAG, pool)
            return
        self._feed(PoolHeard(pool, now))
        match msg:
            case Heartbeat():
                pass
            case ManifestLoaded(manifest=wire):
                self._feed(self._check_manifest(pool, wire))
            case ManifestFailed(message=message, detail=detail):
                self._feed(ManifestRejected(message, detail))
            case StageRunning(attempt=attempt, reason_code=code, reason=reason, details=details):
                self._feed(StageRunningReported(pool, attempt, code, reason, details))
            case WavePlan(wave=wave, up_to_date=up_to_date):
                self._feed(WavePlanned(pool, wave, tuple(up_to_date)))
            case StageResult():
                self._feed(
                    ResultReceived(
                        pool, msg.attempt, msg.status, msg.reason_code, msg.reason,
                        msg.duration_s, msg.error,
                        tuple(msg.logs),
                        msg.details,
                    )
                )
            case _:
                log.warning("dropped %s: not a message a pool sends", msg.TAG)

    def _check_manifest(self, pool: str, wire: dict[str, object]) -> Event:
        try:
            manifest = Manifest.from_wire(dict(wire))
            # Live, a dep that does not exist yet fails only its stage (dep_missing), and
            # creating it runs the stage; the rest of the pipeline keeps reacting. A one-
            # shot run reports it up front as a pipeline error.
            graph = build_graph(manifest, None if self.state.live is not None else self.root)
        except PipelineError as exc:
            return ManifestRejected(str(exc), exc.detail)
        return ManifestArrived(pool, manifest, graph)

    def _on_control(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            log.warning("dropped a control message with %d frames", len(frames))
            return
        client, payload = frames
        env = decode_or_log(payload, "control")
        if env is None:
            return
        match env.msg:
            case RunRequest(stages=stages, force=force, keep_going=keep_going):
                self._feed(RunRequested(client, tuple(stages), force, keep_going))
            case SnapshotRequest():
                self._feed(SnapshotRequested(client))
            case ShutdownRequest(grace_s=grace):
                self._feed(ShutdownRequested(client, grace, self.clock()))
            case PauseRequest(paused=paused):
                self._feed(PauseRequested(client, paused))
            case PoolExited(pool=pool, returncode=rc):
                self._feed(PoolGone(pool, _describe_exit(rc)))
            case _:
                log.warning("dropped %s: not a control request", env.msg.TAG)

    def _on_changes(self, frames: list[bytes]) -> None:
        env = decode_or_log(frames[-1], "changes")
        if env is None:
            return
        match env.msg:
            case FilesChanged(paths=paths):
                self._feed(FilesReported(tuple(paths), self.clock()))
            case WatcherReady(pid=pid):
                self._feed(WatcherJoined(pid))
            case other:
                log.warning("dropped %s: not a message a watcher sends", other.TAG)

    def _on_confirmed(self, frames: list[bytes]) -> None:
        paths = tuple(p.decode() for p in frames[1:]) if frames and frames[0] == b"ok" else ()
        self._feed(ChangesConfirmed(paths))

    def _on_subscription(self, frames: list[bytes]) -> None:
        frame = frames[0] if frames else b""
        if frame[:1] == b"\x01":
            # Tell every subscriber the current seq: the new one now knows it is live.
            self._send_state(EventsWelcome(self.state.seq), seq=0)


def _summary(msg: Message) -> str:
    """A short text of an event for the engine's log records."""
    fields = {k: v for k, v in dataclasses.asdict(msg).items() if k != "stages"}
    return " ".join(f"{k}={v}" for k, v in fields.items() if v not in ([], None, ""))[:500]


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        import signal

        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"pool process killed by {name}"
    return f"pool process exited with code {returncode}"
