"""Several "hosts" on one machine: Linux network namespaces joined by a bridge.

    root namespace           blackhole 10.209.77.0/24 (added first, removed last;
                             shared by the networks up at once, under a lock)

    switch namespace         br0 ── p1 ── p2 ── p3 ...      (no uplink, no address)
    (pivot-PID-N-sw)               │     │     │
    host namespaces          eth0 .1  eth0 .2  eth0 .3      (lo + eth0, no default route)
    (pivot-PID-N-HOST)       "broker" "pool-a" "pool-b"     (/etc/netns/NS/hosts)

Nothing here can leave the machine: a host namespace routes only its /24 (anything else
is unreachable), the switch has no link out, and the root namespace, which does have a
default route off the machine, sends the test subnet to a blackhole. The bridge lives in
a namespace of its own because a Docker daemon's firewall rules in the root namespace
would break a bridge there (/work/shared/DEPLOY-NOTES.md).

Each host gets its own host name too (a UTS namespace per process started with
`Network.popen`), so what a process reports as its host is the namespace's name.

Stdlib only: `bench/hosts.py` uses it as well as the tests. Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SUBNET", "Host", "Network", "NetworkError", "can_make_namespaces", "network"]

SUBNET = "10.209.77.0/24"
_PREFIX = "10.209.77."
NETNS_RUN = Path("/run/netns")
NETNS_ETC = Path("/etc/netns")
BLACKHOLE_LOCK = Path("/run/pivot-test-subnet.lock")
BLACKHOLE_USERS = Path("/run/pivot-test-subnet.users")  # a file PID-TAG per network up
GONE_WITHIN_S = 5.0
LEFTOVER_GRACE_S = 3.0  # as tests/procs.py gives processes still exiting

_serial = itertools.count(1)


class NetworkError(RuntimeError):
    """Setting up or tearing down the namespaces failed (the `ip` command's error)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; a NetworkError with its stderr when it fails (and `check`)."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: exit {result.returncode}: {result.stderr.strip()}")
    return result


def can_make_namespaces() -> tuple[bool, str]:
    """Whether this process can build a network here, and if not, why."""
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    if shutil.which("ip") is None:
        return False, "iproute2 (`ip`) is not installed"
    if shutil.which("unshare") is None:
        return False, "util-linux `unshare` is not installed"
    return True, ""


@dataclass(frozen=True)
class Host:
    name: str  # its host name, in every host's hosts file
    ns: str  # its network namespace
    address: str  # its address on the test subnet
    port: str  # the switch's end of its veth pair (in the switch namespace)


@dataclass
class Network:
    """The namespaces of one test. Build with `network(...)`, which tears it down."""

    tag: str
    switch: str
    hosts: dict[str, Host] = field(default_factory=dict)
    owns_blackhole: bool = False
    made: list[str] = field(default_factory=list)  # namespaces made, for teardown
    left_behind: list[str] = field(default_factory=list)  # what `close()` had to kill

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    # --- processes -------------------------------------------------------------------

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """`argv` run on `host`: in its network namespace (with its hosts file) and a UTS
        namespace named after it. Every step execs, so the pid is `argv`'s own."""
        h = self.hosts[host]
        return [
            "ip", "netns", "exec", h.ns,
            "unshare", "--uts", "--",
            "sh", "-c", 'hostname "$0" && exec "$@"', h.name, *argv,
        ]

    def popen(self, host: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        """Start `argv` on `host` in a session of its own (kill its group to stop it)."""
        kwargs.setdefault("start_new_session", True)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("text", True)
        return subprocess.Popen(self.command(host, argv), **kwargs)  # type: ignore[call-overload]

    def run(self, host: str, argv: Sequence[str], timeout: float = 30.0, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run `argv` on `host` to completion, output captured."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(  # type: ignore[call-overload]
            self.command(host, argv), capture_output=True, text=True, timeout=timeout,
            start_new_session=True, **kwargs,
        )

    def netns_id(self, host: str) -> str:
        """What /proc/PID/ns/net reads for a process on `host` ("net:[INODE]")."""
        return f"net:[{(NETNS_RUN / self.hosts[host].ns).stat().st_ino}]"

    def host_of_netns(self, netns: str) -> str | None:
        """The host whose namespace /proc/PID/ns/net reading `netns` names, if any."""
        return next((name for name in self.hosts if self.netns_id(name) == netns), None)

    def pids_on(self, host: str) -> list[int]:
        """Live processes in `host`'s network namespace (all started by this test)."""
        return _pids_in(self.netns_id(host))

    def kill_host(self, host: str) -> list[int]:
        """SIGKILL every process on `host` at once (the machine died); their pids."""
        pids = self.pids_on(host)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    # --- links -----------------------------------------------------------------------

    def partition(self, host: str) -> None:
        """Cut `host` off: its veth's switch end down (a cable pulled at the switch)."""
        ip("-n", self.switch, "link", "set", self.hosts[host].port, "down")

    def heal(self, host: str) -> None:
        ip("-n", self.switch, "link", "set", self.hosts[host].port, "up")

    # --- checks ----------------------------------------------------------------------

    def check_sealed(self) -> None:
        """Raise unless nothing can leave: the blackhole in the root namespace, and no
        host or switch namespace with a route beyond the subnet."""
        root = ip("route", "show", SUBNET).stdout.split()
        if root[:1] != ["blackhole"]:
            raise NetworkError(f"the root namespace does not blackhole {SUBNET}: {root}")
        for ns in [self.switch, *(h.ns for h in self.hosts.values())]:
            routes = ip("-n", ns, "route", "show").stdout.splitlines()
            outside = [r for r in routes if not r.startswith(SUBNET.split("/")[0])]
            outside += ip("-n", ns, "-6", "route", "show", "default").stdout.splitlines()
            if outside:
                raise NetworkError(f"namespace {ns} routes beyond {SUBNET}: {outside}")

    # --- setup and teardown ----------------------------------------------------------

    def _add_blackhole(self) -> None:
        """The root namespace's blackhole for the subnet, shared by every network up on
        this machine (a parallel test run, a benchmark): each registers itself under a
        lock, and the last one out removes the route."""
        with _users() as users:
            users.mkdir(exist_ok=True)
            existing = ip("route", "show", SUBNET).stdout.split()
            if not existing:
                ip("route", "add", "blackhole", SUBNET)
            elif existing[0] != "blackhole":  # the subnet is in real use here: never touch it
                raise NetworkError(f"{SUBNET} is routed in the root namespace ({' '.join(existing)}): "
                                   "pick another test subnet")
            (users / f"{os.getpid()}-{self.tag}").touch()
            self.owns_blackhole = True

    def _drop_blackhole(self) -> str | None:
        """Unregister; remove the route when no live run uses it. An error, or None."""
        with _users() as users:
            (users / f"{os.getpid()}-{self.tag}").unlink(missing_ok=True)
            for user in users.iterdir():
                pid = user.name.split("-", 1)[0]
                if not (pid.isdigit() and Path("/proc", pid).exists()):
                    user.unlink(missing_ok=True)  # a run that died without its teardown
            if any(users.iterdir()):
                return None
            users.rmdir()
            result = ip("route", "del", "blackhole", SUBNET, check=False)
            return None if result.returncode == 0 else f"ip route del blackhole {SUBNET}: {result.stderr.strip()}"

    def _add_namespace(self, ns: str) -> None:
        ip("netns", "add", ns)
        self.made.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")

    def _build(self, names: Sequence[str]) -> None:
        self._add_blackhole()  # first: before any address of the subnet exists anywhere
        self._add_namespace(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for n, name in enumerate(names, start=1):
            self.hosts[name] = Host(name, f"{self.tag}-{name}", f"{_PREFIX}{n}", f"p{n}")
        hosts_file = "127.0.0.1 localhost\n::1 localhost\n" + "".join(
            f"{h.address} {h.name}\n" for h in self.hosts.values()
        )
        for h in self.hosts.values():
            self._add_namespace(h.ns)
            etc = NETNS_ETC / h.ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts_file)
            # Made in the switch namespace with its peer straight in the host's: no veth
            # ever exists in the root namespace.
            ip("-n", self.switch, "link", "add", h.port, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
            ip("-n", self.switch, "link", "set", h.port, "master", "br0", "up")
            ip("-n", h.ns, "addr", "add", f"{h.address}/24", "dev", "eth0")
            ip("-n", h.ns, "link", "set", "eth0", "up")
        self.check_sealed()

    def close(self, grace: float = LEFTOVER_GRACE_S) -> list[str]:
        """Tear everything down. Processes still in the namespaces after `grace` seconds
        (time to finish exiting) are killed first; returns what was killed (a test left
        them behind)."""
        killed: list[str] = []
        errors: list[str] = []
        ids = {}
        for ns in self.made:
            with contextlib.suppress(OSError):
                ids[ns] = f"net:[{(NETNS_RUN / ns).stat().st_ino}]"
        deadline = time.monotonic() + grace
        while any(_pids_in(n) for n in ids.values()) and time.monotonic() < deadline:
            time.sleep(0.02)
        for ns, netns in ids.items():
            for pid in _pids_in(netns):
                killed.append(f"pid {pid} in {ns}: {_cmdline(pid)}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + GONE_WITHIN_S
        while any(_pids_in(n) for n in ids.values()) and time.monotonic() < deadline:
            time.sleep(0.02)
        for ns in reversed(self.made):  # hosts first (their veths go with them), switch last
            result = ip("netns", "del", ns, check=False)
            if result.returncode != 0:
                errors.append(f"ip netns del {ns}: {result.stderr.strip()}")
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        if self.owns_blackhole and (error := self._drop_blackhole()):
            errors.append(error)
        with contextlib.suppress(OSError):  # only when no other run uses it
            NETNS_ETC.rmdir()
        if errors:
            raise NetworkError("; ".join(errors))
        return killed


@contextlib.contextmanager
def network(names: Sequence[str], tag: str | None = None) -> Iterator[Network]:
    """Hosts `names` (addresses .1, .2, ... in order) on one switch; everything is torn
    down on the way out, even when the setup itself fails half way. Processes left in a
    namespace are killed then, and listed in `Network.left_behind`."""
    tag = tag or f"pivot-{os.getpid()}-{next(_serial)}"
    net = Network(tag=tag, switch=f"{tag}-sw")
    try:
        net._build(names)
        yield net
    finally:
        net.left_behind = net.close()


@contextlib.contextmanager
def _users() -> Iterator[Path]:
    """The folder of pids of the runs using the blackhole, under an exclusive lock."""
    import fcntl

    with open(BLACKHOLE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield BLACKHOLE_USERS


def _pids_in(netns: str) -> list[int]:
    """Live processes whose network namespace reads `netns`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "net") != netns:
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        raw = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a)
