"""Saying hello to a broker: the one handshake every role makes on the control link.

A client knows one endpoint, the broker's control socket. It sends `hello` (its role,
name, pid, host and the project id it sees) and gets `hello_reply` (the broker's other
endpoints, its id and liveness settings) or `refused` (another protocol version, another
project, a key not allowed this). With CURVE, a key the broker does not know is refused
during the ZeroMQ handshake itself, before any message: the socket monitor reports that
failed handshake, so the client says "authentication failed" instead of waiting. A
client holding another broker's public key gets no such event (the broker cannot read
its first handshake message and just closes the connection): connections that close
again and again before their handshake completes say it, once a plain connection shows
that a ZeroMQ peer is there (it greets at once). A port proxy with no broker behind it
yet (Docker's, while the broker's container starts) also accepts and closes: that is
waiting, not a wrong key.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq

from pivot.errors import Unreachable, UserError
from pivot.protocol.codec import PROTOCOL_VERSION
from pivot.protocol.messages import Hello, HelloReply, Refused
from pivot.transport.address import reachable
from pivot.transport.sockets import decode_or_log, make_socket, send_msg

if TYPE_CHECKING:
    from pivot.transport.curve import ClientKeys

__all__ = ["AuthFailed", "BrokerInfo", "BrokerRefused", "NoBroker", "greet"]

GREET_TIMEOUT_S = 5.0
# Connections closed during the CURVE handshake before a client blames the broker key it
# holds (once could be a broker restarting).
DROPS_BEFORE_BLAME = 3


class NoBroker(Unreachable):
    """No broker answered at the endpoint within the wait."""


class BrokerRefused(UserError):
    """The broker answered `refused`: `code` says why ("version", "project", "access")."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class AuthFailed(BrokerRefused):
    """The CURVE handshake failed: the broker does not know this key, or it is not the
    broker whose public key the client was given."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "auth")


@dataclass(frozen=True)
class BrokerInfo:
    """A broker as its hello reply describes it, endpoints made reachable from here."""

    control: str
    work: str
    events: str
    changes: str
    broker: str  # its id, new at every start
    pid: int
    host: str
    project: str
    heartbeat_s: float
    liveness: int
    access: str


def greet(
    ctx: zmq.Context[zmq.Socket[bytes]],
    control: str,
    *,
    role: str,
    name: str,
    project: str = "",
    timeout: float = GREET_TIMEOUT_S,
    keys: ClientKeys | None = None,
) -> BrokerInfo:
    """Hello to the broker at `control`; its answer within `timeout` seconds.

    Raises NoBroker (nothing answered), BrokerRefused / AuthFailed (it said no)."""
    sock = make_socket(ctx, zmq.DEALER)
    if keys is not None:
        keys.apply(sock)
    # A refused CURVE handshake is otherwise silence: the monitor says so at once.
    monitor = sock.get_monitor_socket(
        zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
    )
    handshakes = _Handshakes(control, curve=keys is not None)
    try:
        sock.connect(control)
        hello = Hello(role, name, os.getpid(), socket.gethostname(), project)
        send_msg(sock, hello, sender=name)
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        while (left := deadline - time.monotonic()) > 0:
            ready = dict(poller.poll(int(left * 1000) + 1))
            if monitor in ready:
                handshakes.check(monitor)
            if sock in ready:
                env = decode_or_log(sock.recv(), "control")
                if env is None:
                    continue
                if isinstance(env.msg, Refused):
                    raise _refusal(env.msg, control)
                if isinstance(env.msg, HelloReply):
                    return _info(env.msg, control)
        raise NoBroker(
            f"no Pivot broker answered at {control} within {timeout:g} s; is it running "
            "(`pivot ping --broker ...`), and is the endpoint right?"
        )
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)


class _Handshakes:
    """What the socket monitor says of the connection's security handshake."""

    def __init__(self, control: str, curve: bool) -> None:
        self.control = control
        self.curve = curve
        self.succeeded = False
        self.drops = 0

    def check(self, monitor: zmq.Socket[bytes]) -> None:
        while monitor.poll(0):
            event = _monitor_event(monitor.recv_multipart())
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.succeeded = True
            elif event == zmq.EVENT_DISCONNECTED and not self.succeeded:
                self.drops += 1
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                raise AuthFailed(
                    f"authentication failed at {self.control}: the broker does not accept this "
                    "client's key (add it with `pivot keys add NAME --role ...` where the "
                    "broker's keys are, then restart the broker), or the broker's public key "
                    "given here (--broker-key / PIVOT_BROKER_KEY) is not that broker's"
                )
            elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                raise AuthFailed(
                    f"the security handshake with {self.control} failed: one side uses CURVE keys "
                    "and the other does not (give --key and --broker-key, or neither)"
                )
        if self.curve and self.drops >= DROPS_BEFORE_BLAME:
            if not _speaks_zmtp(self.control):
                self.drops = 0  # nothing behind the port yet: keep waiting
                return
            raise AuthFailed(
                f"authentication failed at {self.control}: the broker there closed the connection "
                f"during the CURVE handshake {self.drops} times; the broker's public key given "
                "here (--broker-key / PIVOT_BROKER_KEY) is probably not that broker's: copy "
                "broker.key from the broker's keys folder"
            )


def _monitor_event(frames: list[bytes]) -> int:
    """The event number of a socket monitor message (its first frame: a 16-bit event
    and a 32-bit value). Read by hand: zmq.utils.monitor imports asyncio (~28 ms), on
    the path of every client's hello."""
    (event,) = struct.unpack_from("=H", frames[0])
    return int(event)


ZMTP_SIGNATURE_FIRST = 0xFF  # every ZMTP 3 greeting starts with it, sent at once
PROBE_S = 0.3


def _speaks_zmtp(control: str) -> bool:
    """Whether a ZeroMQ peer answers at `control` (tcp): it sends its greeting as soon as
    a connection is made. Anything else (ipc, a bad address) counts as yes."""
    if not control.startswith("tcp://"):
        return True
    host, _, port = control[len("tcp://"):].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_S) as conn:
            conn.settimeout(PROBE_S)
            first = conn.recv(1)
    except (OSError, ValueError):
        return False
    return first[:1] == bytes([ZMTP_SIGNATURE_FIRST])


def _refusal(msg: Refused, control: str) -> BrokerRefused:
    if msg.code == "version":
        text = (
            f"the broker at {control} refused this client: it speaks protocol version "
            f"{msg.version}, this Pivot speaks {PROTOCOL_VERSION}; run the same Pivot "
            "version in every process of one engine"
        )
    else:
        text = f"the broker at {control} refused this client: {msg.reason}"
    return BrokerRefused(text, msg.code)


def _info(reply: HelloReply, control: str) -> BrokerInfo:
    return BrokerInfo(
        control=control,
        work=reachable(reply.work, control),
        events=reachable(reply.events, control),
        changes=reachable(reply.changes, control),
        broker=reply.broker,
        pid=reply.pid,
        host=reply.host,
        project=reply.project,
        heartbeat_s=reply.heartbeat_s,
        liveness=reply.liveness,
        access=reply.access,
    )
