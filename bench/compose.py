"""The compose dev stack (docker-compose.yml) on this machine: how long it takes to come
up, and edit -> stage started through the bind mount, with inotify and with `--poll`.

    sudo .ci/setup-deploy                       # once: docker.io, compose v2, base, wheels
    python bench/compose.py [--trials 10]       # as root, from the repo root

Starts a Docker engine of its own (deploy/private-dockerd: private socket and roots,
`--iptables=false --ip-forward=false`), builds the image offline
(deploy/build-local-image), and runs the stack on a fresh copy of examples/quickstart
with two pools, its ports published on 127.0.0.1 only. Then:

- `up --wait` -> first wave finished: from `docker compose up --detach --wait` to the
  broker's log record of wave 1 finished (the watcher joining starts that wave); also when
  `up --wait` returned (it waits for every healthcheck, run every 2 s);
- data edit -> stage started: append a row to data/raw.csv (host side of the bind mount)
  -> `prepare`'s stage_started as the broker published it (`pivot attach --json` on the
  host; containers share this machine's clock), and -> wave finished;
- code edit -> stage started on new code: edit `prepare`'s source in pipeline.py -> its
  stage_started in a wave the code change triggered (new workers), and -> wave finished;
- the same edits with the watcher recreated with PIVOT_WATCH_POLL=1 (`pivot watcher
  --poll`).

Everything is stopped and removed at the end (`down -v`, the engine and its image store).
Stdlib only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchcommon import Events, pivot_cmd, pivot_env

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("PIVOT_DEPLOY_CACHE", "/var/cache/pivot-deploy"))
IMAGE = "pivot-stack:bench"
UID = 4321
STAGES = ("prepare", "features", "fit", "evaluate")


def sh(cmd: list[str], env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(values: list[float]) -> str:
    return f"{pct(values, 0.5) * 1000:.0f} / {pct(values, 0.95) * 1000:.0f} ms"


class Bench:
    def __init__(self, work: Path, engine_env: dict[str, str]) -> None:
        self.work = work
        self.root = work / "quickstart"
        self.keys = work / "keys"
        self.name = f"pivotbench{os.getpid()}"
        control, work_port, events, changes = free_ports(4)
        self.control = f"tcp://127.0.0.1:{control}"
        self.env = {
            **engine_env, "PIVOT_PROJECT": str(self.root), "PIVOT_UID": str(UID), "PIVOT_GID": str(UID),
            "PIVOT_IMAGE": IMAGE, "PIVOT_JOBS": "2", "PIVOT_CONTROL_PORT": str(control),
            "PIVOT_WORK_PORT": str(work_port), "PIVOT_EVENTS_PORT": str(events), "PIVOT_CHANGES_PORT": str(changes),
        }
        self.events: Events | None = None
        self.display: subprocess.Popen[str] | None = None
        self.pipeline = ""

    def compose(self, *args: str, **extra: str) -> str:
        return sh(["docker", "compose", "-f", str(REPO / "docker-compose.yml"), "-p", self.name, *args],
                  {**self.env, **extra})

    def first_wave_finished(self) -> float:
        """The broker's log time (UTC, ms) of wave 1 finished, as a Unix time."""
        log = self.root / ".pivot" / "logs" / "broker.jsonl"
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if str(record.get("event", "")).startswith("wave_finished wave=1 "):
                when = datetime.datetime.fromisoformat(record["time"]).replace(tzinfo=datetime.UTC)
                return when.timestamp()
        raise SystemExit(f"no wave 1 in {log}")

    def up(self) -> tuple[float, float]:
        shutil.copytree(REPO / "examples" / "quickstart", self.root, ignore=shutil.ignore_patterns(
            ".pivot", "__pycache__", "clean.csv", "features.csv", "model", "metrics.json"))
        for folder, dirs, files in os.walk(self.root):
            for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
                os.chown(name, UID, UID)
        self.pipeline = (self.root / "pipeline.py").read_text()
        assert 'malformed")' in self.pipeline
        t0 = time.time()
        self.compose("up", "--detach", "--wait", "--scale", "workers=2")
        returned = time.time() - t0
        wave = self.wait_for_file_record(self.first_wave_finished) - t0
        self.keys.mkdir()
        for name in ("broker.key", "viewer.key_secret"):
            self.compose("cp", f"broker:/var/lib/pivot/keys/{name}", str(self.keys / name))
        env = {k: v for k, v in pivot_env().items() if not k.startswith(("PIVOT_", "DOCKER_"))}
        proc = subprocess.Popen(
            [*pivot_cmd(), "attach", "--json", "--broker", self.control, "--key",
             str(self.keys / "viewer.key_secret"), "--broker-key", str(self.keys / "broker.key")],
            cwd=self.work, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True)
        self.display, self.events = proc, Events(proc)
        self.events.wait(0, lambda e: e["event"] == "wave_finished" and e["wave"] == 1)
        return returned, wave

    @staticmethod
    def wait_for_file_record(read: Any, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return float(read())
            except (OSError, SystemExit, ValueError):
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def edit(self, kind: str, trial: int) -> tuple[float, float]:
        """(edit -> prepare started, edit -> wave finished) for one edit."""
        assert self.events is not None
        mark = len(self.events.items)
        t0 = time.time()
        if kind == "data":
            with (self.root / "data" / "raw.csv").open("a") as f:
                f.write(f"{trial % 7}.5,{trial % 5}.25,{trial}.75\n")
        else:
            # prepare's message changes: its code fingerprint does, nothing else's
            (self.root / "pipeline.py").write_text(
                self.pipeline.replace('malformed")', f'malformed, edit {kind}{trial}")', 1))
        trigger = "files" if kind == "data" else "code"
        wave = self.events.wait(mark, lambda e: e["event"] == "wave_started" and e["trigger"] == trigger)
        started = self.events.wait(mark, lambda e: e["event"] == "stage_started" and e["wave"] == wave["wave"]
                                   and e["stage"] == "prepare")
        done = self.events.wait(mark, lambda e: e["event"] == "wave_finished" and e["wave"] == wave["wave"])
        return started["ts"] - t0, done["ts"] - t0

    def edits(self, trials: int, first: int) -> dict[str, list[float]]:
        found: dict[str, list[float]] = {k: [] for k in ("data_start", "data_done", "code_start", "code_done")}
        for trial in range(first, first + trials):
            for kind in ("data", "code"):
                start, done = self.edit(kind, trial)
                found[f"{kind}_start"].append(start)
                found[f"{kind}_done"].append(done)
        return found

    def poll(self) -> None:
        assert self.events is not None
        mark = len(self.events.items)
        self.compose("up", "--detach", "--wait", "--no-deps", "watcher", PIVOT_WATCH_POLL="1")
        check = self.events.wait(mark, lambda e: e["event"] == "wave_started")  # the new watcher joined
        self.events.wait(mark, lambda e: e["event"] == "wave_finished" and e["wave"] == check["wave"])

    def down(self) -> float:
        t0 = time.time()
        self.compose("down", "-v", "--remove-orphans")
        if self.display is not None:
            self.display.wait(30)  # the engine stopped: the view ends
        return time.time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="edits of each kind, per watcher mode")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark starts a Docker engine of its own")
    engine_dir = Path(tempfile.mkdtemp(prefix="pvb-", dir="/tmp"))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "PIVOT_"))}
    rows: list[tuple[str, str]] = []
    try:
        t0 = time.time()
        host = sh([str(REPO / "deploy" / "private-dockerd"), "start", str(engine_dir)], base_env).strip()
        env = {**base_env, "DOCKER_HOST": host}
        rows.append(("engine start (`docker info` answers)", f"{time.time() - t0:.1f} s"))
        t0 = time.time()
        sh([str(REPO / "deploy" / "build-local-image"), str(CACHE), IMAGE], env)
        rows.append(("image: import the base + build offline", f"{time.time() - t0:.1f} s"))
        with tempfile.TemporaryDirectory() as tmp:
            bench = Bench(Path(tmp), env)
            try:
                returned, wave = bench.up()
                rows.append(("`up --wait` -> first wave finished (broker's log)", f"{wave:.1f} s"))
                rows.append(("`up --wait` returned (every healthcheck passed)", f"{returned:.1f} s"))
                for mode in ("inotify", "--poll"):
                    if mode == "--poll":
                        bench.poll()
                    r = bench.edits(args.trials, first=1 if mode == "inotify" else 1 + args.trials)
                    rows.append((f"data edit -> `prepare` started ({mode})", ms(r["data_start"])))
                    rows.append((f"data edit -> wave finished, 4 stages ({mode})", ms(r["data_done"])))
                    rows.append((f"code edit -> `prepare` started on new code ({mode})", ms(r["code_start"])))
                    rows.append((f"code edit -> wave finished ({mode})", ms(r["code_done"])))
            finally:
                rows.append(("`down -v`", f"{bench.down():.1f} s"))
    finally:
        sh([str(REPO / "deploy" / "private-dockerd"), "stop", str(engine_dir)], base_env)
    print(f"| compose stack, 2 pools x 2 jobs, quickstart ({args.trials} edits of each kind; p50 / p95) | |")
    print("|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
