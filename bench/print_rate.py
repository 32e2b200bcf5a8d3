"""How fast a stage can print under Pivot, against the same code printing to /dev/null.

    python bench/print_rate.py [--lines 1000000] [--trials 3]

Three ways to print `--lines` short lines (`loss 0.12345 step I`), each timed inside the
stage's code (perf_counter around the loop, written to an output file), so that neither
start-up nor anything after the stage counts:

- `print`: Python's print to sys.stdout;
- `stderr`: print to sys.stderr (written per line, as Python's stderr always is);
- `child`: a subprocess printing (its writes go to the file descriptor directly).

The baseline is the same function run by `python` with stdout and stderr on /dev/null;
under Pivot it is the stage of a `pivot repro --force` (in-process broker, one pool),
whose output is captured, streamed and kept in its log. Runs alternate (baseline, Pivot)
in one process, so the ratio is measured under the same load (this machine is shared).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchcommon import pivot_cmd, pivot_env

KINDS = ("print", "stderr", "child")

PRINTERS = '''\
import json
import subprocess
import sys
import time


def loop(kind, n):
    t0 = time.perf_counter()
    if kind == "print":
        for i in range(n):
            print("loss 0.12345 step", i)
    elif kind == "stderr":
        for i in range(n):
            print("loss 0.12345 step", i, file=sys.stderr)
    else:
        code = f"for i in range({n}): print('loss 0.12345 step', i)"
        subprocess.run([sys.executable, "-c", code], check=True)
    sys.stdout.flush()
    return time.perf_counter() - t0
'''

PIPELINE = '''\
import json

from printers import loop
from pivot import stage

N = {n}
'''

STAGE = '''
@stage(outs=["{kind}.json"])
def print_{kind}() -> None:
    took = loop("{kind}", N)
    with open("{kind}.json", "w") as f:
        json.dump({{"s": took}}, f)
'''


def env() -> dict[str, str]:
    """PYTHONUNBUFFERED (set in many containers) makes every print a write: both sides
    run without it, as a user's terminal session does."""
    out = pivot_env()
    out.pop("PYTHONUNBUFFERED", None)
    return out


def baseline(root: Path, kind: str, n: int) -> float:
    code = f"import sys; sys.path.insert(0, {str(root)!r}); from printers import loop; " \
           f"t = loop({kind!r}, {n}); sys.__stdout__.flush(); open('base.json', 'w').write(str(t))"
    with open("/dev/null", "w") as null:
        subprocess.run([sys.executable, "-c", code], cwd=root, stdout=null, stderr=null, check=True, env=env())
    return float((root / "base.json").read_text())


def under_pivot(root: Path, kind: str) -> float:
    result = subprocess.run([*pivot_cmd(), "repro", "--force", f"print_{kind}", "--display", "plain"],
                            cwd=root, env=env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"pivot repro failed:\n{result.stdout}\n{result.stderr}")
    return float(json.loads((root / f"{kind}.json").read_text())["s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pivot-print-") as tmp:
        root = Path(tmp)
        (root / "printers.py").write_text(PRINTERS)
        (root / "pipeline.py").write_text(PIPELINE.format(n=args.lines) + "".join(STAGE.format(kind=k) for k in KINDS))
        subprocess.run([*pivot_cmd(), "init"], cwd=root, env=pivot_env(), capture_output=True, check=True)
        print(f"{args.lines:,} lines each, {args.trials} trials; median seconds inside the stage (lines/s)")
        for kind in KINDS:
            base, pivot = [], []
            for _ in range(args.trials):
                base.append(baseline(root, kind, args.lines))
                pivot.append(under_pivot(root, kind))
            b, p = statistics.median(base), statistics.median(pivot)
            log = root / ".pivot" / "logs" / "stages" / f"print_{kind}.log"
            print(f"  {kind:<7} /dev/null {b:6.2f} s ({args.lines / b:>11,.0f}/s)   pivot {p:6.2f} s "
                  f"({args.lines / p:>11,.0f}/s)   ratio {p / b:4.2f}   log {log.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
