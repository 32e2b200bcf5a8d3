"""An engine spread over three simulated hosts (network namespaces, see netns.py):
`broker` (10.209.77.1), `pool-a` (.2) and `pool-b` (.3), over tcp with CURVE, the project
on the shared file system (the same path on every host).

`new_cluster` writes the project and a keys folder beside it; `Cluster` starts the broker
on host `broker` and the other roles on any host (each process's stderr in a file under
logs/), reads `pivot ps`, and stops everything (`stop`: as a passing test must, every
process exiting 0; `kill_all`: after a failure).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns import Network
from procs import LiveRun, ProcGuard, describe, pivot_cmd, wait_for, write_files

HOSTS = ("broker", "pool-a", "pool-b")
BIND = "tcp://10.209.77.1:7000"  # the broker host's address: binding it needs CURVE
CONTROL = "tcp://broker:7000"  # what the other hosts use (their hosts files name it)
WAIT_S = 20.0
STOP_WITHIN_S = 15.0


def pivot_env() -> dict[str, str]:
    """This environment without PIVOT_* (keys and endpoints are given as flags)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PIVOT_")}


@dataclass
class Cluster:
    net: Network
    root: Path  # the project, at the same path on every host
    keys: Path  # the broker's keys folder (clients' secret keys are in it too)
    logs: Path  # NAME.err: each process's stderr
    guard: ProcGuard
    procs: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    displays: list[LiveRun] = field(default_factory=list)
    may_fail: set[str] = field(default_factory=set)  # processes a test ended itself

    # --- starting processes ------------------------------------------------------------

    def start_broker(self) -> subprocess.Popen[str]:
        """`pivot broker` bound on host `broker`, once it has bound."""
        broker = self.start("broker", "broker", "broker", "--bind", BIND, "--keys", str(self.keys))

        def bound() -> bool:
            assert broker.poll() is None, f"the broker exited:\n{self.stderr('broker')}"
            try:
                info = json.loads((self.root / ".pivot" / "run" / "endpoints.json").read_text())
            except (OSError, ValueError):
                return False
            return bool(info.get("pid") == broker.pid)

        wait_for(bound, WAIT_S, "the broker to bind")
        return broker

    def key_args(self, key: str, keys: Path | None = None) -> list[str]:
        folder = keys or self.keys
        return ["--key", str(folder / f"{key}.key_secret"), "--broker-key", str(self.keys / "broker.key")]

    def start(self, host: str, name: str, *args: str, pipes: bool = False) -> subprocess.Popen[str]:
        """`pivot ARGS` on `host` in the project: its stderr in logs/NAME.err, or with
        `pipes` its stdout and stderr on pipes (for `LiveRun` or `wait_exit`)."""
        assert name not in self.procs, name
        with (self.logs / f"{name}.err").open("w") as err:
            proc = self.net.popen(
                host, [*pivot_cmd(), *args], cwd=self.root, env=pivot_env(),
                stdout=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stderr=subprocess.PIPE if pipes else err, preexec_fn=_default_sigint,
            )
        self.procs[name] = self.guard.track(proc)
        return proc

    def pool(self, host: str, name: str, *args: str, key: str | None = None,
             keys: Path | None = None) -> subprocess.Popen[str]:
        return self.start(host, name, "workers", "--broker", CONTROL, "--name", name, "-j", "1",
                          *self.key_args(key or name, keys), *args)

    def watcher(self, host: str = "broker") -> subprocess.Popen[str]:
        return self.start(host, "watcher", "watcher", "--broker", CONTROL, *self.key_args("watcher"))

    def display(self, host: str = "broker", name: str = "display") -> LiveRun:
        """`pivot attach --json` (a viewer key): its events, as they arrive."""
        proc = self.start(host, name, "attach", "--broker", CONTROL, "--json", *self.key_args("viewer"),
                          pipes=True)
        live = LiveRun(proc)
        self.displays.append(live)
        return live

    def pivot(self, *args: str, host: str = "broker", key: str = "operator",
              timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """`pivot ARGS --broker CONTROL` on `host`, to completion."""
        return self.net.run(host, [*pivot_cmd(), *args, "--broker", CONTROL, *self.key_args(key)],
                            timeout=timeout, cwd=self.root, env=pivot_env())

    # --- reading -----------------------------------------------------------------------

    def stderr(self, name: str) -> str:
        """What process `name` wrote to stderr so far (not for those started with pipes)."""
        return (self.logs / f"{name}.err").read_text()

    def repro(self) -> subprocess.Popen[str]:
        """`pivot repro --broker --json` on the broker host (an operator key), started."""
        return self.start("broker", "repro", "repro", "--broker", CONTROL, "--json",
                          *self.key_args("operator"), pipes=True)

    def ps(self) -> list[dict[str, Any]]:
        result = self.pivot("ps", "--json", key="viewer")
        assert result.returncode == 0, describe(result)
        rows: list[dict[str, Any]] = json.loads(result.stdout)["processes"]
        return rows

    def pools(self) -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in self.ps() if r["role"] == "pool"}

    def wait_pools(self, *names: str, timeout: float = WAIT_S) -> dict[str, dict[str, Any]]:
        """Wait until exactly these pools are joined; their `pivot ps` rows."""
        def joined() -> dict[str, dict[str, Any]]:
            for name in names:
                proc = self.procs[name]
                assert proc.poll() is None, f"pool {name} exited:\n{self.stderr(name)}"
            rows = self.pools()
            return rows if sorted(rows) == sorted(names) else {}

        return wait_for(joined, timeout, f"pools {names} to join", interval=0.1)

    def broker_log(self) -> str:
        return (self.root / ".pivot" / "logs" / "broker.jsonl").read_text()

    # --- stopping ----------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM to the watcher (a watcher on its own outlives a broker: it waits for
        one to come back), then to the broker: it and everything connected to it (pools,
        displays) must exit 0 within STOP_WITHIN_S."""
        if "watcher" in self.procs:
            self.procs["watcher"].send_signal(signal.SIGTERM)
        self.procs["broker"].send_signal(signal.SIGTERM)
        failures = []
        for name, proc in self.procs.items():
            try:
                rc = proc.wait(STOP_WITHIN_S)
            except subprocess.TimeoutExpired:
                failures.append(f"{name} did not exit within {STOP_WITHIN_S} s of the broker's stop")
                continue
            if rc != 0 and name not in self.may_fail:
                failures.append(f"{name} exited with code {rc}:\n{self.stderr(name)}")
        assert not failures, "\n".join(failures)

    def kill_all(self) -> None:
        """After a failure: the broker gets SIGTERM first (so it removes its endpoints
        file and tells the pools), then whatever still runs is SIGKILLed."""
        broker = self.procs.get("broker")
        if broker is not None and broker.poll() is None:
            broker.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                broker.wait(STOP_WITHIN_S)
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _keys(root: Path, folder: Path, *clients: tuple[str, str]) -> None:
    made = subprocess.run([*pivot_cmd(), "keys", "init", "--dir", str(folder)], cwd=root,
                          capture_output=True, text=True, timeout=30, env=pivot_env())
    assert made.returncode == 0, describe(made)
    for name, role in clients:
        added = subprocess.run([*pivot_cmd(), "keys", "add", name, "--role", role, "--dir", str(folder)],
                               cwd=root, capture_output=True, text=True, timeout=30, env=pivot_env())
        assert added.returncode == 0, describe(added)




def new_cluster(net: Network, base: Path, files: dict[str, str], guard: ProcGuard) -> Cluster:
    """The project `files` in base/proj and keys in base/keys (a pool key per pool
    host); nothing started yet (`Cluster.start_broker`)."""
    root = write_files(base / "proj", files)
    keys = base / "keys"
    _keys(root, keys, ("pool-a", "pool"), ("pool-b", "pool"))
    logs = base / "logs"
    logs.mkdir()
    return Cluster(net, root, keys, logs, guard)
