"""A pipeline load forked from the pool's preloading server (pivot/launch/spawn.py
`ForkedLoaderRun`): the server never imports project code, so every forked load sees the
code as it is on disk, says a broken pipeline as a fresh interpreter does, and reports the
same manifest (its modules to preload included) as a fresh interpreter would.

The driver is its own process (the server belongs to the process that set it up); it
prints one JSON line per load."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

DRIVER = '''\
import json, os, sys
from pathlib import Path

from pivot.errors import PipelineError
from pivot.launch.spawn import LoaderRun, run_loader
from pivot.runtime import preload


def answer(manifest):
    import hashlib, msgpack

    s = manifest.by_name["s"]
    # The whole manifest: a forked loader's answer (a pickle) as a fresh one's (msgpack).
    whole = hashlib.sha256(msgpack.packb(manifest.to_wire(), use_bin_type=True)).hexdigest()
    return {"fingerprint": s.fingerprint, "params": s.params, "preload": list(manifest.preload),
            "preload_key": manifest.preload_key, "manifest": whole}


def load(how):
    try:
        m = LoaderRun(root).result(60) if how == "fresh" else run_loader(root, 60)
    except PipelineError as exc:
        return {"how": how, "error": str(exc), "detail": exc.detail or ""}
    return {"how": how, **answer(m), "loader_ppid": int((root / "ppid.txt").read_text()),
            "loader_pid": int((root / "pid.txt").read_text())}


if __name__ == "__main__":
    root = Path(sys.argv[1])
    first = load("fresh")
    print(json.dumps(first), flush=True)
    preload.serve_loaders(tuple(first["preload"]), first["preload_key"])
    for line in sys.stdin:  # one command per line: "fresh", "forked" or "new-modules-while-loading"
        how = line.strip()
        if how == "new-modules-while-loading":  # workers want other modules meanwhile
            import threading
            import time
            from multiprocessing import forkserver

            reply = {}
            (root / "gate").touch()
            loading = threading.Thread(target=lambda: reply.update(load("forked")))
            loading.start()
            deadline = time.monotonic() + 30
            while not (root / "loading").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            server = forkserver._forkserver._forkserver_pid
            asking = threading.Thread(target=preload.worker_context, args=(("yaml", "json"), "other"))
            asking.start()
            asking.join(10)  # the load is held for 30 s: a call that waits for it is seen
            reply["returned_while_loading"] = not asking.is_alive()
            forkserver.ensure_running()
            reply["new_server_meanwhile"] = forkserver._forkserver._forkserver_pid not in (server, None)
            reply["old_server_while_loading"] = os.path.exists(f"/proc/{server}") and os.waitpid(server, os.WNOHANG)[0] == 0
            (root / "release").touch()
            loading.join(60)
            asking.join(60)
            deadline = time.monotonic() + 10  # it exits once its last process (the load) has
            while not os.waitpid(server, os.WNOHANG)[0] and time.monotonic() < deadline:
                time.sleep(0.01)
            reply["old_server_gone_after"] = not os.path.exists(f"/proc/{server}")
            for name in ("gate", "loading", "release"):
                (root / name).unlink()
        elif how == "forked-lingering":  # the loader's process stays a while after its answer
            import time

            (root / "linger").touch()
            reply = load("forked")
            pid = int((root / "pid.txt").read_text())
            reply["alive_after_answer"] = os.path.exists(f"/proc/{pid}")
            (root / "release-linger").touch()
            deadline = time.monotonic() + 30
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.01)
            reply["gone_after_release"] = not os.path.exists(f"/proc/{pid}")
            for name in ("linger", "release-linger"):
                (root / name).unlink()
        elif how == "standby":  # the loader forked ahead of the next load
            reply = {"standby_pid": preload._standby[0].proc.pid if preload._standby else None}
        elif how == "standby-after-restart":  # the server's modules change: its standby goes
            import time

            waiting = preload._standby[0].proc.pid if preload._standby else None
            preload.worker_context(("yaml", "json"), "other")
            deadline = time.monotonic() + 10
            while waiting is not None and os.path.exists(f"/proc/{waiting}") and time.monotonic() < deadline:
                with open(f"/proc/{waiting}/stat") as f:
                    if f.read().rpartition(")")[2].split()[0] == "Z":  # (its server reaps it)
                        break
                time.sleep(0.01)
            reply = {"standby_was": waiting, "standby_left": len(preload._standby),
                     "standby_alive": waiting is not None and os.path.exists(f"/proc/{waiting}")
                     and open(f"/proc/{waiting}/stat").read().rpartition(")")[2].split()[0] != "Z"}
            reply.update({"next": load("forked")})
        else:
            reply = load(how)
        print(json.dumps({**reply, "driver_pid": os.getpid()}), flush=True)
'''

PIPELINE = """\
import os

import yaml  # third-party: preloaded by the server once it is known

import helpers
from pivot import stage

open("ppid.txt", "w").write(str(os.getppid()))
open("pid.txt", "w").write(str(os.getpid()))
if os.path.exists("linger"):  # a thread that keeps the process from exiting for a while
    import threading
    import time

    def _linger():
        deadline = time.monotonic() + 10
        while not os.path.exists("release-linger") and time.monotonic() < deadline:
            time.sleep(0.01)

    threading.Thread(target=_linger).start()
if os.path.exists("gate") and not os.path.exists("release"):  # held until the test says
    import time

    open("loading", "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists("release") and time.monotonic() < deadline:
        time.sleep(0.01)


@stage(outs=["o.txt"])
def s(n: int = helpers.N) -> None:
    open("o.txt", "w").write(helpers.shout(str(n) + yaml.__name__))
"""


class Driver:
    def __init__(self, root: Path) -> None:
        (root / "driver.py").write_text(DRIVER)
        self.proc = subprocess.Popen(
            [sys.executable, str(root / "driver.py"), str(root)], cwd=root, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.first = self._answer()

    def _answer(self) -> dict[str, object]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read() if self.proc.stderr else "the driver exited"
        answer: dict[str, object] = json.loads(line)
        return answer

    def load(self, how: str) -> dict[str, object]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(how + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def _write(root: Path, name: str, text: str) -> None:
    (root / name).write_text(textwrap.dedent(text))


@contextlib.contextmanager
def driving(root: Path, n: int) -> Iterator[Driver]:
    """A driver for the pipeline whose helper sets N = `n`, closed on the way out."""
    _write(root, "pipeline.py", PIPELINE)
    _write(root, "helpers.py", f"N = {n}\n\ndef shout(t):\n    return t\n")
    driver = Driver(root)
    try:
        yield driver
    finally:
        driver.close()


def test_a_forked_load_sees_each_edit_and_matches_a_fresh_one(tmp_path: Path) -> None:
    root = tmp_path
    (root / ".pivot").mkdir()
    _write(root, "pipeline.py", PIPELINE)
    _write(root, "helpers.py", "N = 1\n\ndef shout(t):\n    return t.upper()\n")
    driver = Driver(root)
    try:
        fresh = driver.first
        forked = driver.load("forked")
        # Forked: its parent is the server, not the driver (a fresh loader's parent).
        assert forked["loader_ppid"] != forked["driver_pid"], forked
        assert fresh["loader_ppid"] == forked["driver_pid"], (fresh, forked)
        for key in ("fingerprint", "params", "preload", "preload_key", "manifest"):
            assert forked[key] == fresh[key], (key, forked, fresh)
        assert "yaml" in fresh["preload"], fresh

        # An edit of a helper's code, then of a value the stage's default comes from: the
        # server never imported helpers, so each forked load has the new one.
        _write(root, "helpers.py", "N = 1\n\ndef shout(t):\n    return t.lower()\n")
        edited = driver.load("forked")
        assert edited["fingerprint"] != forked["fingerprint"], edited
        assert edited == {**driver.load("fresh"), "how": "forked", "loader_ppid": edited["loader_ppid"],
                          "loader_pid": edited["loader_pid"]}
        _write(root, "helpers.py", "N = 7\n\ndef shout(t):\n    return t.lower()\n")
        assert driver.load("forked")["params"] == {"n": 7}

        # A broken helper: the same error as a fresh interpreter gives, with the user's
        # traceback; then fixed again.
        _write(root, "helpers.py", "N = 7\n\ndef shout(t)\n    return t\n")
        broken, broken_fresh = driver.load("forked"), driver.load("fresh")
        assert "SyntaxError" in str(broken["error"]), broken
        assert broken["error"] == broken_fresh["error"], (broken, broken_fresh)
        assert "helpers.py" in str(broken["detail"]), broken
        _write(root, "helpers.py", "N = 7\n\ndef shout(t):\n    return t\n")
        assert "fingerprint" in driver.load("forked")
    finally:
        driver.close()


def test_a_load_after_the_first_is_served_by_a_loader_forked_before_it_was_asked(tmp_path: Path) -> None:
    """The fork (11-18 ms from a server holding scikit-learn) is off a code edit's way:
    each served load forks the next one's loader, which waits; it has never imported
    the project, so it sees the edit made while it waited."""
    with driving(tmp_path, 5) as driver:
        first = driver.load("forked")
        waiting = driver.load("standby")["standby_pid"]
        assert waiting not in (None, first["loader_pid"]), (first, waiting)
        _write(tmp_path, "helpers.py", "N = 6\n\ndef shout(t):\n    return t\n")
        served = driver.load("forked")
        assert served["params"] == {"n": 6} and served["loader_pid"] == waiting, (served, waiting)
        assert served["loader_ppid"] == first["loader_ppid"]  # (the server's child, as a fork at the load)
        assert driver.load("standby")["standby_pid"] not in (None, waiting)  # one load each


def test_a_loader_waiting_on_a_server_whose_modules_changed_is_dropped(tmp_path: Path) -> None:
    # A standby was forked from the old server (an upgraded package's old version): the
    # next load must not be served by it.
    with driving(tmp_path, 5) as driver:
        assert driver.load("forked")["params"] == {"n": 5}
        answer = driver.load("standby-after-restart")
        assert answer["standby_was"] is not None, answer
        assert answer["standby_left"] == 0 and not answer["standby_alive"], answer
        assert answer["next"]["params"] == {"n": 5} and answer["next"]["loader_pid"] != answer["standby_was"], answer


def test_the_server_is_restarted_under_a_load_without_waiting_for_it(tmp_path: Path) -> None:
    # New workers may want other modules (an upgraded package) while a load runs; the old
    # server exits only once every process it forked has, so it is let go, not waited
    # for (that held the pool's loop for the whole load, or a spared stage's whole run).
    with driving(tmp_path, 3) as driver:
        answer = driver.load("new-modules-while-loading")
        assert answer.get("params") == {"n": 3}, answer  # the load on the old server answers
        assert answer["returned_while_loading"] and answer["new_server_meanwhile"], answer
        assert answer["old_server_while_loading"] and answer["old_server_gone_after"], answer
        assert driver.load("forked")["params"] == {"n": 3}  # the new server serves loads


def test_a_forked_loads_answer_is_taken_before_its_process_has_exited(tmp_path: Path) -> None:
    # A fork of a process that imported scikit-learn takes 6-9 ms to exit and have its
    # server report it: on the path from a code edit to its stage, so not waited for.
    with driving(tmp_path, 4) as driver:
        answer = driver.load("forked-lingering")
        assert answer.get("params") == {"n": 4}, answer
        assert answer["alive_after_answer"] and answer["gone_after_release"], answer
        after = driver.load("forked")
        assert after["params"] == {"n": 4}, after  # and the next load is served


def test_what_a_forked_load_prints_is_in_the_error_of_a_loader_that_dies(tmp_path: Path) -> None:
    root = tmp_path
    with driving(root, 1) as driver:
        _write(root, "helpers.py", "import os, sys\nprint('about to go', flush=True)\nos._exit(5)\n")
        died = driver.load("forked")
        assert "exited with code 5 before reporting" in str(died["error"]), died
        assert "about to go" in str(died["detail"]), died


# --- loads forked from the starting process itself (`start_loader`) ----------------------

ONE_SHOT = '''\
import json, sys, threading
from pathlib import Path

import workers.args  # Pivot's pool package: a pool has it when it starts its first load
from pivot.launch.spawn import LoaderRun, start_loader

root = Path(sys.argv[1])
assert not hasattr(sys.modules["workers"], "ORIGIN")


def load(start):
    s = start(root).result(60).by_name["s"]
    return {"argv0": (root / "argv0.txt").read_text(), "params": s.params, "fingerprint": s.fingerprint}


answers = {"forked": load(start_loader), "fresh": load(LoaderRun)}
hold = threading.Event()
waiting = threading.Thread(target=hold.wait)
waiting.start()
try:
    answers["with_a_thread"] = load(start_loader)
finally:
    hold.set()
    waiting.join()
print(json.dumps(answers))
'''

OWN_WORKERS = """\
import sys

import workers  # the project's own package, not Pivot's pool package of that name
from pivot import stage

open("argv0.txt", "w").write(sys.argv[0])


@stage(outs=["o.txt"])
def s(origin: str = workers.ORIGIN) -> None:
    open("o.txt", "w").write(origin)
"""


def test_a_single_threaded_process_forks_its_loader_which_sees_what_a_fresh_one_does(tmp_path: Path) -> None:
    root = tmp_path
    _write(root, "pipeline.py", OWN_WORKERS)
    (root / "workers").mkdir()
    _write(root, "workers/__init__.py", "ORIGIN = 'project'\n")
    (root / "driver.py").write_text(ONE_SHOT)
    # -P: not the project's folder first on sys.path, so `workers` is Pivot's, as in a pool.
    done = subprocess.run([sys.executable, "-P", str(root / "driver.py"), str(root)], cwd=root,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    # Forked: the child runs on in the driver's own program; a fresh one runs the loader.
    assert answers["forked"]["argv0"] == str(root / "driver.py"), answers
    for fresh in ("fresh", "with_a_thread"):  # a thread's locks would be copied held: fresh
        assert answers[fresh]["argv0"].endswith("pivot/runtime/loader.py"), answers
    for how in ("forked", "with_a_thread"):
        assert answers[how]["params"] == answers["fresh"]["params"] == {"origin": "project"}, answers
        assert answers[how]["fingerprint"] == answers["fresh"]["fingerprint"], answers


def test_a_load_whose_asker_is_gone_exits_without_a_word(tmp_path: Path) -> None:
    """A refused `pivot repro` leaves its forked loader behind, its files removed: the
    loader must not print a traceback onto that command's terminal."""
    _write(tmp_path, "pipeline.py", PIPELINE)
    _write(tmp_path, "helpers.py", "N = 1\n\ndef shout(t):\n    return t\n")
    code = ("import sys\nfrom pivot.runtime.loader import forked_main\n"
            "forked_main(sys.argv[1], sys.argv[2] + '.msgpack', sys.argv[2] + '.out', ())\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(tmp_path / "gone")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", "")
    assert not (tmp_path / "o.txt").exists() and not (tmp_path / "pid.txt").exists()  # the pipeline never ran
