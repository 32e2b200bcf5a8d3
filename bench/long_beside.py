"""A long stage beside chains of short ones, two Pivot trees alternated: how long a cold
`pivot repro -j 2` takes, and when the short chains end.

    python bench/long_beside.py --a /tmp/before --b . [--rounds 5] [--long 3] [--short 0.3]

The project (made in a temp folder): `long` sleeps LONG seconds; `s1` sleeps SHORT; `s2`
and the three stages after it (a chain) each sleep SHORT. With two workers the floor is
LONG plus the engine's start: the chain runs beside `long`. A stage queued behind `long`
in its worker's pipe while the other worker is idle would add the chain's time.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchcommon import compile_trees, pivot_cmd, pivot_env, trees_parser

PIPELINE = '''\
import time

from pivot import stage


def work(out, secs):
    time.sleep(secs)
    with open(out, "w") as f:
        f.write(out)


@stage(deps=["in.txt"], outs=["long.txt"])
def long() -> None:
    work("long.txt", {long})


@stage(deps=["in.txt"], outs=["s1.txt"])
def s1() -> None:
    work("s1.txt", {short})


@stage(deps=["in.txt"], outs=["s2.txt"])
def s2() -> None:
    work("s2.txt", {short})


@stage(deps=["s2.txt"], outs=["t1.txt"])
def t1() -> None:
    work("t1.txt", {short})


@stage(deps=["t1.txt"], outs=["t2.txt"])
def t2() -> None:
    work("t2.txt", {short})


@stage(deps=["t2.txt"], outs=["t3.txt"])
def t3() -> None:
    work("t3.txt", {short})
'''


def cold_run(tree: Path, project: Path) -> tuple[float, float]:
    """The command's wall time, and when the chain's last stage (t3) finished."""
    for made in project.glob("*.txt"):
        if made.name != "in.txt":
            made.unlink()
    shutil.rmtree(project / ".pivot", ignore_errors=True)
    start = time.time()
    done = subprocess.run([*pivot_cmd(), "repro", "-j", "2", "--json"], cwd=project,
                          env={**pivot_env(), "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    end = time.time()
    if done.returncode != 0:
        raise SystemExit(f"{tree}: pivot repro exited {done.returncode}\n{done.stderr[-2000:]}")
    events = [json.loads(line) for line in done.stdout.splitlines()]
    chain_end = next(e["ts"] for e in events if e["event"] == "stage_finished" and e["stage"] == "t3")
    return end - start, chain_end - start


def main() -> None:
    parser = trees_parser(__doc__, rounds=5)
    parser.add_argument("--long", type=float, default=3.0)
    parser.add_argument("--short", type=float, default=0.3)
    args = parser.parse_args()
    compile_trees(args.a, args.b)
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder)
        (project / "pipeline.py").write_text(PIPELINE.format(long=args.long, short=args.short))
        (project / "in.txt").write_text("in\n")
        runs: dict[Path, list[tuple[float, float]]] = {args.a: [], args.b: []}
        for r in range(args.rounds):
            for tree in (args.a, args.b) if r % 2 == 0 else (args.b, args.a):
                runs[tree].append(cold_run(tree, project))
    for tree, got in runs.items():
        walls, chains = sorted(w for w, _ in got), sorted(c for _, c in got)
        print(f"{tree}: end {walls[0]:.2f} / {statistics.median(walls):.2f} / {walls[-1]:.2f} s, "
              f"chain's last stage done {statistics.median(chains):.2f} s (median)")
    print(f"long {args.long} s, short {args.short} s, {args.rounds} rounds")


if __name__ == "__main__":
    main()
