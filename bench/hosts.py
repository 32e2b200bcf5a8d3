"""Pools on other hosts: per executed stage overhead and data edit -> stage started,
with the broker and two pools on three simulated hosts, against all on one host.

    sudo python bench/hosts.py [--stages 300] [--repeat 3] [--trials 20]

Cases (both over tcp with CURVE keys, two `pivot workers -j 1` named pool-a and pool-b):
- `one host (loopback)`: every process in this machine's own namespace, the broker
  bound on 127.0.0.1;
- `three namespace hosts`: Linux network namespaces joined by a bridge
  (tests/hosts/netns.py; needs root): the broker, the watcher, the display and the CLI
  on host `broker` (10.209.77.1), each pool on a host of its own; the project on the
  shared file system.

The project: a chain of N trivial stages (each reads the previous one's output) and one
`probe` stage reading data/probe.txt. Measured:
- `pivot repro -f` of all N + 1 stages, run `--repeat` times after a warm-up: the
  median wall time of the command, and the wave inside it (the broker's `wave_started`
  to `wave_finished`), each divided by the number of stages;
- with a watcher and a display (`pivot attach --json`) attached, `--trials` rewrites of
  data/probe.txt: from just before the write to the broker's `stage_started` of probe
  and to `wave_finished` (the broker's publish times; one clock for every namespace).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from benchcommon import Events, chain_lines, pivot_cmd, pivot_env

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "hosts"))
from netns import Network, can_make_namespaces, network

POOLS = ("pool-a", "pool-b")


def write_project(root: Path, n: int) -> None:
    lines = chain_lines(n)
    lines += [
        '@stage(deps=["data/probe.txt"], outs=["out/probe.txt"])',
        "def probe() -> None:",
        '    open("out/probe.txt", "w").write(open("data/probe.txt").read())',
        "",
    ]
    (root / "out").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "in.txt").write_text("x")
    (root / "data" / "probe.txt").write_text("0")
    (root / "pipeline.py").write_text("\n".join(lines))


class Place:
    """Where the roles run: `host` None is this namespace."""

    def __init__(self, root: Path, keys: Path, net: Network | None) -> None:
        self.root, self.keys, self.net = root, keys, net
        self.control = ""
        self.procs: list[subprocess.Popen[str]] = []

    def host(self, role: str) -> str | None:
        return None if self.net is None else (role if role in POOLS else "broker")

    def key_args(self, key: str) -> list[str]:
        return ["--key", str(self.keys / f"{key}.key_secret"), "--broker-key", str(self.keys / "broker.key")]

    def argv(self, host: str | None, args: Sequence[str]) -> list[str]:
        argv = [*pivot_cmd(), *args]
        return argv if host is None or self.net is None else self.net.command(host, argv)

    def start(self, role: str, args: Sequence[str], stdout: Any = subprocess.DEVNULL) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            self.argv(self.host(role), args), cwd=self.root, env=pivot_env(), text=True,
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def run(self, args: Sequence[str], key: str = "operator") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(self.host("cli"), [*args, "--broker", self.control, *self.key_args(key)]),
            cwd=self.root, env=pivot_env(), text=True, capture_output=True, timeout=300,
            stdin=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):  # display, watcher, pools, broker
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def wait_until(pred: Callable[[], object], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while (value := pred()) in (None, False):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value


def start_engine(p: Place) -> None:
    bind = "tcp://127.0.0.1:0" if p.net is None else f"tcp://{p.net['broker'].address}:7000"
    broker = p.start("broker", ["broker", "--bind", bind, "--keys", str(p.keys)])

    def bound() -> str | None:
        if broker.poll() is not None:
            raise SystemExit("the broker exited")
        try:
            info = json.loads((p.root / ".pivot" / "run" / "endpoints.json").read_text())
        except (OSError, ValueError):
            return None
        return str(info["control"]) if info.get("pid") == broker.pid else None

    control = wait_until(bound, "the broker to bind")
    p.control = control if p.net is None else "tcp://broker:7000"
    for name in POOLS:
        p.start(name, ["workers", "--broker", p.control, "--name", name, "-j", "1", *p.key_args("pool")])

    def joined() -> bool:
        result = p.run(["ps", "--json"], key="viewer")
        rows = json.loads(result.stdout)["processes"] if result.returncode == 0 else []
        return sorted(r["name"] for r in rows if r["role"] == "pool") == list(POOLS)

    wait_until(joined, "both pools to join")


def timed_repro(p: Place) -> tuple[float, float]:
    """(wall time of `pivot repro -f`, its wave from started to finished)."""
    t0 = time.perf_counter()
    result = p.run(["repro", "-f", "--json"])
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"repro failed:\n{result.stderr[-2000:]}")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    began = next(e["ts"] for e in events if e["event"] == "wave_started")
    ended = next(e["ts"] for e in events if e["event"] == "wave_finished")
    return wall, ended - began


def ended(wave: int) -> Callable[[dict[str, Any]], bool]:
    return lambda e: bool(e["event"] == "wave_finished" and e["wave"] == wave)


def edits(p: Place, trials: int) -> tuple[list[float], list[float], int]:
    """(edit -> probe started, edit -> wave finished, waves beyond one per edit)."""
    display = Events(p.start("cli", ["attach", "--json", "--broker", p.control, *p.key_args("viewer")],
                             stdout=subprocess.PIPE))
    p.start("cli", ["watcher", "--broker", p.control, *p.key_args("watcher")])
    display.wait(0, lambda e: e["event"] == "wave_finished")  # the watcher's check wave
    started, done = [], []
    waves_before = sum(1 for e in display.items if e["event"] == "wave_started")
    for i in range(trials):
        mark = len(display.items)
        t0 = time.time()
        (p.root / "data" / "probe.txt").write_text(str(i + 1))
        wave = display.wait(mark, lambda e: e["event"] == "wave_started" and e["trigger"] == "files")
        s = display.wait(mark, lambda e: e["event"] == "stage_started" and e["stage"] == "probe")
        d = display.wait(mark, ended(wave["wave"]))
        started.append(s["ts"] - t0)
        done.append(d["ts"] - t0)
    waves = sum(1 for e in display.items if e["event"] == "wave_started") - waves_before
    return started, done, waves - trials


@contextlib.contextmanager
def place(case: str, tmp: Path, stages: int) -> Iterator[Place]:
    root = tmp / case.replace(" ", "-").replace("(", "").replace(")", "") / "proj"
    write_project(root, stages)
    keys = root.parent / "keys"
    subprocess.run([*pivot_cmd(), "keys", "init", "--dir", str(keys)], check=True, capture_output=True,
                   env=pivot_env())
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(network(("broker", *POOLS))) if case.startswith("three") else None
        p = Place(root, keys, net)
        try:
            yield p
        finally:
            p.stop()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    cases = ["one host (loopback)", "three namespace hosts"]
    ok, why = can_make_namespaces()
    if not ok:
        print(f"(skipping the namespace case: {why})", file=sys.stderr)
        cases = cases[:1]
    n = args.stages + 1
    print(f"| {args.stages}-stage chain + probe, 2 pools, CURVE | `repro -f` median | per stage "
          "| wave only, per stage | data edit -> probe started, p50 / p95 | -> wave finished, p50 / p95 "
          "| redundant waves |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            with place(case, Path(tmp), args.stages) as p:
                start_engine(p)
                timed_repro(p)  # warm-up: the pools load the pipeline, start their workers
                runs = [timed_repro(p) for _ in range(args.repeat)]
                wall = statistics.median(r[0] for r in runs)
                wave = statistics.median(r[1] for r in runs)
                started, done, redundant = edits(p, args.trials)
            print(f"| {case} | {wall:.2f} s | {wall / n * 1000:.2f} ms | {wave / n * 1000:.2f} ms "
                  f"| {pct(started, 0.5) * 1000:.0f} / {pct(started, 0.95) * 1000:.0f} ms "
                  f"| {pct(done, 0.5) * 1000:.0f} / {pct(done, 0.95) * 1000:.0f} ms | {redundant} |", flush=True)


if __name__ == "__main__":
    main()
