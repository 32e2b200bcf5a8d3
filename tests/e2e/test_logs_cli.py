"""`pivot logs`: a stage's captured output from its last run, and process logs."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from procs import (
    LiveRun,
    ProcGuard,
    describe,
    run_pivot,
    start_following,
    wait_exit,
    wait_for,
)
from procs import pivot_ok as ok

pytestmark = pytest.mark.timeout(60)

WAIT_S = 20.0

PIPELINE = '''\
import sys

from pivot import stage


@stage(outs=["a.txt"])
def talk(fail: bool = False) -> None:
    print("hello from talk")
    print("a warning", file=sys.stderr)
    if fail:
        raise ValueError("talk broke")
    open("a.txt", "w").write("a\\n")
'''


def test_logs_show_the_last_run_of_a_stage(make_project: Callable[..., Path]) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    assert run_pivot(root, "repro", "--json").returncode == 0
    text = ok(root, "logs", "talk")
    assert text.splitlines()[0].startswith("# talk: ran (never ran) at ")
    assert text.splitlines()[1:] == ["hello from talk", "! a warning"]

    (root / "params.yaml").write_text("talk:\n  fail: true\n")
    failed = run_pivot(root, "repro", "--json")
    assert failed.returncode == 1, describe(failed)
    text = ok(root, "logs", "talk")
    assert text.startswith("# talk: failed (ValueError: talk broke)")
    assert "hello from talk" in text and "# traceback:" in text and "ValueError: talk broke" in text


QUIET_PIPELINE = '''\
from pivot import stage


@stage(outs=["q.txt"])
def quiet(say: bool = True) -> None:
    if say:
        print("chatty run")
    open("q.txt", "w").write(f"{say}\\n")
'''


def test_a_run_that_printed_nothing_has_its_own_log_then_and_when_restored(
    make_project: Callable[..., Path],
) -> None:
    # A silent run's log is kept by its worker, not its pool, in the state database, not
    # a file of its own: it must still replace the last run's, and be kept with its
    # run-cache entry.
    root = make_project({"pipeline.py": QUIET_PIPELINE})
    assert run_pivot(root, "repro", "--json").returncode == 0
    assert ok(root, "logs", "quiet").splitlines()[1:] == ["chatty run"]

    (root / "params.yaml").write_text("quiet:\n  say: false\n")
    assert run_pivot(root, "repro", "--json").returncode == 0
    lines = ok(root, "logs", "quiet").splitlines()
    assert len(lines) == 1 and lines[0].startswith("# quiet: ran (params changed"), lines
    # No file made for one head line (an inode costs 0.1-1 ms on ext4); the chatty
    # run's file is gone, and the run cache keeps no file for this run either.
    assert sorted(p.name for p in (root / ".pivot" / "logs" / "stages").iterdir()) == []
    assert len(list((root / ".pivot" / "runcache").glob("*/*.log"))) == 1

    (root / "params.yaml").write_text("quiet:\n  say: true\n")
    assert run_pivot(root, "repro", "--json").returncode == 0
    lines = ok(root, "logs", "quiet").splitlines()
    assert "restored from the run cache" in lines[0] and lines[-1] == "chatty run", lines

    (root / "params.yaml").write_text("quiet:\n  say: false\n")
    assert run_pivot(root, "repro", "--json").returncode == 0
    lines = ok(root, "logs", "quiet").splitlines()
    assert "restored from the run cache" in lines[0], lines
    assert lines[1].startswith("# quiet: ran (params changed") and len(lines) == 2, lines
    assert not list((root / ".pivot" / "logs" / "stages").glob("*.part*"))

    # Emptying the run cache forgets the quiet runs' logs kept for it too.
    def run_notes() -> int:
        with sqlite3.connect(root / ".pivot" / "state.db") as db:
            return int(db.execute("SELECT count(*) FROM notes_v1 WHERE key LIKE 'run-log:%'").fetchone()[0])

    assert run_notes() == 1
    ok(root, "gc", "--run-cache", "--force")
    assert run_notes() == 0
    assert ok(root, "logs", "quiet").splitlines() == lines  # the stage's own stays


MANY_QUIET = '''\
from pivot import stage

for i in range(40):
    def make(i: int = i) -> None:
        open(f"out{i}.txt", "w").write(f"{i}\\n")

    stage(name=f"q{i}", outs=[f"out{i}.txt"])(make)
'''


def test_a_one_shot_runs_pool_keeps_every_quiet_log_and_output_row_before_it_exits(
    make_project: Callable[..., Path],
) -> None:
    # Its workers leave both to it, and it holds them for a while (workers/quietlogs.py):
    # none may be lost to the run's end, however the stages fell into its batches.
    root = make_project({"pipeline.py": MANY_QUIET})
    done = run_pivot(root, "repro", "-j", "2", "--json")
    assert done.returncode == 0, describe(done)
    with sqlite3.connect(root / ".pivot" / "state.db") as db:
        notes = dict(db.execute("SELECT key, value FROM notes_v1 WHERE key LIKE 'log:%'").fetchall())
        paths = {row[0] for row in db.execute("SELECT path FROM file_state_v1")}
    assert sorted(notes) == sorted(f"log:q{i}" for i in range(40))
    assert all(bytes(v).startswith(f"# {k[4:]}: ran (never ran) at ".encode()) for k, v in notes.items())
    assert {str(root.resolve() / f"out{i}.txt") for i in range(40)} <= paths
    assert ok(root, "logs", "q39").startswith("# q39: ran (never ran) at ")


def test_logs_of_an_unknown_or_never_run_stage_is_a_usage_error(make_project: Callable[..., Path]) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    for args in (["logs", "talk"], ["logs"], ["logs", "talk", "--role", "pool"], ["logs", "talk", "-f"]):
        result = run_pivot(root, *args)
        assert result.returncode == 2, describe(result)
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, describe(result)


TWO_PIPELINE = '''\
from pivot import stage


@stage(outs=["g.txt"])
def good() -> None:
    open("g.txt", "w").write("g")


@stage(outs=["o.txt"])
def other() -> None:
    open("o.txt", "w").write("o")


def fit(kind: str = "a") -> None:
    open(f"fit-{kind}.txt", "w").write(kind)


for kind in ("a", "b"):
    stage(name=f"fit@{kind}", params={"kind": kind}, outs=[f"fit-{kind}.txt"])(fit)
'''


def test_logs_of_a_misspelt_stage_says_did_you_mean_and_of_one_not_run_yet_says_so(
    make_project: Callable[..., Path],
) -> None:
    root = make_project({"pipeline.py": TWO_PIPELINE})
    assert run_pivot(root, "repro", "good", "--json").returncode == 0
    typo = run_pivot(root, "logs", "goood")
    assert typo.returncode == 2, describe(typo)
    assert typo.stderr.startswith("error: unknown stage(s): goood (did you mean good?); stages are: good, other"), \
        describe(typo)
    never = run_pivot(root, "logs", "other")
    assert never.returncode == 2 and "no log for stage 'other': it has not run in this project yet" in never.stderr, \
        describe(never)
    group = run_pivot(root, "logs", "fit")
    assert group.returncode == 2 and "'fit' names the stages fit@a, fit@b" in group.stderr, describe(group)
    assert ok(root, "logs", "good").startswith("# good: ran")


def test_process_records_show_waves_and_stages(make_project: Callable[..., Path]) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    assert run_pivot(root, "repro", "--json").returncode == 0
    engine = ok(root, "logs", "--role", "engine")
    assert "wave_started wave=1" in engine and "wave_finished wave=1" in engine, engine
    pool = ok(root, "logs", "--role", "pool")
    assert "stage talk ran: never ran" in pool and "[wave=1 stage=talk]" in pool, pool
    result = run_pivot(root, "logs", "--role", "watcher")  # no `pivot up` ran here
    assert result.returncode == 2 and "has not run" in result.stderr, describe(result)


BAR_PIPELINE = '''\
import sys

from pivot import stage


@stage(outs=["bar.txt"])
def bar() -> None:
    print("start", flush=True)
    for i in range(1, 3001):
        sys.stderr.write(f"\\r{i}/3000 |{'#' * (i // 300)}")
    sys.stderr.write("\\n")
    sys.stderr.flush()
    sys.stdout.write("done\\r\\n")
    open("bar.txt", "w").write("ok")
'''


def test_logs_show_each_line_as_its_last_state(make_project: Callable[..., Path]) -> None:
    """A progress bar that rewrote its line 3,000 times used to be printed with every
    state (87 KB on a pipe); its log file keeps them, `pivot logs` shows the last."""
    root = make_project({"pipeline.py": BAR_PIPELINE})
    assert run_pivot(root, "repro", "--json").returncode == 0
    assert b"\r1/3000 |" in (root / ".pivot" / "logs" / "stages" / "bar.log").read_bytes()
    text = ok(root, "logs", "bar")
    # (Within a tenth of a second, the two streams' order is the order they are read in.)
    assert sorted(text.splitlines()[1:]) == ["! 3000/3000 |##########", "done", "start"], text[:2000]
    assert "\r" not in text and len(text) < 200, len(text)


FOLLOW_PIPELINE = '''\
from pivot import stage


@stage(deps=["in.txt"], outs=["out.txt"])
def copy() -> None:
    text = open("in.txt").read().strip()
    print(f"copied {text}")
    open("out.txt", "w").write(text)
'''


def test_logs_follow_says_when_a_new_run_starts(
    make_project: Callable[..., Path], up: Callable[..., LiveRun], proc_guard: ProcGuard, tmp_path: Path,
) -> None:
    root = make_project({"pipeline.py": FOLLOW_PIPELINE, "in.txt": "one\n"})
    live = up(root)
    live.wait_event(lambda e: e["event"] == "wave_finished" and e["wave"] == 1, WAIT_S, "the first wave")
    followed = tmp_path / "followed.txt"
    follower = proc_guard.track(start_following(root, "copy", followed))
    # It prints the log so far once it is subscribed: the next run reaches it.
    wait_for(lambda: "copied one" in followed.read_text(), WAIT_S, "pivot logs -f to show the last run")
    mark = live.mark()
    (root / "in.txt").write_text("two\n")
    live.wait_event(lambda e: e["event"] == "wave_finished" and e["wave"] == 2, WAIT_S, "the second wave", mark)
    wait_for(lambda: "copied two" in followed.read_text(), WAIT_S, "pivot logs -f to show the new run")
    live.stop()
    rc, _, err = wait_exit(follower, WAIT_S, "pivot logs -f after the engine stopped")
    assert rc == 0, err
    lines = followed.read_text().splitlines()
    assert lines[0].startswith("# copy: ran (never ran)") and lines[1] == "copied one", lines
    assert lines[2].startswith("# copy: running (wave 2; dep changed: in.txt"), lines
    assert lines[3:] == ["copied two"], lines
