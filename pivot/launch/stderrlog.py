"""Log records on standard error (a terminal, or a role's log file), throttled per call
site: a flood of one warning (a peer sending garbage, a file that keeps failing) must
neither bury the terminal nor grow a role's log without bound.

Each call site (file and line) may print BURST records per WINDOW_S; the rest are
counted, and the next record of that site after the window says how many were not
shown.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["BURST", "WINDOW_S", "ThrottledStream", "fatal", "log_to_stderr"]

BURST = 5
WINDOW_S = 10.0
_MAX_SITES = 1000  # call sites are few; the cap only bounds memory whatever happens


class _Site:
    __slots__ = ("hidden", "shown", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.shown = 0
        self.hidden = 0


class ThrottledStream(logging.StreamHandler[TextIO]):
    def __init__(self, stream: TextIO | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(stream)
        self.clock = clock
        self.sites: dict[tuple[str, int], _Site] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "said", False):  # already on stderr as an `error:` line (`fatal`)
            return
        key = (record.pathname, record.lineno)
        now = self.clock()
        site = self.sites.get(key)
        if site is None or now - site.start >= WINDOW_S:
            hidden = site.hidden if site is not None else 0
            if site is None and len(self.sites) >= _MAX_SITES:
                self.sites.pop(next(iter(self.sites)))
            site = self.sites[key] = _Site(now)
            if hidden:
                self._say(record, f"({hidden} more like the next one in the last {WINDOW_S:.0f} s were not shown)")
        if site.shown >= BURST:
            site.hidden += 1
            return
        site.shown += 1
        super().emit(record)

    def _say(self, like: logging.LogRecord, text: str) -> None:
        note = logging.LogRecord(like.name, like.levelno, like.pathname, like.lineno, text, None, None)
        super().emit(note)


def log_to_stderr(level: int, fmt: str | None = None) -> None:
    """logging.basicConfig with a throttled standard error handler; without `fmt`, each
    record as the command line says things: `warning: ...` (a user's terminal, where a
    timestamp and a module name say nothing)."""
    handler = ThrottledStream(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt) if fmt is not None else _Plain())
    logging.basicConfig(level=level, handlers=[handler])


class _Plain(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"


def fatal(log: logging.Logger, text: str) -> None:
    """Why a role exits: in its log records, and as the one `error:` line every Pivot
    command ends with (docs/cli.md), whatever its stderr log level."""
    log.error("%s", text, extra={"said": True})
    print(f"error: {text}", file=sys.stderr, flush=True)
