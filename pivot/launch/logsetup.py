"""Structured log records, one bounded JSON-lines file per role under .pivot/logs/.

    {"time": "...", "role": "pool", "pid": 123, "level": "WARNING", "event": "...",
     "stage": "fit", "wave": 3}

`stage` and `wave` appear when a record passes them as `extra=`. The files rotate at
1 MiB (one old file kept). `pivot logs --role ROLE` shows them; `pivot -v` also shows
the CLI and broker records on stderr.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
from pathlib import Path

__all__ = ["HeldRecords", "configure", "records_path"]

MAX_BYTES = 1 << 20
HOLD_MAX = 500  # records held at most


def records_path(root: Path, role: str) -> Path:
    return root / ".pivot" / "logs" / f"{role}.jsonl"


class _JsonFormatter(logging.Formatter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "role": self.role,
            "pid": os.getpid(),
            "level": record.levelname,
            "event": record.getMessage(),
            "logger": record.name,
        }
        for key in ("stage", "wave", "attempt"):
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class HeldRecords(logging.handlers.RotatingFileHandler):
    """Records below WARNING held until `flush` (a loop that logs every stage calls it
    before it waits): one write for a burst of them, not a write and a stat each. A
    record at WARNING or above writes what is held at once."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, maxBytes=MAX_BYTES, backupCount=1, encoding="utf-8", delay=True)
        self.held: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Formatted when written: a record per stage stays off the pool's path from one
        # stage to the next. Its message is made now, from the arguments as they are.
        try:
            record.msg, record.args = record.getMessage(), None
        except Exception:
            self.handleError(record)
            return
        self.held.append(record)
        if record.levelno >= logging.WARNING or len(self.held) >= HOLD_MAX:
            self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            if not self.held:
                return
            lines = []
            for record in self.held:
                try:
                    lines.append(self.format(record))
                except Exception:
                    self.handleError(record)
            text = "".join(line + "\n" for line in lines)
            self.held.clear()
            if self.stream is None:
                self.stream = self._open()
            if self.stream.tell() + len(text) >= self.maxBytes:
                self.doRollover()
                if self.stream is None:  # (`delay`: not reopened by the rollover)
                    self.stream = self._open()
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # records lost with a full disk do not stop the process
        finally:
            self.release()


def configure(role: str, root: Path, level: int = logging.INFO, *, hold: bool = False) -> HeldRecords | None:
    """Send this process's log records (at `level` and above) to its role's file.
    `hold`: records below WARNING wait for the returned handler's `flush`."""
    path = records_path(root, role)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = HeldRecords(path) if hold else logging.handlers.RotatingFileHandler(
            path, maxBytes=MAX_BYTES, backupCount=1, encoding="utf-8"
        )
    except OSError:
        return None  # a read-only project still runs; records then go nowhere
    handler.setFormatter(_JsonFormatter(role))
    if hold:
        # A record per stage (the pool): no caller frame, thread or process name to
        # look up for it, none of which a record here shows (logging's documented
        # switches; a third of a record's cost).
        logging._srcfile = None
        logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler.setLevel(level)
    top = logging.getLogger()
    for existing in top.handlers:  # stderr keeps the verbosity it was set up with
        if existing.level == logging.NOTSET:
            existing.setLevel(top.level or logging.WARNING)
    top.addHandler(handler)
    if top.level > level or top.level == logging.NOTSET:
        top.setLevel(level)
    return handler if isinstance(handler, HeldRecords) else None
