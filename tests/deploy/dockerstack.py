"""The compose dev stack (docker-compose.yml) under test: a private Docker engine, the
stack's image, and one compose project on a copy of a Pivot project.

Root only. `Engine` is a dockerd of its own (deploy/private-dockerd: its own socket,
exec root, data root and pid file under a short temp dir; `--iptables=false
--ip-forward=false`), stopped by its pid file and removed with its image store. `Stack`
drives `docker compose` with a unique project name and its own ports (published on
127.0.0.1 only), and reads the engine's processes through `docker top` and /proc.
Nothing here ever names an image that was not built on this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procs import describe, pivot_cmd

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
PRIVATE_DOCKERD = REPO / "deploy" / "private-dockerd"
BUILD_IMAGE = REPO / "deploy" / "build-local-image"
CACHE = Path(os.environ.get("PIVOT_DEPLOY_CACHE", "/var/cache/pivot-deploy"))
IMAGE = "pivot-stack:test"
STACK_UID = 4321  # not root and not this machine's user: whose files the stack writes
TIMINGS: dict[str, float] = {}  # step -> seconds, printed at the end of the session
STALE_ENDPOINTS: list[str] = []  # networks dockerd kept for an endpoint of no container
KEYS_IN_IMAGE = "/var/lib/pivot/keys"
COMPOSE_TIMEOUT_S = 120.0


def run(cmd: list[str], env: dict[str, str], timeout: float = COMPOSE_TIMEOUT_S,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def ok(cmd: list[str], env: dict[str, str], timeout: float = COMPOSE_TIMEOUT_S) -> str:
    """stdout of `cmd`, which must succeed."""
    result = run(cmd, env, timeout)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{describe(result)}"
    return result.stdout


# --- what the machine has ------------------------------------------------------------


def compose_v2() -> bool:
    """Whether `docker compose` is the v2 plugin (the client alone needs no engine)."""
    if shutil.which("docker") is None:
        return False
    result = run(["docker", "compose", "version"], dict(os.environ), timeout=30)
    return result.returncode == 0 and re.search(r"version v?2\.", result.stdout) is not None


def missing_tools() -> str:
    """Why this machine cannot run the compose tier, or "" when it can."""
    if os.geteuid() != 0:
        return "the compose tier starts a Docker engine of its own: run as root"
    if shutil.which("dockerd") is None:
        return "no dockerd: run .ci/setup-deploy (apt-get install docker.io)"
    if not compose_v2():
        return "no docker compose v2 plugin: run .ci/setup-deploy"
    if not (CACHE / "base.tar").is_file() or not (CACHE / "wheelhouse").is_dir():
        return f"no base image or wheelhouse in {CACHE}: run .ci/setup-deploy"
    return ""


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (held open together, so all distinct)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --- the engine ----------------------------------------------------------------------


@dataclass
class Engine:
    """A private dockerd; `env` points clients at it."""

    folder: Path
    host: str
    pid: int
    env: dict[str, str]

    @classmethod
    def start(cls) -> Engine:
        folder = Path(tempfile.mkdtemp(prefix="pvt-", dir="/tmp"))  # short: a socket lives here
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "PIVOT_"))}
        try:
            host = ok([str(PRIVATE_DOCKERD), "start", str(folder)], env, timeout=60).strip()
            pid = int((folder / "docker.pid").read_text())
        except BaseException:
            run([str(PRIVATE_DOCKERD), "stop", str(folder)], env, timeout=60)
            raise
        return cls(folder, host, pid, {**env, "DOCKER_HOST": host})

    def answers(self) -> bool:
        """`docker info` against this engine (a client alone does not answer)."""
        return run(["docker", "info"], self.env, timeout=30).returncode == 0

    def stop(self) -> None:
        """Stop it by its pid file and remove its folder (the image store with it)."""
        result = run([str(PRIVATE_DOCKERD), "stop", str(self.folder)], self.env, timeout=60)
        assert result.returncode == 0, describe(result)
        assert not Path(f"/proc/{self.pid}").exists(), f"dockerd {self.pid} still runs"
        assert not self.folder.exists(), f"{self.folder} is left"


def build_image(engine: Engine, image: str = IMAGE) -> None:
    """The stack's image from this checkout, offline (deploy/build-local-image)."""
    ok([str(BUILD_IMAGE), str(CACHE), image], engine.env, timeout=300)


# --- a compose project ---------------------------------------------------------------


@dataclass
class Stack:
    """One compose project of docker-compose.yml on `project`, as user `uid`."""

    engine: Engine
    project: Path
    keys: Path  # the host's copies of the client keys (from the stack's volume)
    uid: int
    name: str = field(default_factory=lambda: f"pvt{os.getpid()}x{time.monotonic_ns() % 10**6}")
    ports: dict[str, int] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    outside: list[str] = field(default_factory=list)  # containers started beside the project

    def __post_init__(self) -> None:
        if not self.ports:
            control, work, events, changes = free_ports(4)
            self.ports = {"control": control, "work": work, "events": events, "changes": changes}

    @property
    def control(self) -> str:
        """The control endpoint from the host (published on 127.0.0.1 only)."""
        return f"tcp://127.0.0.1:{self.ports['control']}"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **self.engine.env,
            "PIVOT_PROJECT": str(self.project),
            "PIVOT_UID": str(self.uid),
            "PIVOT_GID": str(self.uid),
            "PIVOT_IMAGE": IMAGE,
            "PIVOT_CONTROL_PORT": str(self.ports["control"]),
            "PIVOT_WORK_PORT": str(self.ports["work"]),
            "PIVOT_EVENTS_PORT": str(self.ports["events"]),
            "PIVOT_CHANGES_PORT": str(self.ports["changes"]),
            "PIVOT_JOBS": "2",
            **self.extra_env,
            **extra,
        }

    def compose(self, *args: str, timeout: float = COMPOSE_TIMEOUT_S, **env: str) -> str:
        cmd = ["docker", "compose", "-f", str(COMPOSE_FILE), "-p", self.name, *args]
        return ok(cmd, self.env(**env), timeout)

    def containers(self, service: str) -> list[str]:
        """Full ids of the service's running containers."""
        return self.compose("ps", "-q", service).split()

    def states(self) -> dict[str, tuple[str, int]]:
        """container name -> (state, exit code), for every container of the project."""
        out = self.compose("ps", "-a", "--format", "json")
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len(rows) == 1 and isinstance(rows[0], list):  # some versions print one array
            rows = rows[0]
        return {r["Name"]: (r["State"], int(r["ExitCode"])) for r in rows}

    def docker(self, *args: str, timeout: float = 60.0) -> str:
        return ok(["docker", *args], self.engine.env, timeout)

    def log_tail(self, container: str, lines: int = 60) -> str:
        """The last `lines` a container wrote, its standard error too (as `docker logs`
        replays them on its own)."""
        result = run(["docker", "logs", "--tail", str(lines), container], self.engine.env, 60.0)
        return result.stdout + result.stderr

    def processes(self, container: str) -> dict[int, tuple[int, str]]:
        """pid inside the container -> (pid on this host, command line), for every
        process of the container (`docker top`, then NSpid in /proc)."""
        out = self.docker("top", container, "-eo", "pid,args")
        found: dict[int, tuple[int, str]] = {}
        for line in out.splitlines()[1:]:
            host_pid, _, args = line.strip().partition(" ")
            with contextlib.suppress(OSError, ValueError, IndexError):
                status = Path(f"/proc/{host_pid}/status").read_text()
                nspid = next(x for x in status.splitlines() if x.startswith("NSpid:")).split()[-1]
                found[int(nspid)] = (int(host_pid), args.strip())
        return found

    def run_outside(self, name: str, keys: Path, *args: str) -> str:
        """`pivot ARGS` in a container of the stack's image outside the compose project,
        as on another host: the host's network (it reaches the stack only through the
        ports published on 127.0.0.1), the project at /project (a shared file system
        there), `keys` read-only at /keys. Removed by `remove_outside`."""
        container = f"{self.name}-{name}"
        self.outside.append(container)
        self.docker("run", "--detach", "--name", container, "--pull", "never", "--network", "host",
                    "--user", f"{self.uid}:{self.uid}", "--volume", f"{self.project}:/project",
                    "--volume", f"{keys}:/keys:ro", IMAGE, *args)
        return container

    def remove_outside(self) -> None:
        for container in self.outside:
            run(["docker", "rm", "--force", container], self.engine.env, timeout=60)

    def zombies(self, container: str) -> list[str]:
        """Processes of the container that exited and were never reaped (PID 1 must
        reap its orphans, or `init: true` would be needed)."""
        found = []
        for host_pid, args in self.processes(container).values():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{host_pid}/stat").read_text()
                if stat[stat.rfind(")") + 2 :].split()[0] == "Z":
                    found.append(f"{host_pid} {args}")
        return found

    def copy_client_keys(self, *names: str, to: Path | None = None) -> Path:
        """The client keys (and the broker's public key) out of the stack's volume, as a
        user on the host would (`docker compose cp`), into `to` (default: `keys`)."""
        folder = to or self.keys
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("broker.key", *(f"{n}.key_secret" for n in names)):
            self.compose("cp", f"broker:{KEYS_IN_IMAGE}/{name}", str(folder / name))
        return folder

    def key_args(self, name: str) -> list[str]:
        return ["--key", str(self.keys / f"{name}.key_secret"), "--broker-key", str(self.keys / "broker.key")]

    def pivot(self, *args: str, key: str = "operator", timeout: float = 30.0) -> str:
        """`pivot ARGS --broker CONTROL` on the host in the project, with a client key
        of the stack."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIVOT_")}
        cmd = [*pivot_cmd(), *args, "--broker", self.control, *self.key_args(key)]
        result = run(cmd, env, timeout, cwd=self.project)
        assert result.returncode == 0, f"{' '.join(cmd)}\n{describe(result)}"
        return result.stdout

    def pools(self) -> list[dict[str, Any]]:
        """`pivot ps --json` rows of the pools."""
        rows = json.loads(self.pivot("ps", "--json"))["processes"]
        return [r for r in rows if r["role"] == "pool"]

    def down(self) -> None:
        """`compose down` with the volumes. When the engine refuses to remove the
        project's network for "active endpoints" while no container is attached to it,
        that is dockerd's stale endpoint (moby/moby#42119, seen once in dozens of runs
        of this tier): said in the session's summary, not charged to the stack. A
        container still attached is the stack's leftover: the test fails and says which."""
        cmd = ["docker", "compose", "-f", str(COMPOSE_FILE), "-p", self.name, "--profile", "display",
               "down", "-v", "--remove-orphans", "--timeout", "15"]
        result = run(cmd, self.env())
        if result.returncode == 0:
            return
        network = f"{self.name}_default"
        inspect = run(["docker", "network", "inspect", "-f", "{{json .Containers}}", network],
                      self.engine.env, timeout=30)
        attached = json.loads(inspect.stdout or "null") if inspect.returncode == 0 else None
        if "has active endpoints" in result.stderr and attached == {}:
            STALE_ENDPOINTS.append(network)
            return
        log = self.engine.folder / "dockerd.log"
        lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
        raise AssertionError(
            f"{' '.join(cmd)}\n{describe(result)}\n--- containers on {network} ---\n{inspect.stdout}"
            f"{inspect.stderr}\n--- the last 80 lines of {log} ---\n" + "\n".join(lines[-80:]))

    def leftovers(self) -> list[str]:
        """Containers, volumes and networks of this project still on the engine."""
        label = f"label=com.docker.compose.project={self.name}"
        left = []
        for kind in (["ps", "-a", "--format", "{{.Names}}"], ["volume", "ls", "--format", "{{.Name}}"],
                     ["network", "ls", "--format", "{{.Name}}"]):
            out = self.docker(*kind, "--filter", label)
            left += [f"{kind[0]} {x}" for x in out.split()]
        return left
