"""A stage runs only on the code its fingerprint was taken from. The loader fingerprints
the pipeline, then a worker imports it: a save in between (or before a module the stage
imports as it runs) would run another version, and its lock and run-cache entry would
describe it with the earlier fingerprint: once the file is put back, the run cache would
restore what the other version wrote (pivot/runtime/freshcode.py, pivot/runtime/worker.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import xxhash
from procs import describe, run_pivot

pytestmark = pytest.mark.timeout(60)

SECOND = 1_700_000_000

# `a` saves helpers.py, which `b` reads as it runs: the code `b` was fingerprinted with
# (VALUE = 1) is gone by the time its worker looks.
PIPELINE = """\
from pivot import stage


@stage(outs=["a.txt"])
def a() -> None:
    open("helpers.py", "w").write("VALUE = 2\\n")
    open("a.txt", "w").write("a\\n")


@stage(deps=["a.txt"], outs=["b.txt"])
def b() -> None:
    import helpers

    open("b.txt", "w").write(f"{helpers.VALUE}\\n")
"""


def _events(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    finished = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {e["stage"]: e for e in finished if e.get("event") == "stage_finished"}


# The same for a command stage: `a` saves the script `b` runs (and the module it imports).
SAVES_A_SCRIPT = """\
from pivot import stage

stage(name="b", cmd="python script.py", deps=["a.txt"], outs=["b.txt"])


@stage(outs=["a.txt"])
def a() -> None:
    open("lib.py", "w").write("VALUE = 2\\n")
    open("a.txt", "w").write("a\\n")
"""

SCRIPT = """\
import lib

open("b.txt", "w").write(f"{lib.VALUE}\\n")
"""


@pytest.mark.parametrize(("files", "module", "warm"), [
    ({"pipeline.py": PIPELINE, "helpers.py": "VALUE = 1\n"}, "helpers.py", "1"),
    ({"pipeline.py": SAVES_A_SCRIPT, "script.py": SCRIPT, "lib.py": "VALUE = 1\n"}, "lib.py", "1"),
    # pipeline.py imports the module too: the worker has the first version imported, and
    # the script's process reads the file as it is now.
    ({"pipeline.py": "import lib\n" + SAVES_A_SCRIPT, "script.py": SCRIPT, "lib.py": "VALUE = 1\n"}, "lib.py", "1"),
    ({"pipeline.py": "import lib\n" + SAVES_A_SCRIPT, "script.py": SCRIPT, "lib.py": "VALUE = 1\n"}, "lib.py", "0"),
], ids=["function", "command", "command-module-the-pipeline-imports", "command-module-the-pipeline-imports-cold"])
def test_a_stage_whose_code_was_saved_after_the_load_is_not_run_nor_recorded_under_the_old_fingerprint(
    make_project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, files: dict[str, str], module: str,
    warm: str,
) -> None:
    monkeypatch.setenv("PIVOT_WARM", warm)  # (a warm script is a fork of the worker)
    root = make_project(files)
    first = run_pivot(root, "repro", "--json")
    assert first.returncode != 0, describe(first)
    done = _events(first)
    assert done["a"]["status"] == "ran", describe(first)
    assert done["b"]["status"] == "cancelled" and done["b"]["reason_code"] == "code_outdated", describe(first)
    assert str(done["b"]["reason"]).startswith("not run: ") and module in str(done["b"]["reason"])
    assert not (root / "b.txt").exists()

    again = run_pivot(root, "repro", "--json")  # on the code as it is now
    assert again.returncode == 0, describe(again)
    assert (root / "b.txt").read_text() == "2\n"
    # The first version back: nothing recorded for it may come from the second's run.
    (root / module).write_text("VALUE = 1\n")
    back = run_pivot(root, "repro", "--json")
    assert back.returncode == 0, describe(back)
    assert _events(back)["b"]["status"] == "ran", describe(back)
    assert (root / "b.txt").read_text() == "1\n"


def test_a_run_during_which_a_module_its_workers_had_imported_was_saved_says_so(
    make_project: Callable[..., Path],
) -> None:
    """pipeline.py imports helpers.py, which `a` saves with other content: `b` runs the
    version loaded (its fingerprint's, in its lock), and the run ended "2 ran", exit 0,
    saying nothing (a new-user hunt): it says so, and `pivot status` says `b` is stale."""
    root = make_project({"pipeline.py": "import helpers\n" + PIPELINE, "helpers.py": "VALUE = 1\n"})
    first = run_pivot(root, "repro")
    moved = "warning: helpers.py changed while this run ran"
    if _events_plain(first).get("b") == "ran":
        assert first.returncode == 0 and moved in first.stderr, describe(first)
        assert (root / "b.txt").read_text() == "1\n"
        status = run_pivot(root, "status")
        assert "b: stale (code changed" in status.stdout, describe(status)
    else:  # its worker imported pipeline.py after `a` saved it: not run (the test above)
        assert moved in first.stderr, describe(first)
    again = run_pivot(root, "repro")
    assert again.returncode == 0 and "warning" not in again.stderr, describe(again)
    assert (root / "b.txt").read_text() == "2\n"


def _events_plain(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """stage -> its status word, from the plain display's "STAGE: ran in ..." lines."""
    found = {}
    for line in result.stdout.splitlines():
        name, _, rest = line.partition(": ")
        if rest:
            found[name] = rest.split()[0]
    return found


# The stage saves the module it then imports: the code it ran is not what its
# fingerprint read, though the file was as the fingerprint read it when it began.
SAVES_AS_IT_RUNS = """\
from pivot import stage


@stage(outs=["c.txt"])
def c() -> None:
    open("late.py", "w").write("VALUE = 2\\n")
    import late

    open("c.txt", "w").write(f"{late.VALUE}\\n")
"""


def test_a_module_saved_after_its_stage_began_and_imported_by_it_discards_the_run(
    make_project: Callable[..., Path],
) -> None:
    root = make_project({"pipeline.py": SAVES_AS_IT_RUNS, "late.py": "VALUE = 1\n"})
    first = run_pivot(root, "repro", "--json")
    assert first.returncode != 0, describe(first)
    done = _events(first)["c"]
    assert done["status"] == "cancelled" and done["reason_code"] == "code_outdated", describe(first)
    assert str(done["reason"]).startswith("not kept: ") and "late.py" in str(done["reason"]), describe(first)
    assert not (root / "c.txt").exists()  # what it wrote went with it

    again = run_pivot(root, "repro", "--json")  # the same code read and run: kept
    assert again.returncode == 0, describe(again)
    assert (root / "c.txt").read_text() == "2\n"


CHECK = """\
import json
import sys

from pivot.runtime.freshcode import differing
from pivot.runtime.loader import import_pipeline
from pathlib import Path

root, first, second = sys.argv[1:4]
import_pipeline(Path(root))  # imports helpers.py as it is now (the second version)
open("helpers.py", "w").write("VALUE = 3\\n")  # saved again after the import
print(json.dumps([
    differing(root, {"helpers.py": first}),
    differing(root, {"helpers.py": second}),
    differing(root, {"later.py": second}),
    differing(root, {"helpers.py": second}, on_disk=True),
]))
"""


def test_a_worker_compares_the_code_it_imported_not_the_file_as_it_is_now(
    make_project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    root = make_project({"pipeline.py": "import helpers\nfrom pivot import stage\n", "helpers.py": "VALUE = 2\n",
                         "later.py": "VALUE = 2\n"})
    first, second = (xxhash.xxh3_128_hexdigest(f"VALUE = {v}\n".encode()) for v in (1, 2))
    # Bytecode of the second version, trusted (written long after its source's second):
    # the code comes from it, and the digest is still of the source.
    helpers = root / "helpers.py"
    os.utime(helpers, ns=(SECOND * 10**9,) * 2)
    cached = Path(importlib.util.cache_from_source(str(helpers)))
    py_compile.compile(str(helpers), cfile=str(cached), doraise=True)
    written = cached.stat().st_mtime_ns
    done = subprocess.run([sys.executable, "-c", CHECK, str(root), first, second], cwd=root, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, describe(done)
    assert json.loads(done.stdout) == [
        [["helpers.py"], {}],  # imported: the second version, not the fingerprint's first
        [[], {}],  # what it imported is what the fingerprint read, whatever the file is now
        [[], {"later.py": second}],  # not imported: the file as it is now, checked again later
        # Code another process runs (a command's script): the file as it is now.
        [["helpers.py"], {"helpers.py": second}],
    ]
    assert cached.stat().st_mtime_ns == written  # read, not compiled again
