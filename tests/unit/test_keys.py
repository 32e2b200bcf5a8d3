"""Key presses for the live view, read from a real pseudo-terminal."""

from __future__ import annotations

import io
import os
import termios
import time

from pivot.cli.keypress import KeyReader


def test_keys_arrive_one_by_one_and_the_terminal_is_restored() -> None:
    master, slave = os.openpty()
    stream = os.fdopen(slave, "r")
    try:
        before = termios.tcgetattr(slave)
        with KeyReader(stream) as keys:
            assert not termios.tcgetattr(slave)[3] & termios.ICANON  # cbreak: no line buffering
            os.write(master, b"pq")
            got: list[str] = []
            deadline = time.monotonic() + 5
            while len(got) < 2 and time.monotonic() < deadline:
                got += keys.pressed()
                if len(got) < 2:
                    keys.keys_wait(0.05)
            assert got == ["p", "q"]
        assert termios.tcgetattr(slave) == before
    finally:
        stream.close()
        os.close(master)


def test_not_a_terminal_gives_no_keys() -> None:
    with KeyReader(io.StringIO("q")) as keys:
        assert keys.pressed() == []
