"""Every user-facing error is one line on standard error starting with `error:`, with
exit code 2 for a usage or pipeline mistake (docs/cli.md), never a traceback nor
click's usage block. Walks the error paths of every command (issue 12)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from procs import describe, run_pivot

PIPELINE = '''\
from pathlib import Path

from pivot import stage


@stage(outs=["a.txt"])
def a() -> None:
    Path("a.txt").write_text("a")
'''

COMMANDS = ["init", "list", "repro", "status", "dag", "params show", "params diff", "metrics show",
            "metrics diff", "checkout", "gc", "up", "down", "attach", "ps", "logs", "run", "broker",
            "workers", "watcher", "ping", "keys init", "import-dvc"]

IN_PROJECT = [
    (["nosuch"], 2),
    (["repro", "nosuch_stage"], 2),
    (["status", "nosuch_stage"], 2),
    (["dag", "nosuch_stage"], 2),
    (["params", "show", "nosuch_stage"], 2),
    (["metrics", "show", "nosuch_stage"], 2),
    (["run", "nosuch_stage", "--foreground"], 2),
    (["logs", "nosuch_stage"], 2),
    (["logs", "a", "--role", "pool"], 2),
    (["run"], 2),
    (["repro", "-j", "0"], 2),
    (["repro", "-s"], 2),
    (["dag", "--format", "bogus"], 2),
    (["repro", "--debounce", "5"], 2),
    (["checkout", "--hash", "nothex", "a.txt"], 2),
    (["attach"], 2),
    (["ps"], 2),
    (["workers"], 2),
]


@pytest.mark.parametrize("args,code", IN_PROJECT, ids=[" ".join(a) for a, _ in IN_PROJECT])
def test_errors_in_a_project_are_one_line(
    make_project: Callable[..., Path], args: list[str], code: int,
) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    result = run_pivot(root, *args, timeout=30)
    assert result.returncode == code, describe(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), describe(result)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_says_a_bad_option_in_one_line(
    make_project: Callable[..., Path], command: str,
) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    result = run_pivot(root, *command.split(), "--no-such-option", timeout=30)
    assert result.returncode == 2, describe(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: No such option"), describe(result)
    assert f"pivot {command} --help" in lines[0], describe(result)


@pytest.mark.parametrize("command", ["list", "repro", "status", "dag", "params show", "metrics show", "checkout", "up"])
def test_outside_a_project_every_command_says_so_in_one_line(tmp_path: Path, command: str) -> None:
    result = run_pivot(tmp_path, *command.split(), timeout=30)
    assert result.returncode == 2, describe(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no pipeline.py (or dvc.yaml) found"), describe(result)


CYCLE = '''\
from pivot import stage


@stage(deps=["b.txt"], outs=["a.txt"])
def a() -> None:
    pass


@stage(deps=["a.txt"], outs=["b.txt"])
def b() -> None:
    pass
'''

BROKEN = {
    "cycle": ({"pipeline.py": CYCLE}, "dependency cycle"),
    "two producers": ({"pipeline.py": PIPELINE + '\n\n@stage(outs=["a.txt"])\ndef b() -> None:\n    pass\n'}, "a.txt"),
    "yaml": ({"pipeline.py": PIPELINE, "params.yaml": "a: {x: [1\n"}, "params.yaml: not valid YAML: line 2"),
    "unknown param": ({"pipeline.py": PIPELINE, "params.yaml": "a:\n  lr: 0.1\n"}, "lr"),
}


@pytest.mark.parametrize("command", ["repro", "repro -n", "list", "status", "dag"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_pipeline_is_one_error_line_for_every_command(
    make_project: Callable[..., Path], case: str, command: str,
) -> None:
    files, said = BROKEN[case]
    root = make_project(files)
    result = run_pivot(root, *command.split(), timeout=30)
    assert result.returncode == 2, describe(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], describe(result)
