"""The workers' forkserver and the resource tracker started as forks of their pool
(pivot/runtime/mpforks.py) rather than fresh interpreters: only from a process with one
thread (and, for the server, none of the project's modules), each doing the stdlib's
work (the server's children run and their exit codes come back; the tracker cleans up
what a worker leaked; each stops when its pipe closes); and a `pivot repro` run's workers come
from such a server without running the CLI's script again (multiprocessing runs a
parent's main script in each child it starts, unless that is a package's `__main__`)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from procs import run_pivot

pytestmark = pytest.mark.timeout(120)

DRIVER = '''\
import json, os, sys, threading
from multiprocessing import forkserver, get_context, resource_tracker
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

from pivot.launch.scratch import multiprocessing_scratch
from pivot.runtime import freshcode, mpforks


def guarded(root):
    os._exit(5 if freshcode.guarded(root) else 6)  # the project's bytecode guard, inherited


def leak(name):
    SharedMemory(name=name, create=True, size=16)  # and never unlinked: the tracker's to clean


def forked(pid):
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(stat[1]) == os.getpid() and (Path(f"/proc/{pid}/cmdline").read_bytes()
                                            == Path(f"/proc/{os.getpid()}/cmdline").read_bytes())


if __name__ == "__main__":
    root = Path(sys.argv[1])
    multiprocessing_scratch()
    out = {}
    sys.path.insert(0, str(root))
    import helper  # a module of the project: a worker must import it as it is on disk
    out["with_a_project_module"] = mpforks.fork_server(["json"], str(root), {"pivot"})
    del sys.modules["helper"]
    sys.path.remove(str(root))
    done = threading.Event()
    busy = threading.Thread(target=done.wait, args=(30,))
    busy.start()
    out["with_a_thread"] = [mpforks.fork_server(["json"], str(root), {"pivot"}), mpforks.fork_tracker()]
    done.set()
    busy.join(30)
    out["alone"] = [mpforks.fork_server(["json"], str(root), {"pivot"}), mpforks.fork_tracker()]
    server, tracker = forkserver._forkserver._forkserver_pid, resource_tracker._resource_tracker._pid
    out["forked"] = [forked(server), forked(tracker)]
    resource_tracker.ensure_running()
    out["tracker_kept"] = resource_tracker._resource_tracker._pid == tracker
    child = get_context("forkserver").Process(target=os._exit, args=(7,))
    child.start()
    child.join(30)
    out["child_exit"] = child.exitcode
    child = get_context("forkserver").Process(target=guarded, args=(str(root),))
    child.start()
    child.join(30)
    out["guarded"] = child.exitcode
    name = f"pivot-test-{os.getpid()}"
    child = get_context("forkserver").Process(target=leak, args=(name,))
    child.start()
    child.join(30)
    out["leaked"] = Path("/dev/shm", name).exists()
    forkserver._forkserver._stop()
    out["server_gone"] = not Path(f"/proc/{server}").exists()
    resource_tracker._resource_tracker._stop()  # its pipe closed: it cleans up, exits, is reaped
    out["tracker_gone"] = not Path(f"/proc/{tracker}").exists()
    out["leak_cleaned"] = not Path("/dev/shm", name).exists()
    print(json.dumps(out), flush=True)
'''


def test_the_helpers_are_forked_only_from_a_lone_thread_without_project_code_and_serve_as_the_stdlibs(
    make_project: Callable[..., Path], tmp_path: Path,
) -> None:
    root = make_project({"helper.py": "VALUE = 1\n"})
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    done = subprocess.run([sys.executable, str(driver), str(root)], capture_output=True, text=True,
                          timeout=90, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "with_a_project_module": False, "with_a_thread": [False, False], "alone": [True, True],
        "forked": [True, True], "tracker_kept": True, "child_exit": 7, "guarded": 5, "leaked": True,
        "server_gone": True, "tracker_gone": True, "leak_cleaned": True,
    }


PIPELINE = textwrap.dedent('''\
    import faulthandler, json, os, signal, sys
    from pathlib import Path

    from pivot import stage


    @stage(outs=["seen.json"])
    def look() -> None:
        server = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\\0")
        Path("seen.json").write_text(json.dumps({
            "server": [part.decode() for part in server],
            "main_file": getattr(sys.modules["__main__"], "__file__", None),
            "fault_handler": faulthandler.is_enabled(),
            "sigterm_handled": callable(signal.getsignal(signal.SIGTERM)),
        }))
''')


def test_a_repro_runs_its_stages_in_workers_of_a_server_forked_from_its_pool(
    make_project: Callable[..., Path],
) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    done = run_pivot(root, "repro", timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads((root / "seen.json").read_text())
    assert not any("multiprocessing.forkserver" in part for part in seen["server"]), seen
    assert seen["main_file"] is None, seen  # not the `pivot` script, run again in each worker
    # As a fresh interpreter's: neither the pool's fault handler nor a handler of the CLI's.
    assert seen["fault_handler"] is False and seen["sigterm_handled"] is False, seen


STDLIB_DRIVER = '''\
import os, sys
from multiprocessing import forkserver, get_context
from pathlib import Path

from pivot.launch.scratch import multiprocessing_scratch
from pivot.runtime import preload

import report

if __name__ == "__main__":
    multiprocessing_scratch()
    preload.worker_context(("json",), "k")
    forkserver.ensure_running()  # the stdlib's start: a fresh interpreter
    codes = []
    for look in (report.frozen, report.guarded):
        child = get_context("forkserver").Process(target=look)
        child.start()
        child.join(30)
        codes.append(child.exitcode)
    forkserver._forkserver._stop()
    print(*codes, flush=True)
'''


def test_a_server_started_the_stdlibs_way_hands_its_children_a_frozen_heap_and_the_guard(tmp_path: Path) -> None:
    """What the server imported is frozen for the collector in its children
    (pivot/runtime/heapfreeze.py), and the bytecode guard for the folder it runs in, the
    pool's project, is installed (guardhere.py), as a forked server's are."""
    (tmp_path / "report.py").write_text(
        "import gc, os\nfrom pivot.runtime import freshcode\n\n"
        "def frozen():\n    os._exit(3 if gc.get_freeze_count() > 1000 else 4)\n\n"
        "def guarded():\n    os._exit(5 if freshcode.guarded(os.getcwd()) else 6)\n"
    )
    driver = tmp_path / "driver.py"
    driver.write_text(STDLIB_DRIVER)
    done = subprocess.run([sys.executable, str(driver)], capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "5"], done.stdout


PACKED = '''\
import json, sys

import xml.dom.minidom  # (any module: each must still be found, in the same order)

before = list(sys.modules.items())
spread = len({id(name) >> 12 for name in sys.modules})  # the memory pages they are on
import pivot.runtime.heapfreeze  # noqa: E402,F401

after = list(sys.modules.items())
packed = len({id(name) >> 12 for name in sys.modules})
import xml.dom.minicompat  # noqa: E402,F401  (found, as already imported)
import email.parser  # noqa: E402,F401  (imports as before)

print(json.dumps({
    "same": [n for n, _ in before] == [n for n, _ in after[:len(before)]]
            and all(a is b for (_, a), (_, b) in zip(before, after)),
    "spread": spread,
    "packed": packed,
    "found": sys.modules["xml.dom.minidom"] is dict(before)["xml.dom.minidom"] and "email.parser" in sys.modules,
}))
'''


def test_the_servers_module_names_are_packed_together_and_every_module_is_still_found(tmp_path: Path) -> None:
    """A fork reading every module name (a loader) copies the pages they are on: the
    server holds them in strings allocated together (pivot/runtime/heapfreeze.py)."""
    done = subprocess.run([sys.executable, "-c", PACKED], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["same"] and report["found"], report
    assert report["packed"] < report["spread"] / 4, report  # pages the names are on
