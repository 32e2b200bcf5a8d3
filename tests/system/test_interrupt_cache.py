"""Ctrl-C while a stage has written half of its output: nothing half-written is recorded.

The stage writes (and flushes) the first half of its output, then says so by creating a
marker file and waits in a loop of its own (with its own deadline): the test holds it
there with no sleep of its own, sends SIGINT to the `pivot repro` process group as a
terminal would, and checks what was left: the stage's lock still describing the last good
run, no cache object or run cache entry with the partial bytes, no process (the `proc_guard` fixture), and a project
that recovers on the next run.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from procs import (
    ProcGuard,
    alive,
    describe,
    finished,
    parse_events,
    run_dir_leftovers,
    run_pivot,
    start_pivot,
    wait_exit,
    wait_for,
    write_files,
)

pytestmark = pytest.mark.timeout(60)

PARTIAL = "first half of the output\n"
FULL = PARTIAL + "second half\n"

PIPELINE = f'''\
import os
import time

from pivot import stage


@stage(outs=["result.txt"])
def produce(hold: bool = False) -> None:
    with open("result.txt", "w") as f:
        f.write({PARTIAL!r})
        f.flush()
        if hold:
            with open("holding.tmp", "w") as marker:
                marker.write(str(os.getpid()))
            os.replace("holding.tmp", "holding")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                time.sleep(0.02)
            raise TimeoutError("the run was never interrupted")
        f.write("second half\\n")
'''


def cache_files(root: Path) -> list[bytes]:
    folder = root / ".pivot" / "cache" / "files"
    return [p.read_bytes() for p in folder.rglob("*") if p.is_file()]


def run_cache_digests(root: Path) -> set[str]:
    digests: set[str] = set()
    for entry in (root / ".pivot" / "runcache").glob("*/*.json"):
        digests.update(json.loads(entry.read_text())["outs"].values())
    return digests


def test_ctrl_c_mid_output_records_nothing_partial(tmp_path: Path, proc_guard: ProcGuard) -> None:
    root = write_files(tmp_path / "proj", {"pipeline.py": PIPELINE})
    first = run_pivot(root, "repro", "--json")
    assert first.returncode == 0, describe(first)
    assert (root / "result.txt").read_text() == FULL
    full_digest = json.loads((root / ".pivot/stages/produce.lock").read_text())["outs"]["result.txt"]

    (root / "params.yaml").write_text("produce:\n  hold: true\n")
    cli = proc_guard.track(start_pivot(root, "repro", "--json"))
    marker = root / "holding"
    wait_for(lambda: marker.exists() or cli.poll() is not None, 20, "the stage to write half its output")
    assert cli.poll() is None, describe(wait_exit(cli, 5, "the CLI"))
    stage_pid = int(marker.read_text())
    assert (root / "result.txt").read_text() == PARTIAL

    os.killpg(cli.pid, signal.SIGINT)  # Ctrl-C at a terminal signals the foreground group
    rc, out, err = wait_exit(cli, 10, "the CLI after SIGINT")
    assert rc == 130, describe((rc, out, err))
    assert "Traceback" not in err, describe((rc, out, err))
    events = parse_events(out)
    assert finished(events).get("produce", {}).get("status") != "ran", out
    wait_for(lambda: not alive(stage_pid), 5, f"the process running the stage (pid {stage_pid}) to exit")
    assert run_dir_leftovers(root) == []

    lock = json.loads((root / ".pivot/stages/produce.lock").read_text())
    assert lock["params"] == {"hold": False}, "the lock claims the interrupted run"
    assert lock["outs"] == {"result.txt": full_digest}, "the lock names the partial output"
    cached = cache_files(root)
    assert PARTIAL.encode() not in cached, "the partial output was stored in the cache"
    assert FULL.encode() in cached, "the last good output left the cache"
    assert run_cache_digests(root) == {full_digest}

    # The interrupted inputs never completed; the previous ones still restore.
    status = run_pivot(root, "status", "--json")
    assert status.returncode == 0, describe(status)
    row = json.loads(status.stdout)["stages"]["produce"]
    assert row["stale"] is True and row["restorable"] is False, row
    (root / "params.yaml").unlink()
    again = run_pivot(root, "repro", "--json")
    assert again.returncode == 0, describe(again)
    assert finished(parse_events(again.stdout))["produce"]["status"] == "restored", again.stdout
    assert (root / "result.txt").read_text() == FULL
