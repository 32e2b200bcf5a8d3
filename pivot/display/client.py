"""A display's link to the broker: live events in order, never losing a state event.

The clone pattern: subscribe, wait for the broker's welcome (the subscription is then
live), take a snapshot over the control link, and apply only events newer than it. A
gap in state sequence numbers, or a tick announcing a newer seq than we saw, triggers a
new snapshot. Log lines have their own counter; gaps there are only counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import zmq

from pivot.errors import InfraError, UserError
from pivot.protocol.codec import Envelope
from pivot.protocol.messages import (
    BusTick,
    EventsWelcome,
    Message,
    Refused,
    RunReply,
    RunRequest,
    ShutdownReply,
    ShutdownRequest,
    Snapshot,
    SnapshotRequest,
)
from pivot.transport.rundir import Endpoints
from pivot.transport.sockets import decode_or_log, make_socket, send_msg

if TYPE_CHECKING:
    from pivot.transport.curve import ClientKeys

__all__ = ["BROKER_SILENCE_S", "BrokerSilent", "EngineClient"]

BROKER_SILENCE_S = 5.0


class BrokerSilent(InfraError):
    """No event nor tick from the broker for BROKER_SILENCE_S: it is gone (or hung)."""


class EngineClient:
    """Control requests and the event stream, for one display or CLI command."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoints: Endpoints,
        name: str,
        keys: ClientKeys | None = None,
    ) -> None:
        self.name = name
        self.sub = make_socket(ctx, zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 100_000)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.control = make_socket(ctx, zmq.DEALER)
        if keys is not None:
            keys.apply(self.sub)
            keys.apply(self.control)
        self.sub.connect(endpoints.events)
        self.control.connect(endpoints.control)
        self.last_seq = 0
        self.last_log_seq = 0
        self.dropped_logs = 0
        self.missed = 0  # state events lost while this display fell behind, not yet said
        self.last_heard = time.monotonic()
        self.joined = False

    def close(self) -> None:
        self.sub.close(linger=0)
        self.control.close(linger=0)

    # --- control requests ----------------------------------------------------------

    def request(self, msg: Message, reply_type: type[Message], timeout: float = 10.0) -> Message:
        """Send a control request and wait for its reply (other replies are dropped)."""
        send_msg(self.control, msg, sender=self.name)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.control.poll(int(left * 1000) + 1):
                break
            env = decode_or_log(self.control.recv(), "control")
            _raise_refused(env)
            if env is not None and isinstance(env.msg, reply_type):
                return env.msg
        raise InfraError(f"the broker did not answer {msg.TAG} within {timeout:.0f} s")

    def send(self, msg: Message) -> None:
        send_msg(self.control, msg, sender=self.name)

    def take_reply(self, reply_type: type[Message]) -> Message | None:
        """A reply of `reply_type` if one has arrived (never blocks; others are dropped)."""
        while self.control.poll(0):
            env = decode_or_log(self.control.recv(), "control")
            _raise_refused(env)
            if env is not None and isinstance(env.msg, reply_type):
                return env.msg
        return None

    def run(self, stages: list[str], force: bool, keep_going: bool) -> RunReply:
        """Request a run and wait for the answer (which waits for a manifest)."""
        reply = self.request(RunRequest(stages, force, keep_going), RunReply)
        assert isinstance(reply, RunReply)
        return reply

    def snapshot(self) -> Snapshot:
        snap = self.request(SnapshotRequest(), Snapshot)
        assert isinstance(snap, Snapshot)
        return snap

    def shutdown(self, timeout: float, grace_s: float = 0.0) -> None:
        self.request(ShutdownRequest(grace_s), ShutdownReply, timeout)

    # --- events --------------------------------------------------------------------

    def join(self, timeout: float = 10.0) -> Snapshot:
        """Wait until the subscription is live, then take the initial snapshot."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sub.poll(int(left * 1000) + 1):
                break
            if any(isinstance(env.msg, EventsWelcome) for env in self._recv_events()):
                return self._resync()
        raise InfraError(f"no welcome from the broker's event socket within {timeout:.0f} s")

    def _recv_events(self) -> list[Envelope]:
        """One message of the events link: its topic, then one or more envelopes."""
        frames = self.sub.recv_multipart()
        self.last_heard = time.monotonic()
        return [env for frame in frames[1:] if (env := decode_or_log(frame, "events")) is not None]

    def _resync(self) -> Snapshot:
        snap = self.snapshot()
        self.last_seq = snap.seq
        if not self.joined:  # log lines from before we joined are not ours to count
            self.last_log_seq = snap.log_seq
            self.joined = True
        return snap

    def take_missed(self) -> int:
        """State events lost since the last call (the display was stopped or too slow and
        the broker's queue for it overflowed); a snapshot has made up for them."""
        missed, self.missed = self.missed, 0
        return missed

    def events(self, poll_s: float) -> Iterator[Envelope | Snapshot | None]:
        """Yield live events in order, a Snapshot after a gap, or None after `poll_s` idle.

        Raises InfraError when the broker is silent (no event or tick) too long.
        """
        while True:
            before = time.monotonic()
            if not self.sub.poll(int(poll_s * 1000)):
                now = time.monotonic()
                if now - before > BROKER_SILENCE_S:
                    # This process was stopped (Ctrl-Z, then fg), the broker thread with
                    # it: the silence is ours. Listen for a fresh window.
                    self.last_heard = now
                if now - self.last_heard > BROKER_SILENCE_S:
                    raise BrokerSilent(f"the broker has been silent for {BROKER_SILENCE_S:.0f} s")
                yield None
                continue
            for env in self._recv_events():
                yield from self._follow(env)

    def _follow(self, env: Envelope) -> Iterator[Envelope | Snapshot]:
        """What one event means for the caller: itself, a snapshot after a gap, or nothing."""
        msg = env.msg
        if isinstance(msg, EventsWelcome):
            return
        if isinstance(msg, BusTick):
            if msg.log_seq > self.last_log_seq:
                self.dropped_logs += msg.log_seq - self.last_log_seq
                self.last_log_seq = msg.log_seq
            if msg.seq > self.last_seq:
                self.missed += msg.seq - self.last_seq
                yield self._resync()
            return
        if msg.TAG == "log":
            if env.seq <= self.last_log_seq:
                return
            self.dropped_logs += env.seq - self.last_log_seq - 1
            self.last_log_seq = env.seq
            yield env
            return
        if env.seq <= self.last_seq:
            return  # already covered by a snapshot
        if env.seq > self.last_seq + 1:
            self.missed += env.seq - self.last_seq - 1
            yield self._resync()
            return
        self.last_seq = env.seq
        yield env


def _raise_refused(env: Envelope | None) -> None:
    """The broker refused a request (a key whose role may not make it): the user's to fix."""
    if env is not None and isinstance(env.msg, Refused):
        raise UserError(f"the broker refused: {env.msg.reason}")
