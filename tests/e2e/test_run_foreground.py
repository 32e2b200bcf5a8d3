"""`pivot run STAGE --foreground`: the stage gets this process's stdin, outputs are committed."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from procs import describe, pivot_cmd, run_pivot

pytestmark = pytest.mark.timeout(60)

PIPELINE = '''\
from pivot import stage


@stage(outs=["answer.txt"])
def ask() -> None:
    name = input("name? ")
    open("answer.txt", "w").write(f"hello {name}\\n")


@stage(deps=["answer.txt"], outs=["loud.txt"])
def loud() -> None:
    open("loud.txt", "w").write(open("answer.txt").read().upper())
'''


def test_a_foreground_stage_reads_stdin_and_its_outputs_are_committed(make_project: Callable[..., Path]) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    result = subprocess.run(
        [*pivot_cmd(), "run", "ask", "--foreground"], cwd=root, input="ada\n",
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, describe(result)
    assert (root / "answer.txt").read_text() == "hello ada\n"
    assert "name? " in result.stdout  # the prompt went to this terminal, not a capture
    status = json.loads(run_pivot(root, "status", "--json").stdout)["stages"]
    assert status["ask"]["stale"] is False, status  # lock and hashes recorded like any run
    assert [r["code"] for r in status["loud"]["reasons"]] == ["never_ran"]

    again = run_pivot(root, "run", "ask", "--foreground")
    assert again.returncode == 0 and "up to date" in again.stdout, describe(again)


def test_a_foreground_stage_missing_a_dependency_is_a_usage_error(make_project: Callable[..., Path]) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    result = run_pivot(root, "run", "loud", "--foreground")
    assert result.returncode == 2, describe(result)
    assert "dependency missing: answer.txt" in result.stderr and "Traceback" not in result.stderr
