"""What the benchmark scripts share (they run as `python bench/NAME.py`, so this folder is
on sys.path)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def pivot_env() -> dict[str, str]:
    """The environment for measured runs: bytecode caching on, as on a user's machine.

    PYTHONDONTWRITEBYTECODE=1 (set in some containers, including the one these numbers
    were first taken in) makes every process recompile every module it imports, which
    adds ~100 ms to each `pivot` command and says nothing about Pivot."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def pivot_cmd() -> list[str]:
    """The `pivot` script beside this interpreter: a version manager's shim on PATH (pyenv's
    is a shell script) would add ~100 ms to every measurement."""
    exe = Path(sys.executable).parent / "pivot"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("pivot")
    return [found] if found else [sys.executable, "-c", "from pivot.cli.main import main; main()"]
