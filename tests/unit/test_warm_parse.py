"""Which commands run warm (pivot/runtime/warm.py): a Python script or module run by
this very interpreter, with flags it can honour and nothing a shell must read."""

from __future__ import annotations

import os
import sys

import pytest

from pivot.runtime.warm import ScriptRun, script_run

HERE = os.path.dirname(sys.executable)
ENV = {"PATH": os.pathsep.join([HERE, "/usr/bin", "/bin"])}


@pytest.mark.parametrize(("line", "expected"), [
    ("python src/train.py data 0.1", ScriptRun(False, "src/train.py", ("data", "0.1"), "python")),
    ("python 'my dir/x.py' 'a b'", ScriptRun(False, "my dir/x.py", ("a b",), "python")),
    ("python -u -B -W ignore x.py", ScriptRun(False, "x.py", (), "python", ("-u", "-B"), ("ignore",))),
    ("python -m pkg.train --lr 1", ScriptRun(True, "pkg.train", ("--lr", "1"), "python")),
    ("python -mpkg", ScriptRun(True, "pkg", (), "python")),
    (["python", "x.py", "a b", "$HOME"], ScriptRun(False, "x.py", ("a b", "$HOME"), "python")),
    (f"{sys.executable} x.py", ScriptRun(False, "x.py", (), sys.executable)),
])
def test_a_script_this_interpreter_runs_is_warm(line: str | list[str], expected: ScriptRun) -> None:
    assert script_run(line, ENV) == expected


@pytest.mark.parametrize("line", [
    "python x.py | tee log",  # a shell reads it
    "python x.py && echo done",
    "python x.py > out.txt",
    "python x.py $HOME",
    "python x.py *.csv",
    "FOO=1 python x.py",
    "cd sub; python x.py",
    "python -c 'print(1)'",
    "python -O x.py",  # a flag only a new interpreter honours
    "python -X dev x.py",
    "python",
    "python -m",
    "python2 x.py",
    "/somewhere/else/bin/python x.py",  # another interpreter
    "Rscript x.R",
    "python 'unclosed.py",
])
def test_anything_else_runs_cold(line: str) -> None:
    assert script_run(line, ENV) is None


def test_python_not_on_the_commands_path_is_not_this_one() -> None:
    assert script_run("python x.py", {"PATH": "/nonexistent"}) is None
