"""`pivot repro` against `dvc repro` on the same DVC project, side by side in one run.

    python bench/vs_dvc.py [--trials 5] [--dvc PATH]

Writes a DVC project (git repository, dvc.yaml with four `python src/STAGE.py` stages in a
chain, params.yaml read by two of them), copies it twice, and times each tool's command
in its own copy, alternating (dvc, pivot, pivot with PIVOT_WARM=0, dvc, ...; each trial
starting with the next tool) so all see the same load:

- cold: the first run (every stage runs);
- no-op: nothing changed;
- script edit: a real change to the first stage's script (it runs; its output is the
  same, so nothing after it does);
- params edit: a key only the third stage reads;
- comment edit: a comment added to the first stage's script (DVC runs it and, as its
  output is the same, nothing after it; Pivot runs nothing).

Each figure is the median wall time of the command over `--trials` (each trial starts
from a fresh copy for "cold"). DVC comes from `--dvc`, else from a virtual environment
this script makes once under ~/.cache/pivot-bench/dvc-venv (`pip install dvc`).

Pivot runs twice: as it is (a `python script.py` stage runs warm: forked from a worker
with the scripts' third-party imports done, pivot/runtime/warm.py) and with
`PIVOT_WARM=0` (every script a new interpreter, as DVC runs it). `python` in the
commands is this interpreter for every tool (its folder first on PATH).

`--import pandas` makes every script import that module first, as real stages import
pandas, sklearn or torch (it must be installed for this interpreter). `--live N` also
times N real edits of the first script under `pivot up` (edit -> wave finished), warm and
with PIVOT_WARM=0; DVC has no live mode (its loop is `dvc repro` per save: the "script
edit" row).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchcommon import Events, pivot_cmd, pivot_env

DVC_YAML = """\
stages:
  prepare:
    cmd: python src/prepare.py
    deps: [src/prepare.py, data/raw.csv]
    params: [prepare.rows]
    outs: [data/clean.csv]
  features:
    cmd: python src/features.py
    deps: [src/features.py, data/clean.csv]
    outs: [data/features.csv]
  train:
    cmd: python src/train.py
    deps: [src/train.py, data/features.csv]
    params: [train.lr, train.epochs]
    outs: [model.json]
  evaluate:
    cmd: python src/evaluate.py
    deps: [src/evaluate.py, model.json, data/features.csv]
    metrics:
      - metrics.json:
          cache: false
"""

PARAMS = "prepare:\n  rows: 2000\ntrain:\n  lr: 0.1\n  epochs: 20\n"

SCRIPTS = {
    "prepare": """\
import json

import yaml

rows = yaml.safe_load(open("params.yaml"))["prepare"]["rows"]
lines = open("data/raw.csv").read().splitlines()[1 : rows + 1]
open("data/clean.csv", "w").write("x,y\\n" + "\\n".join(lines) + "\\n")
""",
    "features": """\
rows = [line.split(",") for line in open("data/clean.csv").read().splitlines()[1:]]
out = ["x,x2,y"] + [f"{x},{float(x) ** 2},{y}" for x, y in rows]
open("data/features.csv", "w").write("\\n".join(out) + "\\n")
""",
    "train": """\
import json

import yaml

p = yaml.safe_load(open("params.yaml"))["train"]
rows = [list(map(float, line.split(","))) for line in open("data/features.csv").read().splitlines()[1:]]
w = 0.0
for _ in range(p["epochs"]):
    for x, _, y in rows:
        w += p["lr"] * (y - w * x) * x / len(rows)
json.dump({"w": w}, open("model.json", "w"))
""",
    "evaluate": """\
import json

w = json.load(open("model.json"))["w"]
rows = [list(map(float, line.split(","))) for line in open("data/features.csv").read().splitlines()[1:]]
mse = sum((y - w * x) ** 2 for x, _, y in rows) / len(rows)
json.dump({"mse": mse}, open("metrics.json", "w"))
""",
}


def write_project(root: Path, module: str | None) -> None:
    (root / "src").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text(PARAMS)
    (root / "data" / "raw.csv").write_text("x,y\n" + "".join(f"{i / 100},{2 * i / 100 + 1}\n" for i in range(5000)))
    for name, text in SCRIPTS.items():
        (root / "src" / f"{name}.py").write_text(f"import {module}\n{text}" if module else text)
    quiet = {"capture_output": True, "check": True, "cwd": root}
    subprocess.run(["git", "init", "-q"], **quiet)  # type: ignore[call-overload]
    subprocess.run(["git", "-c", "user.email=b@b", "-c", "user.name=b", "add", "-A"], **quiet)  # type: ignore[call-overload]
    subprocess.run(["git", "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "project"], **quiet)  # type: ignore[call-overload]


def dvc_command(given: str | None) -> list[str]:
    if given:
        return [given]
    venv = Path.home() / ".cache" / "pivot-bench" / "dvc-venv"
    exe = venv / "bin" / "dvc"
    if not exe.exists():
        print(f"installing DVC into {venv} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "dvc"], check=True)
    return [str(exe)]


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{result.stdout}\n{result.stderr}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--dvc", default=None, help="the dvc executable (default: a venv made for this bench)")
    parser.add_argument("--import", dest="module", default=None, help="a module every script imports first")
    parser.add_argument("--live", type=int, default=0, help="also time N script edits under `pivot up`")
    args = parser.parse_args()
    dvc = dvc_command(args.dvc)
    env = pivot_env()
    env.pop("PYTHONUNBUFFERED", None)
    env.pop("PIVOT_WARM", None)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["DVC_NO_ANALYTICS"] = "1"
    cold_env = {**env, "PIVOT_WARM": "0"}
    version = subprocess.run([*dvc, "--version"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="pivot-vs-dvc-") as tmp:
        template = Path(tmp) / "template"
        write_project(template, args.module)
        subprocess.run([*dvc, "init", "-q"], cwd=template, check=True, capture_output=True)
        # No update check or analytics: each starts a process that outlives the command
        # and would weigh on whichever command runs next.
        subprocess.run([*dvc, "config", "core.check_update", "false"], cwd=template, check=True, capture_output=True)
        pivot = [*pivot_cmd(), "repro", "--display", "plain"]
        runs = {"dvc": ([*dvc, "repro"], env), "pivot": (pivot, env), "pivot-cold": (pivot, cold_env)}
        times: dict[tuple[str, str], list[float]] = {}
        for trial in range(args.trials):
            copies = {}
            for tool in runs:
                copies[tool] = Path(tmp) / f"{tool}-{trial}"
                shutil.copytree(template, copies[tool], symlinks=True)
            steps = [
                ("cold", None),
                ("no-op", None),
                ("script edit", lambda r: _append(r / "src" / "prepare.py", "rows = rows  # kept\nprint(len(lines))\n")),
                ("params edit", lambda r: (r / "params.yaml").write_text(PARAMS.replace("lr: 0.1", "lr: 0.2"))),
                ("comment edit", lambda r: _append(r / "src" / "prepare.py", "# a comment\n")),
            ]
            # Each trial starts with another tool, every other one in reverse order: what
            # one leaves running weighs on each of the others in turn.
            order = list(runs)[trial % len(runs):] + list(runs)[:trial % len(runs)]
            order = order[::-1] if trial % 2 else order
            for step, change in steps:
                for tool in order:
                    cmd, tool_env = runs[tool]
                    if change is not None:
                        change(copies[tool])
                    times.setdefault((step, tool), []).append(timed(cmd, copies[tool], tool_env))
            for copy in copies.values():
                shutil.rmtree(copy, ignore_errors=True)
        live = {mode: _live(template, Path(tmp) / f"live-{mode}", args.live, e)
                for mode, e in (("warm", env), ("cold", cold_env))} if args.live else {}
    imports = f"; every script imports {args.module}" if args.module else ""
    print(f"DVC {version}; {args.trials} trials{imports}; median wall time of the command (s)")
    print("| step | dvc repro | pivot repro | pivot repro, PIVOT_WARM=0 | pivot / dvc |")
    print("|---|---|---|---|---|")
    for step in ("cold", "no-op", "script edit", "params edit", "comment edit"):
        d, p, c = (statistics.median(times[(step, tool)]) for tool in ("dvc", "pivot", "pivot-cold"))
        print(f"| {step} | {d:.2f} | {p:.2f} | {c:.2f} | {p / d:.2f} |", flush=True)
    for mode, values in live.items():
        print(f"pivot up, {mode}: script edit -> wave finished, {len(values)} edits: median {statistics.median(values):.3f} s,"
              f" max {max(values):.3f} s")


def _live(template: Path, root: Path, edits: int, env: dict[str, str]) -> list[float]:
    """Seconds from a real edit of src/prepare.py to the end of the wave it starts."""
    shutil.copytree(template, root, symlinks=True)
    proc = subprocess.Popen([*pivot_cmd(), "up", "--display", "json"], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    events = Events(proc)
    took = []
    try:
        events.wait(0, lambda e: e["event"] == "wave_finished", timeout=120)
        for i in range(edits):
            mark = len(events.items)
            started = time.time()
            _append(root / "src" / "prepare.py", f"print({i})\n")
            wave = events.wait(mark, lambda e: e["event"] == "wave_started")
            done = events.wait(mark, lambda e, w=wave: e["event"] == "wave_finished" and e["wave"] == w["wave"])
            took.append(float(done["ts"]) - started)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    return took


def _append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)
    os.utime(path)


if __name__ == "__main__":
    main()
