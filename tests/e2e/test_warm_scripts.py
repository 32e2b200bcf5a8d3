"""`python script.py` command stages run warm (issue 13, point 4): forked from their
pool's worker, they must behave as a fresh interpreter in what scripts rely on. Each
check runs the same script warm and cold (`warm=False`: a new interpreter) and compares
what it saw."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from procs import LiveRun, alive, describe, finished, parse_events, pivot_cmd, wait_for

pytestmark = pytest.mark.timeout(90)

WAIT_S = 30.0

# What a script can see of its interpreter, written as JSON. Taken at its very start
# (before its own imports) for the modules, then its imports, threads, atexit, spawn.
PROBE = '''\
import os, sys
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST = sorted(n for n, m in list(sys.modules.items())
               if (getattr(m, "__file__", None) or "").startswith(ROOT + os.sep))

import atexit, json, logging, multiprocessing, threading, warnings
import helper

try:
    import shared  # pipeline.py's own module, in the project root: not on a script's path
    SHARED = True
except ModuleNotFoundError:
    SHARED = False


def square(x):
    return x * x


def late(path):
    import time
    time.sleep(0.3)  # still running when the script's main code ends: the interpreter waits for it
    open(path, "w").write("joined")


if __name__ == "__main__":
    out = sys.argv[1]
    facts = {
        "name": __name__, "file": __file__, "argv": sys.argv, "orig_argv": sys.orig_argv[1:],
        "path": sys.path, "cwd": os.getcwd(), "first_modules": FIRST, "shared": SHARED,
        "helper": helper.VALUE, "lr_env": os.environ.get("lr"), "stdin": sys.stdin.read(),
        "logging_handlers": len(logging.getLogger().handlers), "warning_filters": repr(warnings.filters),
        "process": multiprocessing.current_process().name, "parent": repr(multiprocessing.parent_process()),
        "children": len(multiprocessing.active_children()),
        "main_spec": repr(sys.modules["__main__"].__spec__),
    }
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        facts["spawn"] = pool.map(square, [1, 2, 3])
    open(out, "w").write(json.dumps(facts, indent=1, sort_keys=True))
    atexit.register(lambda: open(out + ".atexit", "w").write("ran"))
    threading.Thread(target=late, args=(out + ".thread",)).start()
    for i in range(2000):  # never flushed by hand: all of it must reach the log
        print(f"line {i}")
    print("warm" if "pivot.runtime.warm" in sys.modules else "cold", file=sys.stderr)
'''

PIPELINE = '''\
from pivot import stage

import shared  # the worker imports a project module: the script must not see it

for mode in ("warm", "cold"):
    stage(name=f"probe@{mode}", cmd=f"python ../src/probe.py ../out/{mode}.json --lr ${{lr}}", params={"lr": 0.5},
          deps=["src/probe.py"], outs=[f"out/{mode}.json", f"out/{mode}.json.atexit", f"out/{mode}.json.thread"],
          wdir="work", warm=mode == "warm")
    stage(name=f"module@{mode}", cmd=f"python -m tools.emit out/m-{mode}.json", outs=[f"out/m-{mode}.json"],
          warm=mode == "warm")
    for code in ("0", "3", "a message"):
        stage(name=f"exit-{code.replace(' ', '_')}@{mode}", cmd=["python", "src/leave.py", code],
              outs=[f"out/exit-{code.replace(' ', '_')}-{mode}.txt"], warm=mode == "warm")
'''

EMIT = '''\
import json, sys
from tools import common
json.dump({"argv0": sys.argv[0], "args": sys.argv[1:], "path0": sys.path[0], "name": __name__,
           "spec": __spec__.name, "word": common.WORD, "warm": "pivot.runtime.warm" in sys.modules},
          open(sys.argv[1], "w"))
'''

LEAVE = '''\
import sys
code = sys.argv[1]
mode = "warm" if "pivot.runtime.warm" in sys.modules else "cold"
open(f"out/exit-{code.replace(' ', '_')}-{mode}.txt", "w").write(code)
print("leaving", code)
sys.exit(int(code) if code.isdigit() else code)
'''

FILES = {
    "pipeline.py": PIPELINE, "shared.py": "X = 1\n", "src/probe.py": PROBE, "src/helper.py": "VALUE = 1\n",
    "src/leave.py": LEAVE, "tools/__init__.py": "", "tools/emit.py": EMIT, "tools/common.py": 'WORD = "one"\n',
    "work/.keep": "", "out/.keep": "",
}


def this_python_first() -> dict[str, str]:
    """`python` in a command is this interpreter (what `pivot` runs on)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def repro(root: Path, *args: str, env: dict[str, str] | None = None) -> list[dict[str, object]]:
    import subprocess

    result = subprocess.run([*pivot_cmd(), "repro", "--json", *args], cwd=root, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL, start_new_session=True,
                            env=env or this_python_first())
    assert result.returncode in (0, 1), describe(result)
    return parse_events(result.stdout)


def lines(events: list[dict[str, object]], stage: str, stream: str) -> list[object]:
    return [e["line"] for e in events if e["event"] == "log" and e["stage"] == stage and e["stream"] == stream]


def test_a_warm_script_sees_what_a_fresh_interpreter_gives_it(make_project: Callable[..., Path]) -> None:
    root = make_project(FILES)
    events = repro(root, "probe@warm", "probe@cold")
    done = finished(events)
    assert {s: e["status"] for s, e in done.items()} == {"probe@warm": "ran", "probe@cold": "ran"}, events
    assert lines(events, "probe@warm", "stderr") == ["warm"] and lines(events, "probe@cold", "stderr") == ["cold"]
    log = (root / ".pivot" / "logs" / "stages" / "probe@warm.log").read_text()
    assert [line for line in log.splitlines() if line.startswith("line ")] == [f"line {i}" for i in range(2000)]
    warm = json.loads((root / "out" / "warm.json").read_text())
    cold = json.loads((root / "out" / "cold.json").read_text())
    assert warm["argv"] == ["../src/probe.py", "../out/warm.json", "--lr", "0.5"], warm
    assert warm["cwd"] == str((root / "work").resolve()) and warm["path"][0] == str((root / "src").resolve())
    assert warm["first_modules"] == ["__main__"] and warm["shared"] is False, warm
    for facts in (warm, cold):  # the file names differ by mode only
        facts["argv"][1] = facts["argv"][1].replace("cold", "warm")
        facts["orig_argv"] = [a.replace("cold", "warm") for a in facts["orig_argv"]]
    assert warm == cold
    for mode in ("warm", "cold"):
        assert (root / "out" / f"{mode}.json.atexit").read_text() == "ran"
        assert (root / "out" / f"{mode}.json.thread").read_text() == "joined"


def test_a_warm_module_and_exit_codes_are_as_a_fresh_interpreters(make_project: Callable[..., Path]) -> None:
    root = make_project(FILES)
    events = repro(root, "--keep-going", "module@warm", "module@cold", "exit-0@warm", "exit-0@cold", "exit-3@warm",
                   "exit-3@cold", "exit-a_message@warm", "exit-a_message@cold")
    done = finished(events)
    warm = json.loads((root / "out" / "m-warm.json").read_text())
    cold = json.loads((root / "out" / "m-cold.json").read_text())
    assert warm.pop("warm") is True and cold.pop("warm") is False
    assert warm.pop("args") == ["out/m-warm.json"] and cold.pop("args") == ["out/m-cold.json"]
    assert warm == cold and warm["argv0"] == str((root / "tools" / "emit.py").resolve()), (warm, cold)
    for mode in ("warm", "cold"):
        assert done[f"exit-0@{mode}"]["status"] == "ran"
        assert lines(events, f"exit-0@{mode}", "stdout") == ["leaving 0"]
        assert done[f"exit-3@{mode}"]["status"] == "failed"
        assert "exited with code 3" in str(done[f"exit-3@{mode}"]["reason"]), done[f"exit-3@{mode}"]
        failed = done[f"exit-a_message@{mode}"]
        assert failed["status"] == "failed" and "exited with code 1" in str(failed["reason"]), failed
        assert lines(events, f"exit-a_message@{mode}", "stderr") == ["a message"]
        assert not (root / "out" / f"exit-3-{mode}.txt").exists()  # a failed run's outputs go


def test_a_warm_script_reads_its_helpers_as_they_are_now_and_can_be_turned_off(
    make_project: Callable[..., Path],
) -> None:
    root = make_project(FILES)
    repro(root, "probe@warm")
    assert json.loads((root / "out" / "warm.json").read_text())["helper"] == 1
    (root / "src" / "helper.py").write_text("VALUE = 2\n")
    events = repro(root, "probe@warm")
    assert finished(events)["probe@warm"]["status"] == "ran"
    assert json.loads((root / "out" / "warm.json").read_text())["helper"] == 2
    # Everywhere off: a fresh interpreter.
    (root / "src" / "helper.py").write_text("VALUE = 3\n")
    env = this_python_first()
    env["PIVOT_WARM"] = "0"
    events = repro(root, "probe@warm", env=env)
    assert lines(events, "probe@warm", "stderr") == ["cold"], events


DVC = '''\
stages:
  warm:
    cmd: python src/which.py warm.txt
    outs: [warm.txt]
  cold:
    cmd: python src/which.py cold.txt
    outs: [cold.txt]
    meta: {pivot: {warm: false}, owner: someone}
  shell:
    cmd: python src/which.py shell.txt && echo done
    outs: [shell.txt]
'''

WHICH = '''\
import sys
open(sys.argv[1], "w").write("warm" if "pivot.runtime.warm" in sys.modules else "cold")
'''


def test_dvc_yaml_meta_turns_warm_off_and_a_shell_line_runs_cold(make_project: Callable[..., Path]) -> None:
    root = make_project({"dvc.yaml": DVC, "src/which.py": WHICH})
    events = repro(root)
    assert {s: e["status"] for s, e in finished(events).items()} == {"warm": "ran", "cold": "ran", "shell": "ran"}
    assert [(root / f"{n}.txt").read_text() for n in ("warm", "cold", "shell")] == ["warm", "cold", "cold"]
    # The project's own setting turns it off for every stage.
    (root / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.pivot]\nwarm = false\n')
    events = repro(root, "-f", "warm")
    assert finished(events)["warm"]["status"] == "ran"
    assert (root / "warm.txt").read_text() == "cold"


HOLD = '''\
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open("held.pid", "w").write(f"{os.getpid()} {child.pid}")
while True:
    time.sleep(0.05)
'''


def test_a_cancelled_warm_script_stops_with_everything_it_started(
    make_project: Callable[..., Path], up: Callable[..., LiveRun],
) -> None:
    root = make_project({
        "pipeline.py": 'from pivot import stage\n\nstage(name="hold", cmd="python src/hold.py", deps=["data/in.txt"], '
                       'outs=["never.txt"])\n',
        "src/hold.py": HOLD, "data/in.txt": "x\n", ".pivotignore": "held.pid\n",
    })
    live = up(root, env=this_python_first())
    wait_for(lambda: (root / "held.pid").exists() and len((root / "held.pid").read_text().split()) == 2, WAIT_S,
             "the script to start")
    script, child = map(int, (root / "held.pid").read_text().split())
    assert alive(script) and alive(child)
    live.stop()  # cancels the stage: the script's whole session goes with it
    assert not alive(script) and not alive(child), "a cancelled warm script (or its child) outlived `pivot up`"


# Stands for an installed package (pandas, torch): a folder named site-packages outside
# the project, on PYTHONPATH; it logs the pid of every process that imports it.
FAKELIB = '''\
import os

with open(os.environ["FAKELIB_LOG"], "a") as f:
    f.write(f"{os.getpid()}\\n")
'''

USES_LIB = '''\
import sys
done = "fakelib" in sys.modules  # before its own import
import fakelib
open(sys.argv[1], "w").write(f"imported before: {done}")
'''


def test_a_warm_script_finds_its_third_party_imports_done(make_project: Callable[..., Path]) -> None:
    root = make_project({
        "dvc.yaml": "stages:\n  lib:\n    cmd: python src/uses_lib.py lib.txt\n    outs: [lib.txt]\n",
        "src/uses_lib.py": USES_LIB,
    })
    site = root.parent / "site-packages"
    (site / "fakelib").mkdir(parents=True)
    (site / "fakelib" / "__init__.py").write_text(FAKELIB)
    log = root.parent / "fakelib.log"
    env = {**this_python_first(), "PYTHONPATH": str(site), "FAKELIB_LOG": str(log)}
    events = repro(root, env=env)
    assert finished(events)["lib"]["status"] == "ran", events
    assert (root / "lib.txt").read_text() == "imported before: True"
    assert len(log.read_text().split()) == 1  # the preloading server only: not the script again


TRAIN = '''\
import sys
VERSION = 1
open(sys.argv[1], "w").write(f"v{VERSION} {'warm' if 'pivot.runtime.warm' in sys.modules else 'cold'}")
'''


def test_pivot_up_runs_an_edited_script_warm_on_its_new_code(
    make_project: Callable[..., Path], up: Callable[..., LiveRun],
) -> None:
    root = make_project({
        "dvc.yaml": "stages:\n  train:\n    cmd: python src/train.py model.txt\n    deps: [src/train.py]\n"
                    "    outs: [model.txt]\n",
        "src/train.py": TRAIN,
    })
    live = up(root, env=this_python_first())
    live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "the first wave")
    assert (root / "model.txt").read_text() == "v1 warm"
    for version in (2, 3):
        mark = live.mark()
        (root / "src" / "train.py").write_text(TRAIN.replace("VERSION = 1", f"VERSION = {version}"))
        began = live.wait_event(lambda e: e["event"] == "wave_started", WAIT_S, "a wave for the edit", mark)
        assert began["trigger"] == "code" and began["paths"] == ["src/train.py"], began
        done = live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "its end", mark)
        assert done["ran"] == ["train"], done
        assert (root / "model.txt").read_text() == f"v{version} warm"
    live.stop()
