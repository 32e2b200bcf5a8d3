"""Thin pyzmq helpers: sockets with explicit limits, and sending/receiving envelopes.

Every socket gets LINGER 0 (a pending message must never hang shutdown), a 16 MiB
MAXMSGSIZE (a larger message is dropped by libzmq and the link reset; the receiving
side logs it), and a reconnect interval starting at 10 ms (libzmq's default is 100 ms)
that backs off to 1 s. The pool and watcher `pivot up` starts beside its broker connect
before it has bound: they retry every 2-4 ms without backing off (`steady`), since
doubling intervals (10, 20, 40 ms...) made them wait up to the last one after the bind.
"""

from __future__ import annotations

import logging

import zmq

from pivot.errors import ProtocolError
from pivot.protocol.codec import Envelope, decode, encode
from pivot.protocol.messages import Message

__all__ = ["MAX_MESSAGE_BYTES", "decode_or_log", "make_socket", "send_msg"]

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
RECONNECT_MS = 10
RECONNECT_MAX_MS = 1000
STEADY_RECONNECT_MS = 2  # libzmq adds up to as much again at random


def make_socket(ctx: zmq.Context[zmq.Socket[bytes]], kind: int, *, steady: bool = False) -> zmq.Socket[bytes]:
    """A socket with the limits above; `steady` for a peer expected within a second."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.RECONNECT_IVL, STEADY_RECONNECT_MS if steady else RECONNECT_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 0 if steady else RECONNECT_MAX_MS)
    return sock


def send_msg(
    sock: zmq.Socket[bytes],
    msg: Message,
    *,
    sender: str,
    prefix: list[bytes] | None = None,
    seq: int = 0,
    parent: str | None = None,
) -> None:
    payload = encode(msg, sender=sender, seq=seq, parent=parent)
    if prefix:
        sock.send_multipart([*prefix, payload], copy=False)
    else:
        sock.send(payload, copy=False)


def decode_or_log(payload: bytes, where: str) -> Envelope | None:
    """Decode a payload; a malformed or unknown message is logged and dropped."""
    try:
        return decode(payload)
    except ProtocolError as exc:
        log.warning("dropped a malformed message on %s (%d bytes): %s", where, len(payload), exc)
        return None
