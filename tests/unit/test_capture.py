"""A stage's output captured line by line, bounded (pivot/runtime/worker.py)."""

from __future__ import annotations

from pivot.runtime.worker import MAX_LINE_CHARS, MAX_LOG_CHARS, MAX_LOG_LINES, _LineCapture


def capture(budget: int = MAX_LOG_CHARS) -> tuple[_LineCapture, list[list[str]], list[int]]:
    sink: list[list[str]] = []
    left = [budget]
    return _LineCapture("stdout", sink, left), sink, left


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
    out, err = _LineCapture("stdout", sink, left), _LineCapture("stderr", sink, left)
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
