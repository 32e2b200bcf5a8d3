"""Two Pivot trees side by side on one project, alternating round by round (the machine is
shared and noisy: a ratio measured together is the figure that holds).

    git worktree add /tmp/before REV
    python bench/ab.py PROJECT --a /tmp/before --b . [--rounds 6] [--measure cold,noop,status,list]

Each tree is imported through PYTHONPATH; its bytecode is compiled first (some containers
set PYTHONDONTWRITEBYTECODE, which would make every run compile every module). `cold`
removes `.pivot/` and `out/` and runs `pivot repro`; `noop` is the run after it (the first
no-op after a cold run) or, without `cold`, a run of an up-to-date project; `edit` appends
a line to data/in0.txt and runs `pivot repro` (the stages downstream of it run). Prints
min / median / max per tree and measure, and (cold - no-op) / N.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchcommon import compile_trees, pivot_cmd, pivot_env, two_trees_parser

MEASURES = ("cold", "noop", "edit", "status", "list")


def stage_count(project: Path) -> int:
    return sum(1 for line in (project / "pipeline.py").read_text().splitlines() if line.startswith('    ("s'))


def run(tree: Path, project: Path, *args: str) -> tuple[float, str]:
    env = {**pivot_env(), "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    done = subprocess.run([*pivot_cmd(), *args], cwd=project, env=env,
                          capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{tree}: pivot {' '.join(args)} exited {done.returncode}\n{done.stderr[-2000:]}")
    return took, done.stdout


def main() -> None:
    parser = two_trees_parser(__doc__)
    parser.add_argument("--measure", default="cold,noop", help=f"some of {','.join(MEASURES)}")
    args = parser.parse_args()
    measures = [m for m in args.measure.split(",") if m]
    unknown = set(measures) - set(MEASURES)
    if unknown:
        parser.error(f"unknown measure(s): {', '.join(sorted(unknown))}")
    trees = {"a": args.a.resolve(), "b": args.b.resolve()}
    compile_trees(*trees.values())
    project = args.project.resolve()
    n = stage_count(project)
    times: dict[str, dict[str, list[float]]] = {t: {m: [] for m in measures} for t in trees}
    for r in range(args.rounds):
        for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
            tree = trees[name]
            if "cold" in measures:
                shutil.rmtree(project / ".pivot", ignore_errors=True)
                shutil.rmtree(project / "out", ignore_errors=True)
                took, out = run(tree, project, "repro", "--display", "plain")
                if f"{n} ran" not in out.splitlines()[-1]:
                    raise SystemExit(f"{tree}: the cold run did not run every stage: {out.splitlines()[-1]}")
                times[name]["cold"].append(took)
            if "noop" in measures:
                took, out = run(tree, project, "repro", "--display", "plain")
                if f"{n} skipped" not in out.splitlines()[-1]:
                    raise SystemExit(f"{tree}: not a no-op: {out.splitlines()[-1]}")
                times[name]["noop"].append(took)
            if "edit" in measures:
                with open(project / "data" / "in0.txt", "a") as f:
                    f.write(f"edit {r} {name}\n")
                took, out = run(tree, project, "repro", "--display", "plain")
                if " ran" not in out.splitlines()[-1]:
                    raise SystemExit(f"{tree}: the edit ran nothing: {out.splitlines()[-1]}")
                times[name]["edit"].append(took)
            for measure in ("status", "list"):
                if measure in measures:
                    times[name][measure].append(run(tree, project, measure)[0])
    for name, by_measure in times.items():
        parts = [f"{m} {min(v):.3f} / {statistics.median(v):.3f} / {max(v):.3f} s" for m, v in by_measure.items()]
        if by_measure.get("cold") and by_measure.get("noop"):
            per = (statistics.median(by_measure["cold"]) - statistics.median(by_measure["noop"])) / n * 1000
            parts.append(f"(cold - no-op) / N {per:.2f} ms")
        print(f"{n} stages, {trees[name]}: " + "; ".join(parts))
    print(f"machine: nproc {os.cpu_count()}, python {sys.version.split()[0]}, {args.rounds} rounds")


if __name__ == "__main__":
    main()
