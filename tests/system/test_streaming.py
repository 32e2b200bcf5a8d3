"""A stage's output reaches every display while the stage runs (issue 12, point 1): what
it prints, what its subprocesses and `os.write` print, a progress bar as its latest
state; `pivot logs STAGE` shows it so far and `pivot logs -f STAGE` follows it; the same
from a pool of its own behind a tcp broker. Each stage holds until the test lets it go,
so every line checked here was seen before the stage could end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from procs import (
    Broker,
    LiveRun,
    ProcGuard,
    describe,
    parse_events,
    run_pivot,
    start_following,
    start_pivot,
    start_pool,
    wait_exit,
    wait_for,
    write_files,
)

from broker.state import MAX_CHARGES

pytestmark = pytest.mark.timeout(90)

WAIT_S = 20.0

PIPELINE = '''\
import os
import subprocess
import sys
import time

from pivot import stage


def wait_for(name):
    deadline = time.monotonic() + 40
    while not os.path.exists(name):
        if time.monotonic() > deadline:
            raise TimeoutError(name)
        time.sleep(0.01)


@stage(deps=["in.txt"], outs=["out.txt"])
def talk() -> None:
    print("epoch 1")  # no flush: as a stage usually prints
    subprocess.run([sys.executable, "-c", "print('from a child')"], check=True)
    os.write(2, b"raw to fd 2\\n")
    for i in range(3):
        sys.stderr.write(f"\\r{i}/3 |{'#' * i}")
        sys.stderr.flush()
    wait_for("signals/go")
    print("after go")
    open("out.txt", "w").write("ok\\n")
'''

FILES = {"pipeline.py": PIPELINE, "in.txt": "x\n", ".pivotignore": "signals/\n", "signals/.keep": ""}


def is_log(line: str, stream: str = "stdout", partial: bool = False) -> Callable[[dict[str, object]], bool]:
    return lambda e: (e["event"] == "log" and e["stage"] == "talk" and e["stream"] == stream
                      and e["line"] == line and bool(e.get("partial")) == partial)


def test_a_running_stage_streams_to_the_live_view_and_to_pivot_logs(
    make_project: Callable[..., Path], up: Callable[..., LiveRun], proc_guard: ProcGuard, tmp_path: Path
) -> None:
    root = make_project(FILES)
    live = up(root)
    for line, stream, partial in (("epoch 1", "stdout", False), ("from a child", "stdout", False),
                                  ("raw to fd 2", "stderr", False), ("2/3 |##", "stderr", True)):
        live.wait_event(is_log(line, stream, partial), WAIT_S, f"{line!r} while the stage runs")
    assert not [e for e in live.since(0) if e["event"] == "stage_finished" and e["stage"] == "talk"]

    so_far = run_pivot(root, "logs", "talk")
    assert so_far.returncode == 0, describe(so_far)
    assert so_far.stdout.startswith("# talk: running; what it printed so far:\n"), so_far.stdout
    assert "epoch 1\nfrom a child\n" in so_far.stdout and "! raw to fd 2\n" in so_far.stdout

    followed = tmp_path / "followed.txt"
    follower = proc_guard.track(start_following(root, "talk", followed))
    # It prints the log so far once it is subscribed: what comes next reaches it.
    wait_for(lambda: "epoch 1" in followed.read_text(), WAIT_S, "pivot logs -f to show the log so far")

    mark = live.mark()
    (root / "signals" / "go").write_text("")
    after = live.wait_event(is_log("after go"), WAIT_S, "the line printed after go", mark)
    done = live.wait_event(lambda e: e["event"] == "stage_finished" and e["stage"] == "talk", WAIT_S,
                           "talk to finish", mark)
    assert done["status"] == "ran" and live.since(0).index(after) < live.since(0).index(done)
    live.stop()

    rc, _, err = wait_exit(follower, WAIT_S, "pivot logs -f after the engine stopped")
    assert rc == 0, err
    shown = followed.read_bytes().decode()
    assert "epoch 1\n" in shown and "! raw to fd 2\n" in shown, shown
    # The progress line never ended: it comes last, as the stage left it, whole.
    assert shown.endswith("! raw to fd 2\nafter go\n! 2/3 |##\n"), shown

    log = (root / ".pivot" / "logs" / "stages" / "talk.log").read_bytes().decode()
    head, *lines = log.split("\n")
    assert head.startswith("# talk: ran (")
    assert lines[:3] == ["epoch 1", "from a child", "! raw to fd 2"], lines
    # (on disk, every state of the progress line, which "after go" did not cut in two)
    assert lines[-3:] == ["after go", "! \r0/3 |\r1/3 |#\r2/3 |##", ""], lines


def test_a_pool_of_its_own_behind_a_tcp_broker_streams_to_an_attached_display(
    tmp_path: Path, proc_guard: ProcGuard, start_broker: Callable[..., Broker]
) -> None:
    root = write_files(tmp_path / "proj", FILES)
    broker = start_broker(root, "--bind", "tcp://127.0.0.1:0")
    control = broker.wait_bound()
    start_pool(proc_guard, root, control, "p1", "-j", "1")
    viewer = LiveRun(proc_guard.track(start_pivot(root, "attach", "--json", "--broker", control)))
    run = proc_guard.track(start_pivot(root, "repro", "--broker", control, "--json"))
    viewer.wait_event(is_log("epoch 1"), WAIT_S, "the attached display to get a line while the stage runs")
    viewer.wait_event(is_log("2/3 |##", "stderr", partial=True), WAIT_S, "the progress bar's state")
    assert run.poll() is None
    (root / "signals" / "go").write_text("")
    rc, out, err = wait_exit(run, WAIT_S, "pivot repro --broker")
    assert rc == 0, err
    events = parse_events(out)
    lines = [e["line"] for e in events if e["event"] == "log" and not e["partial"]]
    assert lines[:3] == ["epoch 1", "from a child", "raw to fd 2"] and "after go" in lines, lines
    assert [e["event"] for e in events].index("stage_finished") > max(
        i for i, e in enumerate(events) if e["event"] == "log")
    rc, _, err = broker.stop()
    assert rc == 0, err


CRASH = '''\
import os
import signal
import sys

from pivot import stage


@stage(outs=["never.txt"])
def crash() -> None:
    for i in range(3):
        print(f"line {i} before the crash", flush=True)
    sys.stderr.write("last words\\n")
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
'''


def test_the_lines_printed_just_before_a_worker_dies_are_shown_and_kept(make_project: Callable[..., Path]) -> None:
    root = make_project({"pipeline.py": CRASH})
    result = run_pivot(root, "repro", "--json", timeout=60)
    assert result.returncode == 1, describe(result)
    events = parse_events(result.stdout)
    [done] = [e for e in events if e["event"] == "stage_finished"]
    assert (done["status"], done["reason_code"]) == ("failed", "worker_died"), done
    # Each try of it (a stage whose worker died runs again, up to MAX_CHARGES tries), in
    # order within each stream: stdout and stderr are two files its pool reads in turn,
    # so a line of one may come before a line printed just before it in the other (the
    # suite, loading the machine, saw "last words" first).
    said = ["line 0 before the crash", "line 1 before the crash", "line 2 before the crash"]
    for stream, lines in (("stdout", said * MAX_CHARGES), ("stderr", ["last words"] * MAX_CHARGES)):
        shown = [e["line"] for e in events if e["event"] == "log" and e["stream"] == stream]
        assert shown == lines, (stream, shown)
    logs = run_pivot(root, "logs", "crash")
    assert logs.returncode == 0, describe(logs)
    head, *lines = logs.stdout.splitlines()
    assert head.startswith("# crash: failed (its worker process (pid "), head
    assert lines == ["line 0 before the crash", "line 1 before the crash", "line 2 before the crash", "! last words"]
