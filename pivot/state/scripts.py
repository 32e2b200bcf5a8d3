"""Code fingerprints of the Python scripts that command stages run (issue 13, point 3).

For a command whose (first) program is Python running a project-local script
(`python src/train.py ARGS`) or module (`python -m pkg.train`), the script is
fingerprinted like a stage function: its normalized AST (comments, docstrings and
formatting do not count) and that of every project-local module it imports, found as
Python would (from the script's folder, or the working directory for `-m`), however
deep. Those files are then the stage's code, not dependencies compared by their bytes: a
comment edit runs nothing, and an edit to a helper module the script imports runs the
stage even when no one declared it. Any other command keeps its declared deps.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
from pathlib import Path

import xxhash

from pivot.state.codeindex import digest_text, parse_source

__all__ = ["ScriptCode", "script_code"]

_PYTHON = re.compile(r"python(\d+(\.\d+)*)?")
_OPERATORS = {"&&", "||", ";", "|", "&"}
_SKIP_DIRS = {".venv", "venv", "site-packages", "node_modules", ".git", ".pivot", ".dvc", "__pycache__"}


class ScriptCode:
    """The pieces of a script's code, each with its digest: every file it is made of
    (project-relative path: its module-level statements and the names of its top-level
    defs) and each top-level function or class of those files (`path:name`), so that an
    explanation names what changed (`code changed: src/train.py:main`); the files
    themselves; and the top-level modules they import from outside the project (a warm
    worker's preload: pivot/runtime/preload.py); and the digest of each file's bytes as
    read (a worker runs the stage only if the files are still those:
    pivot/runtime/freshcode.py `differing`)."""

    def __init__(self, parts: dict[str, str], files: tuple[str, ...] = (),
                 externals: frozenset[str] = frozenset(), digests: dict[str, str] | None = None) -> None:
        self.parts = parts
        self.files = files or tuple(parts)
        self.externals = externals
        self.digests = digests or {}


def script_code(cmd: str | tuple[str, ...], cwd: Path, root: Path) -> ScriptCode | None:
    """The code of the project-local script `cmd` runs first, or None (another program,
    a script outside the project, one that does not parse)."""
    target = _target(cmd)
    if target is None:
        return None
    kind, name, pythonpath = target
    first: list[Path] = []  # what Python runs before the script: `-m`'s packages
    # `PYTHONPATH=. python src/train.py`: searched after the script's own folder, as Python does.
    extra = [(cwd / folder).resolve() for folder in pythonpath.split(os.pathsep) if folder]
    script: Path | None
    if kind == "file":
        script = (cwd / name).resolve()
        search = [script.parent, *extra]
    else:
        search = [cwd.resolve(), *extra]
        script = _find_module(name, search)
        first = [path for path in _module_files(name, search) if path != script]
        if script is not None and script.name == "__init__.py":  # `-m pkg` runs pkg/__main__.py
            first.append(script)
            script = script.parent / "__main__.py"
    if script is None or script.suffix != ".py" or not script.is_file() or not _inside(script, root):
        return None
    parts: dict[str, str] = {}
    files: list[str] = []
    digests: dict[str, str] = {}
    externals: set[str] = set()
    todo = [script, *(path for path in first if _inside(path, root))]
    while todo:
        path = todo.pop()
        rel = path.relative_to(root.resolve()).as_posix()
        if rel in files:
            continue
        files.append(rel)
        try:
            data = path.read_bytes()
        except OSError:
            parts[rel] = "unreadable"
            continue
        digests[rel] = xxhash.xxh3_128_hexdigest(data)
        try:
            index = parse_source(data, str(path))
            tree: ast.AST | None = ast.parse(data, str(path))
        except (SyntaxError, ValueError):
            if path == script:
                return None  # it fails on its own when it runs: its bytes stay a dependency
            parts[rel], tree = "bytes:" + digest_text(data.hex()), None
        else:
            parts[rel] = index.outline_digest
            parts.update((f"{rel}:{name}", info.digest) for name, info in index.defs.items())
        if tree is not None:
            for found in _imports(tree, path, search):
                if _inside(found, root):
                    todo.append(found)
            externals.update(top for top in _absolute_tops(tree) if _find_module(top, search) is None)
    return ScriptCode(parts, tuple(sorted(files)), frozenset(externals), digests)


def _target(cmd: str | tuple[str, ...]) -> tuple[str, str, str] | None:
    """What the command's first program runs, if it is Python running a script or a
    module: ("file" or "module", its name, the PYTHONPATH the command line sets)."""
    try:
        tokens = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    except ValueError:
        return None
    while tokens and tokens[0] == "(":  # a dvc.yaml list of commands: "( a ) && ( b )"
        tokens = tokens[1:]
    first: list[str] = []
    for token in tokens:
        if token in _OPERATORS or token == ")":
            break
        first.append(token)
    pythonpath = ""
    if first and first[0] == "env":  # env VAR=value python ...
        first = first[1:]
    while first and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", first[0]):  # VAR=value python ...
        variable, _, value = first[0].partition("=")
        if variable == "PYTHONPATH":
            pythonpath = value
        first = first[1:]
    if not first or not _PYTHON.fullmatch(Path(first[0]).name):
        return None
    i = 1
    while i < len(first):
        token = first[i]
        if token == "-m":
            return ("module", first[i + 1], pythonpath) if i + 1 < len(first) else None
        if token.startswith("-m"):
            return ("module", token[2:], pythonpath)
        if token == "-c" or token.startswith("-c") or token == "-":
            return None
        if token in ("-W", "-X", "-Q"):
            i += 2
            continue
        if token.startswith("-"):
            i += 1
            continue
        return ("file", token, pythonpath)
    return None


def _imports(tree: ast.AST, path: Path, search: list[Path]) -> list[Path]:
    """The project files the imports in `tree` (at any depth) would load."""
    found: list[Path] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found += _module_files(alias.name, search)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
                module = node.module or ""
                bases = [base]
            else:
                module, bases = node.module or "", search
            if module:
                found += _module_files(module, bases)
            for alias in node.names:  # `from pkg import mod` may import a submodule
                name = f"{module}.{alias.name}" if module else alias.name
                module_file = _find_module(name, bases)
                if module_file is not None:
                    found.append(module_file)
    return found


def _absolute_tops(tree: ast.AST) -> set[str]:
    tops: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            tops.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            tops.add(node.module.partition(".")[0])
    return tops


def _module_files(name: str, search: list[Path]) -> list[Path]:
    """The files importing `name` runs: its packages' __init__.py, then itself."""
    found = []
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        module_file = _find_module(".".join(parts[:i]), search)
        if module_file is not None:
            found.append(module_file)
    return found


def _find_module(name: str, search: list[Path]) -> Path | None:
    rel = Path(*name.split("."))
    for folder in search:
        for candidate in (folder / rel.with_suffix(".py"), folder / rel / "__init__.py"):
            if candidate.is_file():
                return candidate.resolve()
    return None


def _inside(path: Path, root: Path) -> bool:
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return not any(part in _SKIP_DIRS for part in rel.parts)
