"""Cold runs of two Pivot trees on one project, alternated round by round: when, after the
command started, the pipeline was loaded, the first stage started, the last one
finished, and the command ended (from the timestamps of `pivot repro --json`'s events).

    python bench/first_stage.py PROJECT --a /tmp/before --b . [--rounds 6]

What the engine's start costs a run that executes anything (the pool's process, its
workers), apart from the stages themselves. Trees as bench/ab.py takes them.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from benchcommon import compile_trees, pivot_cmd, pivot_env, two_trees_parser

MARKS = ("loaded", "first started", "last finished", "end")


def cold_run(tree: Path, project: Path) -> tuple[float, float, float, float]:
    for leftover in (".pivot", "out"):
        shutil.rmtree(project / leftover, ignore_errors=True)
    env = {**pivot_env(), "PYTHONPATH": str(tree)}
    start = time.time()
    done = subprocess.run([*pivot_cmd(), "repro", "--json"], cwd=project, env=env, capture_output=True, text=True)
    end = time.time()
    if done.returncode != 0:
        raise SystemExit(f"{tree}: pivot repro exited {done.returncode}\n{done.stderr[-2000:]}")
    events = [json.loads(line) for line in done.stdout.splitlines()]

    def when(kind: str, pick: int) -> float:
        return [e["ts"] for e in events if e["event"] == kind][pick] - start

    return when("pipeline_loaded", 0), when("stage_started", 0), when("stage_finished", -1), end - start


def main() -> None:
    args = two_trees_parser(__doc__).parse_args()
    trees = [args.a.resolve(), args.b.resolve()]
    compile_trees(*trees)
    runs: dict[Path, list[tuple[float, ...]]] = {tree: [] for tree in trees}
    for _ in range(args.rounds):
        for tree in trees:
            runs[tree].append(cold_run(tree, args.project.resolve()))
    for tree, got in runs.items():
        medians = [statistics.median(r[i] for r in got) for i in range(len(MARKS))]
        print(f"{tree}: " + ", ".join(f"{mark} {value:.3f} s" for mark, value in zip(MARKS, medians, strict=True)))
    print(f"medians of {args.rounds} rounds, seconds after the command started")


if __name__ == "__main__":
    main()
