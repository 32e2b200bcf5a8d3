"""Pivot's incremental overhead on generated pipelines: no-op repro, status, a mid-DAG edit.

    python bench/incremental.py [--stages 100 --stages 300 --stages 1000] [--repeat 5]

For each size N, generates a project (bench/gen_pipeline.py) in a temp dir, runs it once
cold, then times, `--repeat` times each (median and min reported):

- `pivot repro` when nothing changed (no-op),
- `pivot status` when nothing changed,
- `pivot repro` after an edit of data/mid.txt, read by one stage in the middle layer
  (that stage and what its new output reaches run; the rest is skipped).

"Overhead per skipped stage" is the slope of the no-op time between the smallest and the
largest size. Prints one Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchcommon import pivot_cmd, pivot_env

HERE = Path(__file__).resolve().parent


def run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*pivot_cmd(), *args], cwd=project, capture_output=True, text=True, env=pivot_env())
    if result.returncode != 0:
        raise SystemExit(f"pivot {' '.join(args)} failed in {project}:\n{result.stderr[-2000:]}")
    return result


def ran_stages(out: str) -> list[str]:
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [e["stage"] for e in events if e["event"] == "stage_finished" and e["status"] == "ran"]


def timed(repeat: int, prepare: Callable[[int], None], action: Callable[[], None]) -> list[float]:
    times = []
    for i in range(repeat):
        prepare(i)
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return times


def measure(project: Path, repeat: int) -> dict[str, list[float]]:
    run(project, "repro", "--json")  # cold: everything runs
    run(project, "repro", "--json")  # settles racy state-cache entries of fresh outputs

    def noop() -> None:
        ran = ran_stages(run(project, "repro", "--json").stdout)
        if ran:
            raise SystemExit(f"not a no-op run in {project}: ran {ran[:5]}")

    def edit(i: int) -> None:
        (project / "data" / "mid.txt").write_text(f"edit {i} at {time.time()}\n")

    ran_after_edit: list[int] = []

    def edited_run() -> None:
        ran_after_edit.append(len(ran_stages(run(project, "repro", "--json").stdout)))

    results = {
        "no-op repro": timed(repeat, lambda i: None, noop),
        "status": timed(repeat, lambda i: None, lambda: run(project, "status", "--json") and None),
        "mid-DAG edit repro": timed(repeat, edit, edited_run),
    }
    print(f"  {project.name}: stages run after each mid-DAG edit: {ran_after_edit}", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, action="append", help="sizes (default 100, 300, 1000)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sizes = args.stages or [100, 300, 1000]
    table: dict[int, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            dest = Path(tmp) / f"gen{n}"
            subprocess.run([sys.executable, str(HERE / "gen_pipeline.py"), str(dest), "--stages", str(n)],
                           check=True, capture_output=True)
            print(f"measuring {n} stages ...", file=sys.stderr)
            table[n] = measure(dest, args.repeat)
    kinds = list(next(iter(table.values())))
    print("| stages | " + " | ".join(f"{k}, median (min)" for k in kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for n, row in table.items():
        cells = [f"{statistics.median(row[k]):.3f} s ({min(row[k]):.3f})" for k in kinds]
        print(f"| {n} | " + " | ".join(cells) + " |")
    if len(sizes) > 1:
        lo, hi = min(sizes), max(sizes)
        slope = (statistics.median(table[hi]["no-op repro"]) - statistics.median(table[lo]["no-op repro"])) / (hi - lo)
        print(f"\nno-op overhead per skipped stage ({lo} -> {hi} stages): {slope * 1000:.3f} ms")


if __name__ == "__main__":
    main()
