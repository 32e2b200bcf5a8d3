"""What the benchmark scripts share (they run as `python bench/NAME.py`, so this folder is
on sys.path)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def pivot_cmd() -> list[str]:
    """The `pivot` script beside this interpreter: a version manager's shim on PATH (pyenv's
    is a shell script) would add ~100 ms to every measurement."""
    exe = Path(sys.executable).parent / "pivot"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("pivot")
    return [found] if found else [sys.executable, "-c", "from pivot.cli.main import main; main()"]
