"""A committed Pivot tree in a folder of its own, for the two-tree scripts (bench/ab.py and
the others that take `--a` and `--b`): so that a figure is measured beside another commit
in the same run, including one much older than the current environment.

    python bench/tree.py REV DEST
    python bench/ab.py PROJECT --a DEST --b .

Exports `pivot/`, `broker/` and `workers/` at REV (`git archive`, so uncommitted edits
never leak in). What an older tree needs that this environment no longer has is put
beside it, in DEST only:

- a tree from before `pivot/cli/entry.py` (the `pivot` script's early loader) gets one
  that calls its `pivot.cli.main:main`, so that the same `pivot` script runs both trees;
- the third-party packages its pyproject.toml names that are not importable here (loky
  and its cloudpickle, dropped since) are installed into DEST with pip's `--target`.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from benchcommon import compile_trees

PACKAGES = ("pivot", "broker", "workers")
ENTRY = "pivot/cli/entry.py"
# A dependency's import name where it differs from its distribution's.
IMPORT_NAMES = {"pyzmq": "zmq", "pyyaml": "yaml"}
# What a dependency needs that it does not say in the tree's pyproject.toml.
BESIDE = {"loky": ("cloudpickle",)}


def git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout


def dependencies(pyproject: str) -> list[str]:
    """The distribution names of `[project] dependencies` (a tree's own file: no TOML
    library needed for one list)."""
    found = re.search(r"^dependencies\s*=\s*\[(.*?)\]", pyproject, re.S | re.M)
    if found is None:
        return []
    names = re.findall(r"""["']([A-Za-z0-9_.\-]+)""", found.group(1))
    return [name.lower() for name in names]


def missing(names: list[str]) -> list[str]:
    absent = [name for name in names if importlib.util.find_spec(IMPORT_NAMES.get(name, name)) is None]
    return absent + [extra for name in absent for extra in BESIDE.get(name, ())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rev", help="a commit, tag or branch of this repository")
    parser.add_argument("dest", type=Path, help="a folder that does not exist yet")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parent.parent
    dest: Path = args.dest.resolve()
    if dest.exists():
        parser.error(f"{dest} exists: give a new folder (an old tree's files would mix with this one)")
    archive = git(repo, "archive", "--format=tar", args.rev, *PACKAGES)
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    if not (dest / ENTRY).exists():
        (dest / ENTRY).write_text("from pivot.cli.main import main\n\n__all__ = ['main']\n")
        print(f"{ENTRY}: added (calls pivot.cli.main:main)")
    pyproject = git(repo, "show", f"{args.rev}:pyproject.toml").decode()
    absent = missing(dependencies(pyproject))
    if absent:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(dest), *absent],
                       check=True)
        print(f"installed into {dest}: {', '.join(absent)}")
    compile_trees(dest)
    print(f"{dest}: {git(repo, 'log', '-1', '--format=%h %ad %s', '--date=short', args.rev).decode().strip()}")


if __name__ == "__main__":
    main()
