"""Endpoint addresses as users type them, and what a client makes of a broker's announcement.

A user names one endpoint, the broker's control socket: `tcp://HOST:PORT`, `HOST:PORT`,
`ipc:///path/control.sock` or a plain path to the socket file. The broker binds its
other sockets itself (on ports it is told or free ones) and announces them at hello; a
broker bound to a wildcard host (`0.0.0.0`, `*`, `::`) announces that host, and the
client puts the host it reached the control socket at in its place.
"""

from __future__ import annotations

import ipaddress
import socket

from pivot.errors import UserError

__all__ = [
    "WILDCARD_HOSTS",
    "host_of",
    "is_loopback",
    "normalize",
    "reachable",
    "with_port",
]

WILDCARD_HOSTS = frozenset({"0.0.0.0", "*", "::", "[::]"})


def normalize(text: str) -> str:
    """`text` as a ZeroMQ endpoint; a UserError naming what is wrong otherwise."""
    text = text.strip()
    if not text:
        raise UserError("empty broker endpoint; give tcp://HOST:PORT or ipc://PATH")
    if text.startswith("ipc://"):
        if len(text) <= len("ipc://"):
            raise UserError(f"broker endpoint {text!r} names no socket file")
        return text
    if text.startswith("tcp://"):
        rest = text[len("tcp://") :]
    elif "://" in text:
        scheme = text.split("://", 1)[0]
        raise UserError(f"broker endpoint {text!r}: transport {scheme!r} is not supported; use tcp:// or ipc://")
    elif text.startswith(("/", ".")) or text.endswith(".sock"):
        return f"ipc://{text}"
    else:
        rest = text
    host, sep, port = rest.rpartition(":")
    if not sep or not host:
        raise UserError(f"broker endpoint {text!r} has no host:port; e.g. tcp://127.0.0.1:5555")
    if port != "*" and not (port.isdigit() and 0 <= int(port) <= 65535):
        raise UserError(f"broker endpoint {text!r}: port {port!r} is not a number from 0 to 65535")
    return f"tcp://{host}:{port}"


def host_of(endpoint: str) -> str | None:
    """The host of a tcp endpoint (brackets of an IPv6 address removed); None for ipc."""
    if not endpoint.startswith("tcp://"):
        return None
    host = endpoint[len("tcp://") :].rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def with_port(endpoint: str, port: int | str) -> str:
    """The tcp endpoint on the same host as `endpoint` with another port."""
    host = endpoint[len("tcp://") :].rpartition(":")[0]
    return f"tcp://{host}:{port}"


def is_loopback(endpoint: str) -> bool:
    """Whether binding `endpoint` exposes nothing beyond this machine: ipc, or tcp on a
    loopback address (a name is resolved; a wildcard host is not loopback)."""
    host = host_of(endpoint)
    if host is None:
        return True
    if host in WILDCARD_HOSTS or host == "":
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0])).is_loopback for info in infos)


def reachable(announced: str, control: str) -> str:
    """Where a client connects for an endpoint the broker announced: a wildcard host is
    replaced by the host the client reached the control socket at."""
    host = host_of(announced)
    if host is None or (host not in WILDCARD_HOSTS and host != ""):
        return announced
    control_host = host_of(control)
    if control_host is None:
        return announced
    if ":" in control_host:  # IPv6
        control_host = f"[{control_host}]"
    return with_port(f"tcp://{control_host}:0", announced.rpartition(":")[2])
