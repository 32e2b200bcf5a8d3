"""A helper saved while a long stage that does not call it runs, under `pivot up`, two
Pivot trees alternated: how long after the save everything is up to date again, and
how many times the long stage ran for it.

    python bench/edit_beside.py --a /tmp/before --b . [--rounds 3] [--long 4]

The project (made in a temp folder): `long` reads long.in and sleeps LONG seconds; `b`
calls helpers.tag. Each round edits long.in (a wave runs `long`), saves helpers.py
halfway through `long`'s run, and waits until `b` ran on the new code and `long` ended
well. The floor is what was left of `long`'s run (LONG / 2); a tree that cancels `long`
at the save and runs it again from the start takes a whole LONG after it.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchcommon import Events, compile_trees, pivot_cmd, pivot_env, trees_parser

PIPELINE = '''\
import time

import helpers
from pivot import stage


@stage(deps=["long.in"], outs=["long.txt"])
def long() -> None:
    with open("runs.log", "a") as f:  # each start
        f.write("long\\n")
    time.sleep({long})
    with open("long.txt", "w") as f:
        f.write(open("long.in").read())


@stage(deps=["b.in"], outs=["b.txt"])
def b() -> None:
    with open("b.txt", "w") as f:
        f.write(helpers.tag(open("b.in").read()))
'''

HELPERS = 'def tag(text: str) -> str:\n    return {version!r} + text\n'


def session(tree: Path, long_s: float) -> tuple[float, int]:
    """One `pivot up` of `tree`: seconds from the save to everything up to date, and how
    many times `long` started again after the save."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "pipeline.py").write_text(PIPELINE.format(long=long_s))
        (root / "helpers.py").write_text(HELPERS.format(version="v1"))
        (root / "long.in").write_text("0\n")
        (root / "b.in").write_text("b\n")
        (root / ".pivotignore").write_text("runs.log\n")
        proc = subprocess.Popen(
            [*pivot_cmd(), "up", "--display", "json"], cwd=root, env={**pivot_env(), "PYTHONPATH": str(tree)},
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        )
        ev = Events(proc)
        try:
            ev.wait(0, lambda e: e["event"] == "wave_finished", timeout=60 + long_s)
            mark = len(ev.items)
            (root / "long.in").write_text("1\n")
            ev.wait(mark, lambda e: e["event"] == "stage_started" and e["stage"] == "long")
            time.sleep(long_s / 2)  # the save comes halfway through long's run
            runs_before = (root / "runs.log").read_text().count("long")
            mark = len(ev.items)
            saved = time.time()
            (root / "helpers.py").write_text(HELPERS.format(version="v2"))
            b_done = ev.wait(mark, lambda e: e["event"] == "stage_finished" and e["stage"] == "b"
                             and e["status"] == "ran", timeout=60 + 2 * long_s)
            long_done = ev.wait(mark, lambda e: e["event"] == "stage_finished" and e["stage"] == "long"
                                and e["status"] == "ran", timeout=60 + 2 * long_s)
            if (root / "b.txt").read_text() != "v2b\n":
                raise SystemExit(f"{tree}: b did not run on the new code")
            runs = (root / "runs.log").read_text().count("long") - runs_before
            return max(float(b_done["ts"]), float(long_done["ts"])) - saved, runs
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


def main() -> None:
    parser = trees_parser(__doc__, rounds=3)
    parser.add_argument("--long", type=float, default=4.0)
    args = parser.parse_args()
    compile_trees(args.a, args.b)
    got: dict[Path, list[tuple[float, int]]] = {args.a: [], args.b: []}
    for r in range(args.rounds):
        for tree in (args.a, args.b) if r % 2 == 0 else (args.b, args.a):
            got[tree].append(session(tree, args.long))
    for tree, rows in got.items():
        waits = sorted(w for w, _ in rows)
        print(f"{tree}: up to date {waits[0]:.2f} / {statistics.median(waits):.2f} / {waits[-1]:.2f} s "
              f"after the save; long started again {sorted({n for _, n in rows})} time(s)")
    print(f"long {args.long} s, saved halfway through its run, {args.rounds} rounds")


if __name__ == "__main__":
    main()
