"""CURVE keys: where they live, who may do what, and putting them on sockets.

Layout of a keys folder (`PIVOT_KEYS_DIR`, default `~/.config/pivot/keys`, mode 0700):

    broker.key              the broker's public key (share it with every client)
    broker.key_secret       the broker's secret key (0600; only the broker reads it)
    clients/NAME.key        a client's public key and its role: the broker's allow-list
    NAME.key_secret         that client's secret key (0600; give it to that client only)

Files use ZeroMQ's certificate format (`zmq.auth.load_certificate` reads them), with the
role in the metadata section. Secret keys are never written into the project: `.pivot/`
may sit on a file system other hosts share.

Roles: `pool` may use the work link only, `watcher` the changes link only, `viewer` the
snapshot and the events only, `operator` everything a local CLI can. Every role may say
hello on the control link.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path

import zmq

from pivot.errors import UserError

__all__ = [
    "ROLES",
    "AllowList",
    "ClientKeys",
    "ServerKeys",
    "add_client",
    "client_keys",
    "default_keys_dir",
    "fingerprint",
    "init_keys",
    "read_public",
    "read_secret",
]

ROLES = ("pool", "watcher", "operator", "viewer")
# Which sockets (ZAP domains) each role may connect to at all.
LINKS = {
    "pool": frozenset({"control", "work"}),
    "watcher": frozenset({"control", "changes"}),
    "viewer": frozenset({"control", "events"}),
    "operator": frozenset({"control", "events", "work", "changes"}),
}
DEFAULT_CLIENTS = {"operator": "operator", "pool": "pool", "watcher": "watcher", "viewer": "viewer"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEY_LINE = re.compile(r'^\s*(public-key|secret-key|role)\s*=\s*"([^"]*)"\s*$')


def default_keys_dir() -> Path:
    """`PIVOT_KEYS_DIR`, else the user's config folder (never inside a project)."""
    given = os.environ.get("PIVOT_KEYS_DIR")
    if given:
        return Path(given).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "pivot" / "keys"


def fingerprint(public_z85: bytes | str) -> str:
    """A short, stable name for a public key in logs (never the key itself)."""
    import hashlib

    raw = public_z85.encode() if isinstance(public_z85, str) else public_z85
    return hashlib.sha256(raw).hexdigest()[:16]


# --- reading -------------------------------------------------------------------------


def _fields(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"key file {path} does not exist; create keys with `pivot keys init`") from None
    except OSError as exc:
        raise UserError(f"cannot read key file {path}: {exc.strerror}") from None
    found: dict[str, str] = {}
    for line in text.splitlines():
        m = _KEY_LINE.match(line)
        if m:
            found[m.group(1)] = m.group(2)
    if "public-key" not in found or len(found["public-key"]) != 40:
        raise UserError(f"{path} is not a Pivot/ZeroMQ key file (no 40-character public-key line)")
    return found


def read_public(path: Path) -> tuple[bytes, str]:
    """(public key, role) of a public key file; the role is "" when it names none."""
    fields = _fields(path)
    return fields["public-key"].encode(), fields.get("role", "")


def read_secret(path: Path) -> tuple[bytes, bytes]:
    """(public key, secret key) of a secret key file; refuses one others can read."""
    fields = _fields(path)
    if "secret-key" not in fields or len(fields["secret-key"]) != 40:
        raise UserError(f"{path} holds no secret key; give the NAME.key_secret file, not NAME.key")
    mode = path.stat().st_mode & 0o077
    if mode:
        raise UserError(
            f"secret key file {path} can be read by other users (mode {path.stat().st_mode & 0o777:o}); "
            f"run `chmod 600 {path}`"
        )
    return fields["public-key"].encode(), fields["secret-key"].encode()


@dataclass(frozen=True)
class ClientKeys:
    """A client's keypair and the broker's public key, put on each socket it connects."""

    public: bytes
    secret: bytes
    server: bytes

    @classmethod
    def load(cls, key_file: Path, broker_key_file: Path) -> ClientKeys:
        public, secret = read_secret(key_file)
        server, _ = read_public(broker_key_file)
        return cls(public, secret, server)

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        _allow_curve_overhead(sock)
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server


# libzmq applies MAXMSGSIZE to a CURVE message as it arrives, encrypted: 33 bytes more
# than what was sent (measured), so the limit moves up by as much and a message of
# exactly MAX_MESSAGE_BYTES still passes, as on ipc and plain tcp.
CURVE_OVERHEAD = 33


def _allow_curve_overhead(sock: zmq.Socket[bytes]) -> None:
    from pivot.transport.sockets import MAX_MESSAGE_BYTES

    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES + CURVE_OVERHEAD)


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes

    @classmethod
    def load(cls, keys_dir: Path) -> ServerKeys:
        public, secret = read_secret(keys_dir / "broker.key_secret")
        return cls(public, secret)

    def apply(self, sock: zmq.Socket[bytes], domain: str) -> None:
        """A bound socket that speaks CURVE, authenticated in ZAP `domain` (its link)."""
        _allow_curve_overhead(sock)
        sock.zap_domain = domain.encode()
        sock.curve_server = True
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public


@dataclass(frozen=True)
class Client:
    name: str
    role: str


class AllowList:
    """The broker's clients: public key -> (name, role), from `clients/*.key`."""

    def __init__(self, clients: dict[bytes, Client]) -> None:
        self.clients = clients

    @classmethod
    def load(cls, keys_dir: Path) -> AllowList:
        clients: dict[bytes, Client] = {}
        folder = keys_dir / "clients"
        for path in sorted(folder.glob("*.key")) if folder.is_dir() else []:
            public, role = read_public(path)
            if role not in ROLES:
                raise UserError(f"{path}: role {role!r} is not one of {', '.join(ROLES)}")
            clients[public] = Client(path.stem, role)
        return cls(clients)

    def check(self, public_z85: bytes, domain: str) -> tuple[Client | None, str]:
        """(the client, "") when this key may use the link `domain`; (client or None,
        why not) otherwise."""
        client = self.clients.get(public_z85)
        if client is None:
            return None, "unknown key"
        if domain not in LINKS[client.role]:
            return client, f"a {client.role} key may not use the {domain} link"
        return client, ""


# --- writing -------------------------------------------------------------------------


def _write(path: Path, text: str, mode: int) -> None:
    """Create `path` with `mode` from the start (never world-readable for a moment)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _cert(public: bytes, secret: bytes | None, role: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    kind = "Secret" if secret else "Public"
    lines = [
        f"#   ****  Generated on {now} by pivot keys  ****",
        f"#   ZeroMQ CURVE {kind} Certificate",
        "",
        "metadata",
    ]
    if role:
        lines.append(f'    role = "{role}"')
    lines += ["curve", f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _prepare(keys_dir: Path) -> None:
    (keys_dir / "clients").mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)


def add_client(keys_dir: Path, name: str, role: str, force: bool = False) -> tuple[Path, Path]:
    """Create a client keypair: (its secret key file, its public entry in the allow-list)."""
    if not _NAME.match(name) or name == "broker":
        raise UserError(f"key name {name!r}: use letters, digits, '.', '_' or '-' (not 'broker')")
    if role not in ROLES:
        raise UserError(f"role {role!r} is not one of {', '.join(ROLES)}")
    _prepare(keys_dir)
    secret_file = keys_dir / f"{name}.key_secret"
    public_file = keys_dir / "clients" / f"{name}.key"
    if not force and (secret_file.exists() or public_file.exists()):
        raise UserError(f"a key named {name!r} exists in {keys_dir}; pick another name or pass --force")
    public, secret = zmq.curve_keypair()
    _write(secret_file, _cert(public, secret, role), 0o600)
    _write(public_file, _cert(public, None, role), 0o644)
    return secret_file, public_file


def init_keys(keys_dir: Path, force: bool = False) -> list[Path]:
    """The broker's keypair and one client keypair per role; the files written."""
    _prepare(keys_dir)
    secret_file, public_file = keys_dir / "broker.key_secret", keys_dir / "broker.key"
    if not force and (secret_file.exists() or public_file.exists()):
        raise UserError(f"{keys_dir} already holds broker keys; pass --force to replace them all")
    public, secret = zmq.curve_keypair()
    _write(secret_file, _cert(public, secret, ""), 0o600)
    _write(public_file, _cert(public, None, ""), 0o644)
    written = [public_file, secret_file]
    for name, role in DEFAULT_CLIENTS.items():
        written += add_client(keys_dir, name, role, force=True)
    return written


def client_keys(
    endpoint: str | None, key: Path | None, broker_key: Path | None, default_name: str
) -> ClientKeys | None:
    """The keys a client uses to reach `endpoint`, or None for plain ZeroMQ.

    ipc never uses CURVE. Over tcp, keys are used when given (`--key`, `PIVOT_KEY`), when
    `PIVOT_KEYS_DIR` is set, or off loopback when the keys folder holds this client's
    secret key (`DEFAULT_NAME.key_secret`) and the broker's public key."""
    from pivot.transport.address import is_loopback

    if endpoint is None or not endpoint.startswith("tcp://"):
        return None
    folder = default_keys_dir()
    explicit = key is not None or broker_key is not None or bool(os.environ.get("PIVOT_KEYS_DIR"))
    key = key or folder / f"{default_name}.key_secret"
    broker_key = broker_key or folder / "broker.key"
    found = key.exists() and broker_key.exists()
    if explicit or (found and not is_loopback(endpoint)):
        return ClientKeys.load(key, broker_key)
    return None
