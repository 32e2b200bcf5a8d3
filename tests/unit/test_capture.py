"""A stage's output: written to the attempt's files as it is printed
(pivot/runtime/capture.py), read by its pool into live lines and a bounded log
(workers/streams.py)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from pivot.runtime.capture import FLUSH_S, captured, output_path, write_note
from pivot.state.stagelogs import (
    RUN_NOTES,
    QuietRun,
    keep_quiet,
    quiet_head,
    quiet_log,
    running_log_path,
    stage_log_path,
)
from pivot.state.statecache import StateCache
from workers.streams import (
    LINES_PER_TICK,
    MAX_LINE_CHARS,
    AttemptOutput,
    LineSplitter,
    LogSegments,
)


def read(pid_file: Path, stream: str) -> bytes:
    return output_path(pid_file, stream).read_bytes()


# --- the worker's side -----------------------------------------------------------------


def test_print_c_code_os_write_and_subprocesses_all_land_in_the_attempts_files(tmp_path: Path) -> None:
    pid_file = tmp_path / "a1"
    before = (os.fstat(1).st_ino, os.fstat(2).st_ino, sys.stdout, sys.stderr)
    with captured(pid_file):
        print("from print")
        os.write(1, b"from os.write\n")
        os.write(2, b"to fd 2 \xff\n")
        subprocess.run([sys.executable, "-c", "print('from a child'); import sys; sys.stderr.write('child err')"],
                       check=True)
        import ctypes

        ctypes.CDLL(None).printf(b"from C, no newline flush")  # buffered by libc: stdout is a file
    assert (os.fstat(1).st_ino, os.fstat(2).st_ino, sys.stdout, sys.stderr) == before
    out, err = read(pid_file, "stdout"), read(pid_file, "stderr")
    for line in (b"from print\n", b"from os.write\n", b"from a child\n", b"from C, no newline flush"):
        assert line in out, out
    assert b"to fd 2 \xff\n" in err and b"child err" in err


def test_a_print_reaches_the_file_within_the_flush_period_while_the_stage_runs(tmp_path: Path) -> None:
    """Buffered like a file (a million prints cost what they cost into a file), but a
    line is seen within a blink: the worker's flushing thread."""
    pid_file = tmp_path / "a1"
    with captured(pid_file):
        print("epoch 1")  # no flush=True: what a stage usually does
        deadline = time.monotonic() + 10 * FLUSH_S + 2
        while b"epoch 1" not in read(pid_file, "stdout"):
            assert time.monotonic() < deadline, "the print never reached the file while the stage ran"
            time.sleep(0.005)


def test_a_grandchild_that_keeps_the_descriptors_does_not_hold_the_end_of_the_stage(tmp_path: Path) -> None:
    said = tmp_path / "said"
    pid_file = tmp_path / "a1"
    with captured(pid_file):
        child = subprocess.Popen([
            sys.executable, "-c",
            f"import pathlib, time; print('early', flush=True); pathlib.Path({str(said)!r}).touch(); time.sleep(30)",
        ])
        deadline = time.monotonic() + 10
        while not said.exists():
            assert time.monotonic() < deadline, "the child never said it printed"
            time.sleep(0.01)
    try:
        assert child.poll() is None  # over while the child still holds its copy of the descriptors
        assert b"early\n" in read(pid_file, "stdout")
    finally:
        child.kill()
        child.wait()


def test_notes_are_one_line_each(tmp_path: Path) -> None:
    write_note(tmp_path / "a1", "saved\nthe edit")
    assert read(tmp_path / "a1", "pivot") == b"saved the edit\n"


# --- the pool's side: lines ------------------------------------------------------------


def test_lines_split_across_reads_are_joined_and_the_line_in_flight_is_held() -> None:
    s = LineSplitter()
    got: list[str] = []
    for piece in (b"hel", b"lo\nwor", b"ld\n", b"\n", b"tail"):
        lines, skipped = s.feed(piece, 100)
        assert skipped == 0
        got += lines
    assert got == ["hello", "world", ""]
    assert s.partial() == "tail" and s.flush() == "tail" and s.flush() is None


def test_a_progress_bar_is_its_latest_state_not_every_update() -> None:
    s = LineSplitter()
    s.feed(b"".join(b"\r%3d%%|" % i + b"#" * (i // 10) for i in range(100)), 100)
    assert s.partial() == " 99%|#########"
    lines, _ = s.feed(b"\r100%|##########\n", 100)
    assert lines == ["100%|##########"]
    lines, _ = s.feed(b"windows line\r\n", 100)
    assert lines == ["windows line"]


def test_a_burst_keeps_its_last_lines_and_counts_the_others_without_splitting_them_all() -> None:
    s = LineSplitter()
    data = b"".join(b"line %d\n" % i for i in range(100_000))
    lines, skipped = s.feed(data, 3)
    assert lines == ["line 99997", "line 99998", "line 99999"] and skipped == 99_997


def test_a_line_without_end_is_held_bounded() -> None:
    s = LineSplitter()
    for _ in range(5_000):  # 20 MB without a newline
        s.feed(b"x" * 4000, 100)
        assert len(s.held) <= 4 * MAX_LINE_CHARS
    lines, _ = s.feed(b"\n", 100)
    assert lines == ["x" * MAX_LINE_CHARS]


# --- the pool's side: the log on disk --------------------------------------------------


def test_the_log_marks_stderr_and_notes_and_never_glues_two_streams_on_one_line(tmp_path: Path) -> None:
    log = LogSegments(tmp_path / "s.log.part", cap=10_000)
    log.write("pivot", b"saved an edit\n")
    log.write("stdout", b"a\nb")
    log.write("stderr", b"warn 1\nwarn 2\n")
    log.write("stdout", b"c\n")
    [part] = log.parts()
    assert part.read_bytes() == b"# pivot: saved an edit\na\n! warn 1\n! warn 2\nbc\n"


def test_a_line_of_one_stream_never_lands_in_the_middle_of_the_others_unfinished_line(tmp_path: Path) -> None:
    """A stdout line printed while a stderr progress bar had no newline yet used to cut
    the bar's line in two."""
    log = LogSegments(tmp_path / "s.log.part", cap=10_000)
    log.write("stderr", b"\r 10%|#")
    log.write("stdout", b"epoch 1\n")
    log.write("stderr", b"\r 20%|##")
    log.flush()
    assert log.path.read_bytes() == b"epoch 1\n"  # the bar's line waits for its end
    log.write("stdout", b"epoch 2\nhalf")
    log.write("stderr", b"\r100%|####\n")
    [part] = log.parts()  # the attempt is over: its unfinished line is kept, ended
    assert part.read_bytes() == b"epoch 1\nepoch 2\n! \r 10%|#\r 20%|##\r100%|####\nhalf\n"


def test_a_long_unfinished_line_is_held_as_its_latest_state_only(tmp_path: Path) -> None:
    from workers.streams import HOLD_BYTES

    log = LogSegments(tmp_path / "s.log.part", cap=10 * HOLD_BYTES)
    n = HOLD_BYTES // 3  # a progress bar rewritten 20,000 times (twice what is held), never ended
    for i in range(n):
        log.write("stderr", b"\r%05d" % i)
        assert len(log.held["stderr"]) <= HOLD_BYTES
    log.write("stdout", b"done\n")
    log.write("stderr", b"\n")
    [part] = log.parts()
    assert part.read_bytes() == b"done\n! \r%05d\n" % (n - 1)


def test_the_log_keeps_the_last_part_up_to_its_cap_and_counts_what_it_cut(tmp_path: Path) -> None:
    log = LogSegments(tmp_path / "s.log.part", cap=100_000)
    for i in range(20_000):
        log.write("stdout", b"%09d\n" % i)  # 200,000 bytes in all
    parts = log.parts()
    kept = b"".join(p.read_bytes() for p in parts)
    assert 50_000 <= len(kept) <= 100_000
    assert kept.endswith(b"000019999\n") and log.cut == 200_000 - len(kept)
    assert kept.startswith(b"%09d\n" % (20_000 - len(kept) // 10))  # cut at a line: whole lines kept


def test_an_attempt_streams_its_lines_and_its_log_becomes_the_stages(tmp_path: Path) -> None:
    root = tmp_path / "project"
    pid_file = tmp_path / "run" / "a1"
    pid_file.parent.mkdir()
    out = AttemptOutput(root, "train", pid_file, run_log=tmp_path / "runlog")
    write_note(pid_file, "saved hand-edited output")
    with captured(pid_file):
        print("epoch 1")
        sys.stdout.flush()
        lines, more = out.look(0.0)
        assert (lines, more) == ([("pivot", "saved hand-edited output", False), ("stdout", "epoch 1", False)], False)
        assert running_log_path(root, "train").read_bytes().endswith(b"epoch 1\n")
        sys.stderr.write("\r 50%|##")
        sys.stderr.flush()
        lines, _ = out.look(1.0)
        assert lines == [("stderr", " 50%|##", True)]
        sys.stderr.write("\r100%|####\n")
        print("done")
    lines, more = out.look(2.0, final=True)
    assert lines == [("stdout", "done", False), ("stderr", "100%|####", False)] and not more
    out.finish("ran", "first run", None)
    out.remove_files()
    log = stage_log_path(root, "train").read_bytes().decode()  # \r kept as written
    assert log.startswith("# train: ran (first run) at ")
    # Whole lines: the progress bar's goes in once it ends, after the line printed meanwhile.
    assert log.split("\n")[1:] == [
        "# pivot: saved hand-edited output", "epoch 1", "done", "! \r 50%|##\r100%|####", ""]
    assert (tmp_path / "runlog").read_bytes().decode() == log
    assert not running_log_path(root, "train").exists() and not output_path(pid_file, "stdout").exists()


def test_a_fast_printer_reaches_the_displays_as_its_last_lines_and_a_note_of_the_rest(tmp_path: Path) -> None:
    pid_file = tmp_path / "a1"
    out = AttemptOutput(tmp_path, "s", pid_file)
    with captured(pid_file):
        for i in range(LINES_PER_TICK * 5):
            print(f"line {i}")
    lines, _ = out.look(0.0, final=True)
    assert lines[0] == ("pivot", f"{LINES_PER_TICK * 4} stdout lines not shown live (printed faster than displays "
                                 "follow); `pivot logs s` has them all", False)
    assert [t for _, t, _ in lines[1:]] == [f"line {i}" for i in range(LINES_PER_TICK * 4, LINES_PER_TICK * 5)]
    out.finish("ran", "r", None)
    assert stage_log_path(tmp_path, "s").read_text().count("\nline ") == LINES_PER_TICK * 5


def test_a_log_over_its_cap_says_so_live_and_in_the_log(tmp_path: Path) -> None:
    pid_file = tmp_path / "a1"
    out = AttemptOutput(tmp_path, "s", pid_file, cap=200_000)
    with captured(pid_file):
        for i in range(50_000):
            print(f"{i:09d}")  # 500 kB
    lines, _ = out.look(0.0, final=True)
    assert any(s == "pivot" and "its log reached its cap" in t for s, t, _ in lines), lines
    out.finish("failed", "boom", "Traceback\n  ValueError")
    log = stage_log_path(tmp_path, "s").read_text().splitlines()
    assert log[0].startswith("# s: failed (boom)") and log[1].startswith("# pivot: the first ")
    assert log[-4:] == ["000049999", "# traceback:", "Traceback", "  ValueError"]
    assert len("\n".join(log)) <= 200_000 + 1000


def test_lines_not_shown_live_are_not_said_to_be_all_in_a_log_that_was_cut(tmp_path: Path) -> None:
    pid_file = tmp_path / "a1"
    out = AttemptOutput(tmp_path, "big", pid_file, cap=200_000)
    with captured(pid_file):
        for i in range(50_000):
            print(f"{i:09d}")  # 500 kB: more than the cap, and more lines than a look sends
    lines, _ = out.look(0.0, final=True)
    [note] = [t for s, t, _ in lines if s == "pivot" and "not shown live" in t]
    assert "has them all" not in note, note
    assert "`pivot logs big` has the recent ones: its log keeps only the last part of the output" in note, note
    out.finish("ran", "r", None)


def test_an_attempt_whose_code_never_ran_leaves_the_last_log(tmp_path: Path) -> None:
    stage_log_path(tmp_path, "s").parent.mkdir(parents=True)
    stage_log_path(tmp_path, "s").write_text("# s: ran (before)\n")
    out = AttemptOutput(tmp_path, "s", tmp_path / "a1")
    assert out.look(0.0, final=True) == ([], False)
    out.finish("failed", "pipeline.py does not import", None)
    assert stage_log_path(tmp_path, "s").read_text() == "# s: ran (before)\n"
    assert not running_log_path(tmp_path, "s").exists()


def test_a_log_that_cannot_be_written_is_said_once_and_the_lines_still_go_live(tmp_path: Path) -> None:
    (tmp_path / ".pivot" / "logs").mkdir(parents=True)
    (tmp_path / ".pivot" / "logs" / "stages").write_text("in the way")  # as a read-only disk would
    pid_file = tmp_path / "a1"
    out = AttemptOutput(tmp_path, "s", pid_file)
    with captured(pid_file):
        print("one")
        sys.stdout.flush()
        first, _ = out.look(0.0)
        print("two")
    last, _ = out.look(1.0, final=True)
    notes = [t for s, t, _ in first + last if s == "pivot"]
    assert len(notes) == 1 and notes[0].startswith("its log could not be written ("), notes
    assert [t for s, t, _ in first + last if s == "stdout"] == ["one", "two"]
    out.finish("ran", "r", None)  # nothing to keep, nothing raised


def test_a_quiet_runs_log_is_kept_in_the_state_database(tmp_path: Path) -> None:
    assert quiet_log(tmp_path, "s") is None  # no database yet: none made by asking
    assert not (tmp_path / ".pivot" / "state.db").exists()
    row = (str(tmp_path / "out.txt"), 7, 3, 1_000, "d" * 32, 2_000)
    with StateCache(tmp_path / ".pivot" / "state.db") as notes:
        run = QuietRun("s", quiet_head("s", "params changed"), "params changed", "k1", None)
        keep_quiet(notes, tmp_path, [run], [row])
        head = quiet_log(tmp_path, "s")
        assert head is not None and head.startswith(b"# s: ran (params changed) at ") and head.count(b"\n") == 1
        assert notes.note(RUN_NOTES + "k1") == head  # for the run cache: restored with it
    with sqlite3.connect(tmp_path / ".pivot" / "state.db") as db:  # the rows its workers hashed, with it
        assert db.execute("SELECT path, digest FROM file_state_v1").fetchall() == [(row[0], row[4])]
    assert not stage_log_path(tmp_path, "s").exists()  # a file only when the database cannot keep it


def test_quiet_runs_whose_logs_cannot_be_kept_have_them_written_as_files(tmp_path: Path) -> None:
    log = stage_log_path(tmp_path, "s")
    log.parent.mkdir(parents=True)
    log.write_text("# s: ran (before)\n")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the database's folder should be")
    run_log = tmp_path / "k1.log"
    runs = [QuietRun("s", quiet_head("s", "params changed"), "params changed", "k1", run_log),
            QuietRun("t", quiet_head("t", "new"), "new", None, None)]
    keep_quiet(StateCache(blocker / "state.db"), tmp_path, runs)
    assert log.read_text().startswith("# s: ran (params changed) at ")
    assert run_log.read_text() == log.read_text()  # beside its run-cache entry too
    assert stage_log_path(tmp_path, "t").read_text().startswith("# t: ran (new) at ")
