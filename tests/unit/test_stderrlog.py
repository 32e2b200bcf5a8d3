"""Log records on standard error are throttled per call site (pivot/launch/stderrlog.py)."""

from __future__ import annotations

import io
import logging

from pivot.launch.stderrlog import BURST, WINDOW_S, ThrottledStream


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, line: int, *args: object) -> logging.LogRecord:
    return logging.LogRecord("broker.service", logging.WARNING, "/x/service.py", line, msg, args, None)


def handler() -> tuple[ThrottledStream, io.StringIO, Clock]:
    out, clock = io.StringIO(), Clock()
    h = ThrottledStream(out, clock=clock)
    h.setFormatter(logging.Formatter("%(message)s"))
    return h, out, clock


def test_a_flood_from_one_call_site_shows_a_burst_then_says_how_many_were_hidden() -> None:
    h, out, clock = handler()
    for i in range(200):
        h.emit(record("dropped message %d", 10, i))  # each one's text differs: the site counts
    assert out.getvalue().splitlines() == [f"dropped message {i}" for i in range(BURST)]
    clock.now += WINDOW_S
    h.emit(record("dropped message %d", 10, 200))
    assert out.getvalue().splitlines()[BURST:] == [
        f"({200 - BURST} more like the next one in the last {WINDOW_S:.0f} s were not shown)",
        "dropped message 200",
    ]


def test_other_call_sites_are_not_held_back_by_a_flood() -> None:
    h, out, clock = handler()
    for _ in range(50):
        h.emit(record("flood", 10))
    h.emit(record("something else", 11))
    assert out.getvalue().splitlines()[-1] == "something else"
    clock.now += WINDOW_S / 2
    h.emit(record("flood", 10))  # still the same window: hidden
    assert out.getvalue().splitlines().count("flood") == BURST
