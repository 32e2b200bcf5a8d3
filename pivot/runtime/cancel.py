"""Cancelling one running stage without stopping its worker process.

The pool writes a marker file for the attempt, then sends the worker SIGUSR1. The
worker's handler raises `StageCancelled` in the stage's code only when the marker of the
attempt it is running exists: a signal meant for an attempt that already ended (the
worker has moved on to another stage) is ignored. The window is the stage function
itself: a signal before it is caught by the marker check on entry, and one after it
(while the outputs are committed) is too late, so the stage's real result stands.

Why not kill the worker: every stage in flight fails when one worker dies, so the
stages running beside the cancelled one would be lost too. A stage stuck in native code
does not see the signal until it returns to Python; the pool then kills its worker
after `HARD_KILL_S` (pivot/launch/limits.py).

While the stage's code runs, the worker's pid is also in `writing_path(pid_file)`: the
stage's old outputs were removed before (they are in the cache), and the worker commits
or discards what is there after, so in between those paths hold this attempt's partial
work. A worker that dies there (the pool's hard kill, the OOM killer, a segfault) cannot
discard it; its executor does (workers/executors.py), once that pid is dead.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

__all__ = [
    "CANCEL_SUFFIX", "WRITING_SUFFIX", "StageCancelled", "arm", "cancellable", "marker_path", "request_cancel", "writer",
    "writing_path",
]

SIGNAL = signal.SIGUSR1


class StageCancelled(BaseException):
    """Raised in a stage's code when the pool cancels it. A BaseException, like
    KeyboardInterrupt, so that a stage's own `except Exception` does not swallow it."""


CANCEL_SUFFIX = ".cancel"
WRITING_SUFFIX = ".writing"


def marker_path(pid_file: Path) -> Path:
    return pid_file.with_name(pid_file.name + CANCEL_SUFFIX)


def writing_path(pid_file: Path) -> Path:
    return pid_file.with_name(pid_file.name + WRITING_SUFFIX)


def writer(pid_file: Path) -> int:
    """The pid of the worker whose stage's code runs (or ran when it died) for the attempt
    of `pid_file`, or 0: it never began, or it ended and its worker settled the outputs."""
    try:
        return int(writing_path(pid_file).read_text())
    except (OSError, ValueError):  # a worker killed while writing it never got that far
        return 0


def request_cancel(pid_file: Path) -> int:
    """Pool side: ask the worker running the attempt of `pid_file` to stop it. Returns
    the worker's pid, or 0 when it has not started the attempt yet (the marker stops it
    on entry)."""
    marker_path(pid_file).write_text("cancel\n")
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, SIGNAL)
    return pid


_current: str | None = None  # the marker of the attempt whose code runs now


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _current is not None and os.path.exists(_current):
        raise StageCancelled()


def arm() -> None:
    """Worker side, before its pid file is written: from then on the pool may signal it,
    and the signal's default action would kill the process. Set again only when a stage
    changed it: `signal.signal` costs 2 % of a small stage's time in its worker."""
    if signal.getsignal(SIGNAL) is not _on_signal:
        signal.signal(SIGNAL, _on_signal)


@contextmanager
def cancellable(pid_file: str | os.PathLike[str] | None) -> Iterator[None]:
    """Worker side (after `arm`): run the stage's code so that `request_cancel` can stop
    it. Without a pid file (`pivot run --foreground`) nothing can cancel it."""
    global _current
    if pid_file is None:
        yield
        return
    # Strings, not paths: every stage of a worker comes here (pathlib's joins and parses
    # were a quarter of a worker's own Python time).
    pid = os.fspath(pid_file)
    marker = pid + CANCEL_SUFFIX
    if os.path.exists(marker):  # cancelled before the stage's code began
        raise StageCancelled()
    writing = pid + WRITING_SUFFIX
    with contextlib.suppress(OSError):  # a help to clean up after a death, not a condition
        try:
            # The pid file holds this worker's pid already (the worker wrote it as the
            # attempt began, and nothing rewrites it): a second name for it, no new file.
            os.link(pid, writing)
        except OSError:
            with open(writing, "w") as f:
                f.write(str(os.getpid()))
    _current = marker
    try:
        yield
    finally:
        _current = None
        # Gone before the worker commits the outputs: one that dies committing them leaves
        # a result (or part of one, which the next run checks), not partial work.
        with contextlib.suppress(OSError):
            os.unlink(writing)
