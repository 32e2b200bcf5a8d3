"""The workers' forkserver started as a fork of its pool (pivot/runtime/preload.py
`_fork_server`) rather than a fresh interpreter: only from a process with one thread and
none of the project's modules, speaking the stdlib server's protocol (its children run,
their exit codes come back, it stops when asked); and a `pivot repro` run's workers come
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
from multiprocessing import forkserver, get_context
from pathlib import Path

from pivot.launch.scratch import multiprocessing_scratch
from pivot.runtime import preload

if __name__ == "__main__":
    root = Path(sys.argv[1])
    multiprocessing_scratch()
    out = {}
    sys.path.insert(0, str(root))
    import helper  # a module of the project: a worker must import it as it is on disk
    out["with_a_project_module"] = preload._fork_server(["json"], str(root))
    del sys.modules["helper"]
    sys.path.remove(str(root))
    done = threading.Event()
    busy = threading.Thread(target=done.wait, args=(30,))
    busy.start()
    out["with_a_thread"] = preload._fork_server(["json"], str(root))
    done.set()
    busy.join(30)
    out["alone"] = preload._fork_server(["json"], str(root))
    server = forkserver._forkserver._forkserver_pid
    stat = Path(f"/proc/{server}/stat").read_text().rsplit(")", 1)[1].split()
    out["server_parent_is_this"] = int(stat[1]) == os.getpid()
    out["server_cmdline_is_this"] = (Path(f"/proc/{server}/cmdline").read_bytes()
                                     == Path(f"/proc/{os.getpid()}/cmdline").read_bytes())
    child = get_context("forkserver").Process(target=os._exit, args=(7,))
    child.start()
    child.join(30)
    out["child_exit"] = child.exitcode
    forkserver._forkserver._stop()
    out["server_gone"] = not Path(f"/proc/{server}").exists()
    print(json.dumps(out), flush=True)
'''


def test_the_server_is_forked_only_from_a_lone_thread_without_project_code_and_serves_as_the_stdlibs(
    make_project: Callable[..., Path], tmp_path: Path,
) -> None:
    root = make_project({"helper.py": "VALUE = 1\n"})
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    done = subprocess.run([sys.executable, str(driver), str(root)], capture_output=True, text=True,
                          timeout=90, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "with_a_project_module": False, "with_a_thread": False, "alone": True,
        "server_parent_is_this": True, "server_cmdline_is_this": True, "child_exit": 7, "server_gone": True,
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
