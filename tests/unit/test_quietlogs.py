"""What a pool's workers leave it to store (workers/quietlogs.py): the quiet runs' head
lines and the rows of the outputs they hashed, many stages' in one transaction; a live
engine's pool before it sends their results, a one-shot run's within HOLD_S."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pivot.state.stagelogs import QuietRun, quiet_head, quiet_log
from pivot.state.statecache import StateCache
from workers.quietlogs import HOLD_S, QuietLogs


def run(stage: str, reason: str) -> QuietRun:
    return QuietRun(stage, quiet_head(stage, reason), reason, None, None)


def pool_side(root: Path, *, one_shot: bool) -> QuietLogs:
    return QuietLogs(StateCache(root / ".pivot" / "state.db"), root, one_shot=one_shot)


def rows_in(root: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(root / ".pivot" / "state.db") as db:
        return db.execute("SELECT path, inode, digest FROM file_state_v1").fetchall()


def test_a_live_pool_keeps_them_before_it_sends_the_results(tmp_path: Path) -> None:
    quiet = pool_side(tmp_path, one_shot=False)
    row = (str(tmp_path / "out" / "x.txt"), 5, 4, 1_000, "e" * 32, 3_000)
    quiet.hold(run("a", "new"), [row], now=10.0)
    quiet.hold(None, [], now=10.0)  # a run that printed (its log is a file) and hashed nothing
    assert quiet_log(tmp_path, "a") is None  # (held within the turn)
    quiet.sending(10.0, idle=False)  # its broker may judge x.txt by its row as soon as it hears
    assert quiet_log(tmp_path, "a") == run("a", "new").head
    assert rows_in(tmp_path) == [(row[0], 5, row[4])]
    assert quiet.due is None and not quiet.runs and not quiet.rows  # kept once


def test_a_one_shot_pool_holds_them_until_due_idle_or_asked(tmp_path: Path) -> None:
    quiet = pool_side(tmp_path, one_shot=True)
    quiet.hold(run("a", "new"), [], now=100.0)
    quiet.hold(run("b", "params changed"), [], now=100.02)
    assert quiet.due == 100.0 + HOLD_S  # the first one held sets it: the loop wakes for it
    quiet.sending(100.0 + HOLD_S / 2, idle=False)
    assert quiet_log(tmp_path, "a") is None and quiet_log(tmp_path, "b") is None
    quiet.sending(100.0 + HOLD_S, idle=False)  # due: both, in one transaction
    assert quiet_log(tmp_path, "a") is not None and quiet_log(tmp_path, "b") is not None
    assert quiet.due is None

    quiet.hold(run("c", "new"), [], now=200.0)
    quiet.sending(200.0, idle=True)  # nothing left to run: the wave's end is not held up
    assert quiet_log(tmp_path, "c") is not None
    quiet.hold(run("d", "new"), [], now=300.0)
    quiet.keep()  # its exit, or a decision that may restore (it reads the run's line)
    assert quiet_log(tmp_path, "d") is not None


def test_a_stages_held_line_is_kept_before_its_next_result_is_handled(tmp_path: Path) -> None:
    quiet = pool_side(tmp_path, one_shot=True)
    quiet.hold(run("s", "first"), [], now=0.0)
    quiet.before_result("t")  # another stage's result: nothing kept
    assert quiet_log(tmp_path, "s") is None
    quiet.before_result("s")  # its next run's log may be a file: this line must come before
    head = quiet_log(tmp_path, "s")
    assert head is not None and head.startswith(b"# s: ran (first)")
    quiet.hold(run("s", "second"), [], now=1.0)
    quiet.keep()
    head = quiet_log(tmp_path, "s")
    assert head is not None and head.startswith(b"# s: ran (second)")
