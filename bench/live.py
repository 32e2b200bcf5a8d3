"""Latency of `pivot up`: file write -> first affected stage started, and -> wave finished.

    python bench/live.py [--chain 3 --chain 50] [--trials 20] [--starts 10]

For each chain length N, writes a project whose stage s0 reads data/in.txt and calls
helpers.transform(), and s{i} reads s{i-1}'s output; starts `pivot up --display json`;
then, `--trials` times each, (a) rewrites data/in.txt, (b) edits helpers.transform (a
helper used by s0 only), and measures from just before the write to the broker's
`stage_started` of s0 (for (b): in a wave triggered by the code change, so it runs the
new code) and to `wave_finished`. Also counts waves: every edit must start exactly one.
Event times are the broker's publish times (same clock as this script). `--starts K`
also times K starts of `pivot up` on a fresh copy of the 3-stage project: from the
command's start to s0's `stage_started` (start-up to first stage started).

`--import numpy` makes s0 import that module in its body, like ML stages importing
numpy or torch: after a code change the new workers fork from a server that has it
imported already (pivot/runtime/preload.py); `PIVOT_PRELOAD=0` in the environment turns
that off, for comparison. The import shows in "-> wave finished" (a stage counts as
started when it is handed to a worker, before its code runs: after a code edit, a new
worker is still starting and importing the pipeline then; "s0's body" is when s0's
first line ran, as s0 itself writes it to a file outside the project).

`--pause S` waits S seconds after each wave's end before the next edit (a person's pace;
by default the next edit comes at once, while the engine may still be settling).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from benchcommon import Events, pivot_cmd, pivot_env

HELPERS = "def transform(text: str) -> str:\n    return text.upper() + {tag!r}\n"


def began_path(root: Path) -> Path:
    """Where s0 writes the time its body began (outside the project: no change to it)."""
    return root.parent / f"{root.name}.s0-began"


def write_project(root: Path, n: int, module: str | None = None) -> None:
    lines = ["import time", "", "from pivot import stage", "import helpers", ""]
    lines += [
        '@stage(deps=["data/in.txt"], outs=["out/s0.txt"])',
        "def s0() -> None:",
        f"    open({str(began_path(root))!r}, 'w').write(repr(time.time()))",
        *([f"    import {module}  # noqa: F401"] if module else []),
        '    text = open("data/in.txt").read()',
        '    open("out/s0.txt", "w").write(helpers.transform(text))',
        "",
    ]
    for i in range(1, n):
        lines += [
            f'@stage(deps=["out/s{i - 1}.txt"], outs=["out/s{i}.txt"])',
            f"def s{i}() -> None:",
            f'    open("out/s{i}.txt", "w").write(open("out/s{i - 1}.txt").read() + "{i}")',
            "",
        ]
    (root / "out").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "pipeline.py").write_text("\n".join(lines))
    (root / "helpers.py").write_text(HELPERS.format(tag="v0"))
    (root / "data" / "in.txt").write_text("start\n")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(n: int, trials: int, module: str | None, pause: float = 0.0) -> dict[str, list[float] | int]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / f"chain{n}"
        write_project(root, n, module)
        proc = subprocess.Popen(
            [*pivot_cmd(), "up", "--display", "json"], cwd=root, env=pivot_env(),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        )
        ev = Events(proc)
        try:
            ev.wait(0, lambda e: e["event"] == "wave_finished")
            keys = ("data_start", "data_body", "data_done", "code_start", "code_body", "code_done")
            results: dict[str, list[float] | int] = {k: [] for k in keys}
            waves_before = sum(1 for e in ev.items if e["event"] == "wave_started")
            edits = 0
            for i in range(trials):
                for kind in ("data", "code"):
                    time.sleep(pause)  # a person's pace between a wave's end and the next save
                    mark = len(ev.items)
                    t0 = time.time()
                    if kind == "data":
                        (root / "data" / "in.txt").write_text(f"trial {i}\n")
                    else:
                        (root / "helpers.py").write_text(HELPERS.format(tag=f"v{i + 1}"))
                    trigger = "files" if kind == "data" else "code"
                    wave = ev.wait(mark, lambda e, t=trigger: e["event"] == "wave_started" and e["trigger"] == t)
                    started = ev.wait(mark, lambda e, w=wave: e["event"] == "stage_started" and e["wave"] == w["wave"] and e["stage"] == "s0")
                    done = ev.wait(mark, lambda e, w=wave: e["event"] == "wave_finished" and e["wave"] == w["wave"])
                    edits += 1
                    results[f"{kind}_start"].append(float(started["ts"]) - t0)  # type: ignore[union-attr, arg-type]
                    results[f"{kind}_done"].append(float(done["ts"]) - t0)  # type: ignore[union-attr, arg-type]
                    results[f"{kind}_body"].append(float(began_path(root).read_text()) - t0)  # type: ignore[union-attr]
            waves = sum(1 for e in ev.items if e["event"] == "wave_started") - waves_before
            results["redundant_waves"] = waves - edits
            return results
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


def startup(trials: int) -> list[float]:
    """Seconds from starting `pivot up` on a project that never ran to s0 started."""
    times = []
    for _ in range(trials):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "fresh"
            write_project(root, 3)
            t0 = time.time()
            proc = subprocess.Popen(
                [*pivot_cmd(), "up", "--display", "json"], cwd=root, env=pivot_env(),
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
            )
            ev = Events(proc)
            try:
                started = ev.wait(0, lambda e: e["event"] == "stage_started" and e["stage"] == "s0")
                times.append(float(started["ts"]) - t0)  # type: ignore[arg-type]
                ev.wait(0, lambda e: e["event"] == "wave_finished")
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chain", type=int, action="append", help="chain lengths (default 3 and 50)")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--import", dest="module", help="a module s0 imports in its body (e.g. numpy)")
    parser.add_argument("--starts", type=int, default=0, help="also time this many start-ups")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds between a wave's end and the next edit (default 0: at once)")
    args = parser.parse_args()
    if args.starts:
        times = startup(args.starts)
        print(f"start-up -> s0 started: p50 {pct(times, 0.5) * 1000:.0f} ms, "
              f"p95 {pct(times, 0.95) * 1000:.0f} ms ({args.starts} starts)\n", flush=True)
    print("| chain | data edit -> s0 started, p50 / p95 | -> s0's body | -> wave finished, p50 / p95 "
          "| helper edit -> s0 started (new code), p50 / p95 | -> s0's body | -> wave finished, p50 / p95 "
          "| redundant waves |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.chain or [3, 50]:
        r = measure(n, args.trials, args.module, args.pause)
        cells = []
        for key in ("data_start", "data_body", "data_done", "code_start", "code_body", "code_done"):
            values = r[key]
            assert isinstance(values, list)
            cells.append(f"{pct(values, 0.5) * 1000:.0f} / {pct(values, 0.95) * 1000:.0f} ms")
        print(f"| {n} | " + " | ".join(cells) + f" | {r['redundant_waves']} |", flush=True)


if __name__ == "__main__":
    main()
