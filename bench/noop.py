"""Wall time of a no-op `pivot repro`: on examples/quickstart and on generated pipelines.

    python bench/noop.py [--stages 300] [--repeat 5]

Copies/generates each project into a temp dir, runs `pivot repro` once to make it up to
date, then times `--repeat` no-op runs and prints the median and min.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchcommon import pivot_cmd, pivot_env

HERE = Path(__file__).resolve().parent


def time_noop(project: Path, repeat: int) -> list[float]:
    cmd = [*pivot_cmd(), "repro", "--display", "plain"]
    subprocess.run(cmd, cwd=project, check=True, capture_output=True, env=pivot_env())
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = subprocess.run(cmd, cwd=project, check=True, capture_output=True, text=True, env=pivot_env())
        times.append(time.perf_counter() - start)
        if " ran" in out.stdout.splitlines()[-1]:
            raise SystemExit(f"not a no-op run in {project}:\n{out.stdout[-500:]}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, action="append", help="generated pipeline sizes (default 300)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        projects = {"examples/quickstart (4 stages)": Path(tmp) / "quickstart"}
        shutil.copytree(HERE.parent / "examples" / "quickstart", projects["examples/quickstart (4 stages)"])
        for n in args.stages or [300]:
            dest = Path(tmp) / f"gen{n}"
            subprocess.run([sys.executable, str(HERE / "gen_pipeline.py"), str(dest), "--stages", str(n)],
                           check=True, capture_output=True)
            projects[f"generated, {n} stages"] = dest
        for label, project in projects.items():
            times = time_noop(project, args.repeat)
            print(f"{label}: median {statistics.median(times):.3f} s, min {min(times):.3f} s "
                  f"over {args.repeat} no-op runs")


if __name__ == "__main__":
    main()
