"""What the benchmark scripts share (they run as `python bench/NAME.py`, so this folder is
on sys.path)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def pivot_env() -> dict[str, str]:
    """The environment for measured runs: bytecode caching on, as on a user's machine.

    PYTHONDONTWRITEBYTECODE=1 (set in some containers, including the one these numbers
    were first taken in) makes every process recompile every module it imports, which
    adds ~100 ms to each `pivot` command and says nothing about Pivot."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def two_trees_parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments of a script that runs two Pivot trees on one project (bench/ab.py)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("project", type=Path, help="made by bench/gen_pipeline.py")
    parser.add_argument("--a", type=Path, required=True, help="the first tree (a checkout's root)")
    parser.add_argument("--b", type=Path, required=True, help="the second tree")
    parser.add_argument("--rounds", type=int, default=6)
    return parser


def trees_parser(doc: str | None, rounds: int) -> argparse.ArgumentParser:
    """The arguments of a script that alternates two Pivot trees on a project it makes."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, required=True, help="the first tree (a checkout's root)")
    parser.add_argument("--b", type=Path, required=True, help="the second tree")
    parser.add_argument("--rounds", type=int, default=rounds)
    return parser


def compile_trees(*trees: Path) -> None:
    """Each tree's bytecode, written now: a container may set PYTHONDONTWRITEBYTECODE
    (pivot_env), and a tree whose files changed would otherwise compile in every process."""
    for tree in trees:
        subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(tree / d) for d in ("pivot", "broker", "workers"))],
                       check=True, capture_output=True)


def pivot_cmd() -> list[str]:
    """The `pivot` script beside this interpreter: a version manager's shim on PATH (pyenv's
    is a shell script) would add ~100 ms to every measurement."""
    exe = Path(sys.executable).parent / "pivot"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("pivot")
    return [found] if found else [sys.executable, "-c", "from pivot.cli.entry import main; main()"]


def chain_lines(n: int) -> list[str]:
    """pipeline.py lines for a chain of N trivial stages: s0 reads data/in.txt, each
    s{i} reads s{i-1}'s output (out/s{i}.txt)."""
    lines = ["from pivot import stage", ""]
    for i in range(n):
        dep = f'"out/s{i - 1}.txt"' if i else '"data/in.txt"'
        lines += [
            f"@stage(deps=[{dep}], outs=[\"out/s{i}.txt\"])",
            f"def s{i}() -> None:",
            f"    open(\"out/s{i}.txt\", \"w\").write(open({dep}).read() + \"{i}\")",
            "",
        ]
    return lines


class Events:
    """A display's JSON event lines, read in a thread; `wait` for one matching `pred`."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.items: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self.cond:
                self.items.append(json.loads(line))
                self.cond.notify_all()

    def wait(self, start: int, pred: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> dict[str, Any]:
        """The first event from index `start` on that matches; SystemExit on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.items[start:]:
                    if pred(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"timed out; last events: {self.items[-5:]}")
                self.cond.wait(left)
