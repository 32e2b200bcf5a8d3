"""Who may do what: ZAP answers for CURVE handshakes, and control requests by role.

Without keys (ipc, or tcp on loopback) every client is "local" and may do everything.
With keys, libzmq asks the broker (ZAP, RFC 27) for every CURVE handshake, naming the
link (the socket's ZAP domain) and the client's public key: an unknown key, or a key
whose role may not use that link, is refused there and logged with the key's
fingerprint and the peer's address; the client's socket monitor then reports the
failed handshake. On the control link, where every role says hello, each request is
checked against the sender's role (libzmq hands the ZAP user id over with each message).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pivot.protocol.messages import (
    Hello,
    Message,
    PsRequest,
    SnapshotRequest,
)

if TYPE_CHECKING:  # only a broker with keys loads them (the one-shot `repro` has none)
    from pivot.transport.curve import AllowList

__all__ = ["LOCAL", "Access"]

log = logging.getLogger(__name__)

LOCAL = "local"
ZAP_VERSION = b"1.0"
# Control requests each role may make (operator and local: all).
_VIEWER = (Hello, SnapshotRequest, PsRequest)
_ALLOWED: dict[str, tuple[type[Message], ...]] = {
    "viewer": _VIEWER,
    "pool": (Hello,),
    "watcher": (Hello,),
}


class Access:
    def __init__(self, allow: AllowList | None) -> None:
        self.allow = allow
        self.roles: dict[str, str] = {}  # ZAP user id (the key's name) -> role

    @property
    def curve(self) -> bool:
        return self.allow is not None

    def zap(self, frames: list[bytes]) -> list[bytes]:
        """The reply to one ZAP request (frames as libzmq sends them)."""
        if len(frames) < 6:
            log.warning("dropped a malformed ZAP request (%d frames)", len(frames))
            return [ZAP_VERSION, b"", b"500", b"malformed request", b"", b""]
        version, request_id, domain, address, _identity, mechanism = frames[:6]
        key = frames[6] if len(frames) > 6 else b""
        peer = address.decode(errors="replace")
        link = domain.decode(errors="replace")
        if self.allow is None or mechanism != b"CURVE" or len(key) != 32:
            log.warning("refused a %s handshake on the %s link from %s", mechanism.decode(errors="replace"), link, peer)
            return [version, request_id, b"400", b"CURVE required", b"", b""]
        from zmq.utils import z85

        from pivot.transport.curve import fingerprint

        public = z85.encode(key)
        client, why = self.allow.check(public, link)
        if why:
            who = f"key {client.name!r} ({client.role})" if client else "an unknown key"
            log.warning(
                "refused %s (fingerprint %s) on the %s link from %s: %s",
                who, fingerprint(public), link, peer, why,
            )
            return [version, request_id, b"400", why.encode(), b"", b""]
        assert client is not None
        self.roles[client.name] = client.role
        return [version, request_id, b"200", b"OK", client.name.encode(), b""]

    def role_of(self, user_id: str) -> str:
        """The role of a control message's sender (its ZAP user id); "local" without keys."""
        if self.allow is None:
            return LOCAL
        return self.roles.get(user_id, "")

    def refusal(self, role: str, msg: Message) -> str | None:
        """Why a sender of `role` may not make the request `msg`; None when it may."""
        if role in (LOCAL, "operator"):
            return None
        allowed = _ALLOWED.get(role, ())
        if isinstance(msg, allowed):
            return None
        what = msg.TAG.removesuffix("_request")
        return (
            f"a {role or 'unknown'} key may not {what.replace('_', ' ')}: it needs an operator key "
            "(`pivot keys add NAME --role operator`)"
        )
