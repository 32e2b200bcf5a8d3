"""A stage's output captured line by line, bounded (pivot/runtime/worker.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from pivot.runtime.worker import (
    MAX_LINE_CHARS,
    MAX_LOG_CHARS,
    MAX_LOG_LINES,
    _captured,
    _LineCapture,
)


def capture(budget: int = MAX_LOG_CHARS) -> tuple[_LineCapture, list[list[str]], list[int]]:
    sink: list[list[str]] = []
    left = [budget]
    return _LineCapture("stdout", sink, left, threading.Lock()), sink, left


def test_lines_split_across_writes_are_joined_and_a_last_partial_line_is_kept() -> None:
    c, sink, _ = capture()
    for piece in ("hel", "lo\nwor", "ld\n", "\n", "tail"):
        c.write(piece)
    c.close_capture()
    assert sink == [["stdout", "hello"], ["stdout", "world"], ["stdout", ""], ["stdout", "tail"]]


def test_output_without_a_newline_keeps_only_the_first_line_chars_and_holds_no_more() -> None:
    c, sink, _ = capture()
    for _ in range(20_000):  # 20 MB without a single newline
        c.write("x" * 1000)
        assert c.piece_chars <= MAX_LINE_CHARS and len(c.pieces) <= MAX_LINE_CHARS // 1000 + 1
    c.write("\n")
    assert sink == [["stdout", "x" * MAX_LINE_CHARS]]


def test_the_run_keeps_at_most_its_char_budget_across_both_streams_and_says_what_it_dropped() -> None:
    sink: list[list[str]] = []
    left = [10_000]
    lock = threading.Lock()
    out, err = _LineCapture("stdout", sink, left, lock), _LineCapture("stderr", sink, left, lock)
    for _ in range(10):
        out.write("o" * 1000 + "\n")
        err.write("e" * 1000 + "\n")
    out.close_capture()
    err.close_capture()
    kept = [line for _, line in sink if not line.startswith("[pivot:")]
    assert sum(map(len, kept)) <= 10_000 and len(kept) == 10
    assert ["stdout", "[pivot: 5 more lines not kept]"] in sink
    assert ["stderr", "[pivot: 5 more lines not kept]"] in sink


def test_at_most_max_lines_are_kept() -> None:
    c, sink, _ = capture()
    c.write("x\n" * (MAX_LOG_LINES + 10))
    c.close_capture()
    assert len(sink) == MAX_LOG_LINES + 1 and sink[-1] == ["stdout", "[pivot: 10 more lines not kept]"]


def test_what_reaches_file_descriptors_1_and_2_is_captured_too_and_they_are_restored() -> None:
    """C extensions, os.write and subprocesses write to the descriptors, not sys.stdout."""
    before = (os.fstat(1).st_ino, os.fstat(2).st_ino)
    sink: list[list[str]] = []
    with _captured(sink):
        print("from print")
        os.write(1, b"from os.write\n")
        os.write(2, b"to fd 2 \xff\n")  # not UTF-8: replaced, never an error
        subprocess.run([sys.executable, "-c", "print('from a child'); import sys; sys.stderr.write('child err')"], check=True)
    assert (os.fstat(1).st_ino, os.fstat(2).st_ino) == before
    assert ["stdout", "from print"] in sink
    assert ["stdout", "from os.write"] in sink
    assert ["stderr", "to fd 2 \ufffd"] in sink
    assert ["stdout", "from a child"] in sink
    assert ["stderr", "child err"] in sink


def test_a_grandchild_that_keeps_the_descriptors_does_not_hold_the_end_of_the_stage(tmp_path: Path) -> None:
    said = tmp_path / "said"
    sink: list[list[str]] = []
    with _captured(sink):
        child = subprocess.Popen([
            sys.executable, "-c",
            f"import pathlib, time; print('early', flush=True); pathlib.Path({str(said)!r}).touch(); time.sleep(30)",
        ])
        deadline = time.monotonic() + 10
        while not said.exists():
            assert time.monotonic() < deadline, "the child never said it printed"
            time.sleep(0.01)
    # Over while the child still holds its copy of the descriptors; what it printed is in.
    assert child.poll() is None
    assert ["stdout", "early"] in sink
    child.kill()
    child.wait()


def test_output_of_c_code_buffered_by_libc_is_in_the_stage_that_printed_it() -> None:
    import ctypes

    sink: list[list[str]] = []
    with _captured(sink):
        ctypes.CDLL(None).printf(b"from C, no newline flush")  # buffered: stdout is a file
    assert ["stdout", "from C, no newline flush"] in sink
