"""A project module saved twice within one second with the same size: the bytecode cached
between the two saves passes CPython's check (mtime in whole seconds, size), and would
run the first version. Pivot's loaders and workers compile such a module from its source
(pivot/runtime/freshcode.py)."""

from __future__ import annotations

import importlib.util
import os
import py_compile
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from procs import describe, run_pivot

pytestmark = pytest.mark.timeout(60)

PIPELINE = """\
import helpers
from pivot import stage


@stage(outs=["v.txt"])
def s(v: int = helpers.VALUE) -> None:
    open("v.txt", "w").write(f"{v} {helpers.VALUE}\\n")
"""

SECOND = 1_700_000_000  # a whole second: both saves within it


def test_a_module_saved_twice_within_a_second_with_the_same_size_runs_as_last_saved(
    make_project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)  # Python's default: bytecode written
    root = make_project({"pipeline.py": PIPELINE, "helpers.py": "VALUE = 1\n"})
    helpers = root / "helpers.py"
    os.utime(helpers, ns=(SECOND * 10**9 + 100_000_000,) * 2)
    cached = Path(importlib.util.cache_from_source(str(helpers)))
    py_compile.compile(str(helpers), cfile=str(cached), doraise=True)  # a test runner's import, say
    os.utime(cached, ns=(SECOND * 10**9 + 300_000_000,) * 2)  # written within that second
    helpers.write_text("VALUE = 2\n")  # the second save: same size, same second
    os.utime(helpers, ns=(SECOND * 10**9 + 500_000_000,) * 2)
    plain = subprocess.run([sys.executable, "-c", "import helpers; print(helpers.VALUE)"], cwd=root,
                           capture_output=True, text=True, timeout=30)
    assert plain.stdout.strip() == "1", describe(plain)  # what CPython alone runs: the first save

    result = run_pivot(root, "repro")
    assert result.returncode == 0, describe(result)
    assert (root / "v.txt").read_text() == "2 2\n"  # the loader's default and the worker's module
    # Its bytecode was written again (else every later import compiles it): plain Python
    # now reads the last save from it.
    assert cached.stat().st_mtime_ns > (SECOND + 1) * 10**9
    again = subprocess.run([sys.executable, "-c", "import helpers; print(helpers.VALUE)"], cwd=root,
                           capture_output=True, text=True, timeout=30)
    assert again.stdout.strip() == "2", describe(again)


def test_bytecode_written_after_its_sources_second_is_still_used(make_project: Callable[..., Path]) -> None:
    from pivot.runtime.freshcode import may_be_stale

    root = make_project({"helpers.py": "VALUE = 1\n"})
    helpers = root / "helpers.py"
    os.utime(helpers, ns=(SECOND * 10**9 + 100_000_000,) * 2)
    cached = Path(importlib.util.cache_from_source(str(helpers)))
    py_compile.compile(str(helpers), cfile=str(cached), doraise=True)
    os.utime(cached, ns=((SECOND + 1) * 10**9 + 50_000_000,) * 2)  # a later save has a later second
    assert not may_be_stale(str(helpers))
    os.utime(cached, ns=((SECOND + 1) * 10**9,) * 2)  # within the clock's tick of that second's end
    assert may_be_stale(str(helpers))
    cached.unlink()
    assert not may_be_stale(str(helpers))  # no bytecode: nothing to distrust


GUARD = """\
import importlib.machinery
import sys

from pivot.runtime.freshcode import guard_project_bytecode

root, alias, outside = sys.argv[1:4]
looked = [
    "", root, root + "/pkg", alias, alias + "/pkg", outside,
    outside + "/../" + root.rsplit("/", 1)[1], outside + "/deep/..",  # (deep: root/pkg)
]
for path in looked:  # folders looked in before the guard
    sys.path_importer_cache[path] = importlib.machinery.FileFinder(path)
guard_project_bytecode(root)
print(sorted(p for p in looked if p in sys.path_importer_cache))
"""


def test_the_guard_looks_again_in_every_project_folder_already_looked_in_whatever_its_path(
    tmp_path: Path,
) -> None:
    root = tmp_path / "proj"
    (root / "pkg").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    alias = outside / "link"
    alias.symlink_to(root)  # the project through a symlink: its finders are the project's too
    (outside / "deep").symlink_to(root / "pkg")
    done = subprocess.run([sys.executable, "-c", GUARD, str(root), str(alias), str(outside)], cwd=root,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, describe(done)
    assert done.stdout.split("\n")[0] == repr([str(outside)]), describe(done)
