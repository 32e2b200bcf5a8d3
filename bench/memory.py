"""Peak memory of each process of a cold `pivot repro` (issue 14, goal 3: the engine's
memory at 10,000 stages).

    python bench/memory.py PROJECT [--interval 0.05]

Removes PROJECT's `.pivot/` and `out/`, runs `pivot repro --display plain` there and,
until it exits, samples every process of its tree from /proc: private memory
(`smaps_rollup` Private_Clean + Private_Dirty: what the process alone holds; pages
shared after a fork count once, in no one's private) and RSS, keeping each one's peak.
Prints them per process with its role (the CLI holds the one-shot engine's broker
thread), and the engine's total: everything but the workers (they hold the stages'
own imports and data) and the loader (it exits once the pipeline is loaded). Sampling
misses peaks shorter than the interval.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from pathlib import Path

from benchcommon import pivot_cmd, pivot_env


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, command line) of a live process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    return int(fields[1]), cmd


def _memory(pid: int) -> tuple[int, int] | None:
    """(private, rss) in KiB."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in ("Rss:", "Private_Clean:", "Private_Dirty:"):
                    values[parts[0]] = int(parts[1])
    except OSError:
        return None
    return values.get("Private_Clean:", 0) + values.get("Private_Dirty:", 0), values.get("Rss:", 0)


def _tree(root: int) -> dict[int, tuple[int, str]]:
    procs = {pid: info for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if (info := _stat(pid))}
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in procs.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return {pid: procs[pid] for pid in tree if pid in procs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("project", type=Path)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between samples [0.05]")
    args = parser.parse_args()
    project = args.project.resolve()
    for name in (".pivot", "out"):
        shutil.rmtree(project / name, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen([*pivot_cmd(), "repro", "--display", "plain"], cwd=project, env=pivot_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks: dict[int, tuple[int, int, int, str]] = {}  # pid -> (private, rss, ppid, cmd)
    while proc.poll() is None:
        for pid, (ppid, cmd) in _tree(proc.pid).items():
            mem = _memory(pid)
            if mem is None:
                continue
            old = peaks.get(pid, (0, 0, ppid, cmd))
            peaks[pid] = (max(old[0], mem[0]), max(old[1], mem[1]), ppid, cmd)
        time.sleep(args.interval)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"pivot repro exited {proc.returncode}: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
    print(f"cold run {wall:.2f} s ({project})")
    engine = 0
    for pid, (private, rss, ppid, _) in sorted(peaks.items()):
        role = _role(pid, ppid, proc.pid, peaks)
        if role not in ("worker", "loader"):
            engine += private
        print(f"{role:12s} pid {pid:7d}  private {private / 1024:6.1f} MiB  rss {rss / 1024:6.1f} MiB")
    print(f"engine (all but workers and the loader): {engine / 1024:.1f} MiB private")


def _role(pid: int, ppid: int, cli: int, peaks: dict[int, tuple[int, int, int, str]]) -> str:
    """Which part of the engine a process is, from its place in the tree: the CLI forks
    the loader (which exits) and the pool; the pool forks its forkserver (whose children
    are the workers) and multiprocessing's resource tracker."""
    if pid == cli:
        return "cli+broker"
    if ppid == cli:
        children = [p for p, v in peaks.items() if v[2] == pid]
        return "pool" if children else "loader"
    grand = peaks.get(ppid)
    if grand is not None and grand[2] == cli:
        return "forkserver" if any(v[2] == pid for v in peaks.values()) else "helper"
    return "worker"


if __name__ == "__main__":
    main()
