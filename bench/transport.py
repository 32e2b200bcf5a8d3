"""Per-stage overhead of a run through the engine's transports.

    python bench/transport.py [--stages 300] [--repeat 3]

Writes a chain of N trivial stages (each reads the previous one's output), then times
`pivot repro -f` (every stage runs, one after the other) through:

- `in-process`: no engine running: the CLI's own broker thread and one pool (the
  one-shot shortcut);
- `ipc`: a `pivot broker` (its own process, default ipc endpoints) and one
  `pivot workers -j 1`, with `pivot repro --broker`;
- `tcp`: the same on tcp://127.0.0.1 (free ports);
- `tcp+curve`: tcp with CURVE keys (a keys folder made for the run);
- `tcp-2-pools`: two `pivot workers -j 1` on tcp (a chain runs one stage at a time, so
  this shows what a second pool costs, not what it gains);
- `dask`: `pivot workers --dask` on a `dask scheduler` and one `dask worker` (one
  thread) on loopback: each stage a Dask task running it in a fresh process.

`--cases ipc,dask` picks some (default: all but dask; names: see --help).

Prints a Markdown table: the median wall time and the time per stage.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchcommon import chain_lines, pivot_cmd, pivot_env

LABELS = {
    "in-process": "in-process (one-shot engine; includes starting its pool and loader, ~0.3 s)",
    "ipc": "`pivot broker` (ipc) + one `pivot workers`",
    "tcp": "tcp on loopback",
    "tcp+curve": "tcp + CURVE",
    "tcp-2-pools": "tcp, two pools",
    "dask": "`pivot workers --dask`: one Dask worker, a fresh process per stage",
}


def write_chain(root: Path, n: int) -> None:
    lines = chain_lines(n)
    (root / "out").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "in.txt").write_text("x")
    (root / "pipeline.py").write_text("\n".join(lines))


def wait_control(root: Path, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            info = json.loads((root / ".pivot" / "run" / "endpoints.json").read_text())
            if info.get("pid") == proc.pid:
                return str(info["control"])
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise SystemExit("the broker did not start")


def timed_repro(root: Path, env: dict[str, str], *args: str) -> float:
    t0 = time.perf_counter()
    result = subprocess.run([*pivot_cmd(), "repro", "-f", "--json", *args], cwd=root, env=env,
                            capture_output=True, text=True)
    took = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"repro failed:\n{result.stderr[-2000:]}")
    return took


def run_case(root: Path, case: str, repeat: int, keys: Path) -> list[float]:
    env = pivot_env()
    if case == "in-process":
        timed_repro(root, env)  # warm the state and fingerprint caches
        return [timed_repro(root, env) for _ in range(repeat)]
    bind = [] if case in ("ipc", "dask") else ["--bind", "tcp://127.0.0.1:0"]
    if case == "tcp+curve":
        env = {**env, "PIVOT_KEYS_DIR": str(keys)}
    procs = [subprocess.Popen([*pivot_cmd(), "broker", *bind], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        control = wait_control(root, procs[0])
        extra: list[str] = []
        if case == "dask":
            extra = ["--dask", start_dask(root, procs)]
        for name in ("p1", "p2")[: 2 if case == "tcp-2-pools" else 1]:
            procs.append(subprocess.Popen(
                [*pivot_cmd(), "workers", "--broker", control, "-j", "1", "--name", name, *extra], cwd=root,
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            ))
        timed_repro(root, env, "--broker", control)  # warm-up: the pools load the pipeline
        return [timed_repro(root, env, "--broker", control) for _ in range(repeat)]
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGINT if proc.args[0].endswith("dask") else signal.SIGTERM)
            proc.wait(30)


def start_dask(root: Path, procs: list[subprocess.Popen[bytes]]) -> str:
    """A scheduler and one single-thread worker on loopback; its address."""
    dask = str(Path(sys.executable).with_name("dask"))
    sched = root.parent / f"{root.name}-scheduler.json"
    for args in (["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"],
                 ["worker", "--nthreads", "1", "--no-dashboard", "--no-nanny"]):
        procs.append(subprocess.Popen([dask, *args, "--scheduler-file", str(sched)], cwd=root.parent,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        deadline = time.monotonic() + 30
        while not sched.exists():
            if time.monotonic() > deadline:
                raise SystemExit("the Dask scheduler did not start")
            time.sleep(0.05)
    from distributed import Client

    with Client(scheduler_file=str(sched), timeout=30) as client:
        client.wait_for_workers(1, timeout=30)
        return str(client.scheduler.address)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default=",".join(c for c in LABELS if c != "dask"),
                        help=f"comma-separated, of: {', '.join(LABELS)}")
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",")]
    if unknown := set(cases) - set(LABELS):
        raise SystemExit(f"unknown cases: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys"
        subprocess.run([*pivot_cmd(), "keys", "init", "--dir", str(keys)], check=True,
                       capture_output=True, env=pivot_env())
        print(f"| {args.stages}-stage chain, `pivot repro -f` | median | per stage |")
        print("|---|---|---|")
        for case in cases:
            root = Path(tmp) / case.replace("+", "-")
            write_chain(root, args.stages)
            times = run_case(root, case, args.repeat, keys)
            median = statistics.median(times)
            print(f"| {LABELS[case]} | {median:.2f} s | {median / args.stages * 1000:.2f} ms |", flush=True)


if __name__ == "__main__":
    main()
