"""Command stages (issue 13, point 1): `stage(name=..., cmd=...)` in pipeline.py runs a
shell command (or an argument list) with its params as `${name}` and environment
variables, in the project root or its `wdir`, its output streamed, its exit code
deciding; and every process it starts stops with it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from procs import LiveRun, describe, finished, parse_events, run_pivot, wait_for

pytestmark = pytest.mark.timeout(60)

WAIT_S = 20.0

PIPELINE = '''\
from pivot import stage

stage(name="count", cmd="python tools/count.py ${n} out/count.txt && echo \\"from the shell: n=$n label=$label\\"",
      params={"n": 3, "label": "first"}, deps=["tools/count.py", "data/in.txt"], outs=["out/count.txt"])
stage(name="inside", cmd=["python", "../tools/count.py", "${n}", "inside.txt"], params={"n": 2},
      deps=["tools/count.py"], outs=["sub/inside.txt"], wdir="sub")
stage(name="after", cmd="cat out/count.txt > out/after.txt", deps=["out/count.txt"], outs=["out/after.txt"])
'''

COUNT = '''\
import sys

n, out = int(sys.argv[1]), sys.argv[2]
with open(out, "w") as f:
    for i in range(n):
        print(f"line {i}")
        f.write(f"{i}\\n")
'''

FILES = {"pipeline.py": PIPELINE, "tools/count.py": COUNT, "data/in.txt": "x\n", "sub/.keep": "", "out/.keep": ""}


def logs_of(events: list[dict[str, object]], stage: str) -> list[object]:
    return [e["line"] for e in events if e["event"] == "log" and e["stage"] == stage and e["stream"] != "pivot"]


def test_a_command_stage_runs_with_its_params_in_its_folder_and_streams_what_it_prints(
    make_project: Callable[..., Path],
) -> None:
    root = make_project(FILES)
    result = run_pivot(root, "repro", "--json", timeout=40)
    assert result.returncode == 0, describe(result)
    events = parse_events(result.stdout)
    assert {s: e["status"] for s, e in finished(events).items()} == {"count": "ran", "inside": "ran", "after": "ran"}
    assert logs_of(events, "count") == ["line 0", "line 1", "line 2", "from the shell: n=3 label=first"]
    assert (root / "out" / "count.txt").read_text() == "0\n1\n2\n"
    assert (root / "sub" / "inside.txt").read_text() == "0\n1\n"  # in its wdir, no shell
    assert (root / "out" / "after.txt").read_text() == "0\n1\n2\n"

    # A param in params.yaml: that stage and what reads its output run again, no other.
    (root / "params.yaml").write_text("count:\n  n: 4\n")
    again = run_pivot(root, "repro", "--json", timeout=40)
    assert again.returncode == 0, describe(again)
    done = finished(parse_events(again.stdout))
    assert {s: e["status"] for s, e in done.items()} == {"count": "ran", "inside": "skipped", "after": "ran"}
    assert done["count"]["reason_code"] == "params_changed", done["count"]
    assert (root / "out" / "after.txt").read_text() == "0\n1\n2\n3\n"

    # Its command is its code: changing it runs the stage again.
    (root / "pipeline.py").write_text(PIPELINE.replace("label=$label", "label=[$label]"))
    third = run_pivot(root, "repro", "--json", timeout=40)
    done = finished(parse_events(third.stdout))
    assert done["count"]["status"] == "ran" and done["count"]["reason_code"] == "code_changed", done["count"]
    assert done["inside"]["status"] == "skipped"


def test_a_failing_command_fails_its_stage_in_one_line_and_leaves_no_partial_output(
    make_project: Callable[..., Path],
) -> None:
    root = make_project({
        "pipeline.py": 'from pivot import stage\n\nstage(name="bad", cmd="echo half > half.txt; echo oops >&2; exit 3", '
                       'outs=["half.txt"])\n'
                       'stage(name="gone", cmd=["no-such-program-here"], outs=["x.txt"])\n',
    })
    result = run_pivot(root, "repro", "--json", "--keep-going", timeout=40)
    assert result.returncode == 1, describe(result)
    events = parse_events(result.stdout)
    done = finished(events)
    assert done["bad"]["status"] == "failed", done["bad"]
    assert done["bad"]["reason"] == "command exited with code 3: echo half > half.txt; echo oops >&2; exit 3"
    assert done["bad"]["error"] is None  # no traceback: the command's own words are its log
    assert logs_of(events, "bad") == ["oops"]
    assert not (root / "half.txt").exists()  # what a failed run wrote is partial
    assert done["gone"]["status"] == "failed" and "could not start the command no-such-program-here" in done["gone"]["reason"]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("source", "says"), [
    ('stage(name="s", cmd="echo ${nope}", params={"n": 1}, outs=["o"])', "${nope} in its cmd names no param"),
    ('@stage(name="s", cmd="true", outs=["o"])\ndef s() -> None: ...', "it takes no function"),
    ('stage(cmd="true", outs=["o"])', "a command stage needs a valid name="),
    ('stage(name="s", cmd="", outs=["o"])', "cmd is empty"),
    ('stage(name="s", cmd="true", outs=["o"], wdir="../elsewhere")', "must be a folder inside the project"),
])
def test_a_wrong_command_stage_is_a_pipeline_error_that_names_it(
    make_project: Callable[..., Path], source: str, says: str,
) -> None:
    root = make_project({"pipeline.py": f"from pivot import stage\n\n{source}\n"})
    result = run_pivot(root, "repro")
    assert result.returncode == 2, describe(result)
    assert says in result.stderr and "Traceback" not in result.stderr, describe(result)


GROUP = '''\
from pivot import stage

# What the command starts in the background must not outlive it.
stage(name="leaves", cmd="sleep 60 & echo $! > bg.pid; echo ok > out.txt", outs=["out.txt"])
# Runs until it is stopped, with a child of its own.
stage(name="holds", cmd="sleep 60 & echo $! > held.pid; echo started > started.txt; wait", deps=["data/in.txt"],
      outs=["held.txt"])
'''


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_every_process_a_command_starts_stops_with_it(
    make_project: Callable[..., Path], up: Callable[..., LiveRun],
) -> None:
    root = make_project({"pipeline.py": GROUP, "data/in.txt": "x\n", ".pivotignore": "*.pid\nstarted.txt\n"})
    live = up(root)
    live.wait_event(lambda e: e["event"] == "stage_finished" and e["stage"] == "leaves", WAIT_S, "leaves to finish")
    left = int((root / "bg.pid").read_text())
    wait_for(lambda: gone(left), WAIT_S, f"the background process {left} the command left to be killed")

    wait_for(lambda: (root / "started.txt").exists() and (root / "held.pid").exists(), WAIT_S, "holds to start")
    held = int((root / "held.pid").read_text())
    assert not gone(held)
    live.stop()  # cancels what runs: the command's whole group goes, not only the worker's own
    assert gone(held), f"process {held} of a cancelled command outlived `pivot up`"
    assert not (root / "held.txt").exists()


SCRIPTED = '''\
from pivot import stage

stage(name="train", cmd="python src/train.py ${lr} out/train.txt", params={"lr": 0.1},
      deps=["src/train.py", "data/in.txt"], outs=["out/train.txt"])
stage(name="emit", cmd="python -m tools.emit out/emit.txt", deps=["data/in.txt"], outs=["out/emit.txt"])
stage(name="plain", cmd="cat data/in.txt > out/plain.txt", deps=["data/in.txt", "notes.txt"], outs=["out/plain.txt"])
'''

TRAIN = '''\
"""Train."""
import sys

import helpers
from pkg import util


def main() -> None:
    lr, out = float(sys.argv[1]), sys.argv[2]
    open(out, "w").write(f"{helpers.scale(lr)} {util.NAME}\\n")


if __name__ == "__main__":
    main()
'''

SCRIPT_FILES = {
    "pipeline.py": SCRIPTED, "src/train.py": TRAIN,
    "src/helpers.py": "def scale(x):\n    return x * 10\n",
    "src/pkg/__init__.py": "", "src/pkg/util.py": 'NAME = "util-1"\n',
    "tools/__init__.py": "", "tools/emit.py": "import sys\n\nfrom tools import common\n\nopen(sys.argv[1], 'w').write(common.WORD)\n",
    "tools/common.py": 'WORD = "one"\n', "data/in.txt": "x\n", "notes.txt": "n\n", "out/.keep": "",
}


def ran(root: Path) -> dict[str, str]:
    result = run_pivot(root, "repro", "--json", timeout=40)
    assert result.returncode == 0, describe(result)
    return {s: e["status"] for s, e in finished(parse_events(result.stdout)).items()}


def explain(root: Path, stage: str) -> str:
    result = run_pivot(root, "status", "--explain", stage)
    return result.stdout


def test_a_scripts_code_is_its_ast_and_the_project_modules_it_imports(make_project: Callable[..., Path]) -> None:
    root = make_project(SCRIPT_FILES)
    assert ran(root) == {"train": "ran", "emit": "ran", "plain": "ran"}
    assert (root / "out" / "train.txt").read_text() == "1.0 util-1\n"

    # Comments, a docstring and formatting: nothing runs (DVC would run train).
    (root / "src" / "train.py").write_text(
        TRAIN.replace('"""Train."""', '"""Train a model: another docstring."""  # and a comment')
        .replace("lr, out = float(sys.argv[1]), sys.argv[2]", "lr, out = (\n        float(sys.argv[1]),\n        sys.argv[2],\n    )"))
    assert ran(root) == {"train": "skipped", "emit": "skipped", "plain": "skipped"}

    # A module it imports that nobody declared: train runs, and status names the file.
    (root / "src" / "pkg" / "util.py").write_text('NAME = "util-2"\n')
    assert "code changed: src/pkg/util.py" in explain(root, "train")
    assert ran(root) == {"train": "ran", "emit": "skipped", "plain": "skipped"}
    assert (root / "out" / "train.txt").read_text() == "1.0 util-2\n"

    # A change inside a function: status names the function, not only its file.
    (root / "src" / "train.py").write_text(TRAIN.replace("helpers.scale(lr)", "helpers.scale(lr * 2)"))
    said = explain(root, "train")
    assert "code changed: src/train.py:main" in said and "src/train.py," not in said, said
    assert ran(root) == {"train": "ran", "emit": "skipped", "plain": "skipped"}
    assert (root / "out" / "train.txt").read_text() == "2.0 util-2\n"

    # `python -m`: the module and what it imports.
    (root / "tools" / "common.py").write_text('WORD = "two"\n')
    assert ran(root) == {"train": "skipped", "emit": "ran", "plain": "skipped"}

    # Any other command keeps its declared deps, by their bytes.
    (root / "notes.txt").write_text("n  # a comment is a change here\n")
    assert ran(root) == {"train": "skipped", "emit": "skipped", "plain": "ran"}


def test_pivot_up_runs_a_script_stage_again_when_a_helper_it_imports_changes(
    make_project: Callable[..., Path], up: Callable[..., LiveRun],
) -> None:
    root = make_project(SCRIPT_FILES)
    live = up(root)
    live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "the first wave")
    mark = live.mark()
    (root / "src" / "helpers.py").write_text("def scale(x):\n    return x * 100\n")
    began = live.wait_event(lambda e: e["event"] == "wave_started", WAIT_S, "a wave for the helper edit", mark)
    assert began["trigger"] == "code" and began["paths"] == ["src/helpers.py"], began
    done = live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "its end", mark)
    assert done["ran"] == ["train"], done
    assert (root / "out" / "train.txt").read_text() == "10.0 util-1\n"


def test_a_param_named_as_an_environment_variable_does_not_replace_it(make_project: Callable[..., Path]) -> None:
    """A params.yaml key `PATH` made the command's shell find nothing (found by a new
    user's hunt): the environment's own variables stay; others come from the params."""
    root = make_project({
        "pipeline.py": 'from pivot import stage\n\nstage(name="e", cmd="echo $PATH:$mine > e.txt && ls > /dev/null", '
                       'params={"PATH": "bin", "mine": "y"}, outs=["e.txt"])\n',
    })
    result = run_pivot(root, "repro")
    assert result.returncode == 0, describe(result)
    assert (root / "e.txt").read_text() == f"{os.environ['PATH']}:y\n"
