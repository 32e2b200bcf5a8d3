"""A running stage's output, as it is printed: file descriptors 1 and 2 pointed at the
attempt's own files, which its pool reads while the stage runs (workers/streams.py).

    ATTEMPT.out     what the stage writes to stdout: print, C code, `os.write`, and any
                    subprocess it starts (they inherit the descriptors)
    ATTEMPT.err     the same for stderr
    ATTEMPT.pivot   Pivot's own notes on the attempt (a hand edit saved first, ...),
                    written before the stage's code runs

Files, not pipes: a write never waits for a reader, so a stage (even one stuck in native
code holding the GIL while it prints) is never slowed or blocked by a display, a pool or
a broker that falls behind; and the pool may be on the other side of a shared file
system (a Dask worker's). They are opened append-only: a subprocess and the stage share
no offset to race on.

Python's own stdout is buffered (64 KiB, as when stdout is a file) and flushed at least
every FLUSH_S by a thread of the worker, so that a print is seen within a blink and a
stage that prints a million lines costs what it would printing to a file (a write per
line cost three times as much: docs/benchmarks.md); it is also flushed when the stage
starts a process, so that what it printed before comes first. Its stderr is written per
line, as Python's always is. What a
grandchild that outlives the stage writes later still lands in its files, which the pool
removes with the attempt.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "FLUSH_S", "STREAM_SUFFIXES", "Printed", "captured", "output_file", "output_path", "start_flushing", "write_note",
]

FLUSH_S = 0.05
BUFFER_BYTES = 64 * 1024
# Read by the pool in this order at every look: Pivot's notes come before the lines the
# stage printed after them.
STREAM_SUFFIXES = {"pivot": ".pivot", "stdout": ".out", "stderr": ".err"}


def output_path(pid_file: Path, stream: str) -> Path:
    return Path(output_file(pid_file, stream))


def output_file(pid_file: str | os.PathLike[str], stream: str) -> str:
    """`output_path` as a string, for the worker's every stage (no path to parse)."""
    return os.fspath(pid_file) + STREAM_SUFFIXES[stream]


def write_note(pid_file: str | os.PathLike[str], note: str) -> None:
    """One of Pivot's notes on the attempt, one line, for the pool to publish."""
    line = " ".join(note.splitlines()) + "\n"
    # A note lost is not worth failing the stage.
    with contextlib.suppress(OSError), open(output_file(pid_file, "pivot"), "a", encoding="utf-8") as f:
        f.write(line)


class _Flusher:
    """One thread per worker process that flushes the running stage's Python streams
    every FLUSH_S; it sleeps on an event while no stage runs."""

    def __init__(self) -> None:
        self.streams: list[TextIO] = []
        self.lock = threading.Lock()
        self.running = threading.Event()
        self.thread: threading.Thread | None = None
        self.owner = 0

    def start(self, streams: list[TextIO]) -> None:
        with self.lock:
            self.streams = streams
        if self.thread is None or self.owner != os.getpid():  # a forked child starts its own
            self.owner = os.getpid()
            self.thread = threading.Thread(target=self._loop, name="pivot-flush", daemon=True)
            self.thread.start()
        self.running.set()

    def stop(self) -> None:
        self.running.clear()
        with self.lock:
            self.streams = []

    def before_fork(self) -> None:
        # A fork while this thread flushes would leave the child a stream (and this
        # lock) held by a thread it does not have.
        self.lock.acquire()

    def after_fork_in_parent(self) -> None:
        self.lock.release()

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        self.running = threading.Event()
        self.streams = []
        self.thread = None

    def _loop(self) -> None:
        import signal

        # The cancel signal is the stage's (pivot/runtime/cancel.py), never this thread's.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        while True:
            self.running.wait()
            with self.lock:
                for stream in self.streams:
                    with contextlib.suppress(Exception):  # a stream the stage closed
                        stream.flush()
            time.sleep(FLUSH_S)


_FLUSHER = _Flusher()
os.register_at_fork(before=_FLUSHER.before_fork, after_in_parent=_FLUSHER.after_fork_in_parent,
                    after_in_child=_FLUSHER.after_fork_in_child)


def start_flushing(streams: list[TextIO]) -> None:
    """Flush `streams` every FLUSH_S from now on (a warm script's: pivot/runtime/warm.py)."""
    _FLUSHER.start(streams)


class Printed:
    """Whether the captured body wrote anything to its files (known once it is over)."""

    def __init__(self) -> None:
        self.anything = True  # until the files are seen empty


@contextmanager
def captured(pid_file: str | os.PathLike[str]) -> Iterator[Printed]:
    """Run the body with descriptors 1 and 2, sys.stdout and sys.stderr writing to the
    attempt's files; everything is flushed and restored on the way out, and the value
    says whether the body printed anything."""
    printed = Printed()
    saved_streams = (sys.stdout, sys.stderr)
    for stream in saved_streams:
        with contextlib.suppress(Exception):  # None, or closed by an earlier stage
            stream.flush()
    redirected: list[tuple[int, int]] = []  # (descriptor, its saved copy)
    writers: list[TextIO] = []
    try:
        for fd, stream in ((1, "stdout"), (2, "stderr")):
            target = os.open(output_file(pid_file, stream), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                saved = os.dup(fd)
            except OSError:  # not open in this process: opened for the stage only
                saved = -1
            os.dup2(target, fd)
            os.close(target)
            redirected.append((fd, saved))
            raw = io.FileIO(fd, "w", closefd=False)
            writers.append(io.TextIOWrapper(
                io.BufferedWriter(raw, BUFFER_BYTES), encoding="utf-8", errors="backslashreplace",
                line_buffering=fd == 2,
            ))
        sys.stdout, sys.stderr = writers[0], writers[1]
        _FLUSHER.start(writers)
        _flush_before_spawn()
        yield printed
    finally:
        _FLUSHER.stop()
        for writer in writers:
            with contextlib.suppress(Exception):  # the stage may have closed it
                writer.flush()
        _flush_c_stdio()
        with contextlib.suppress(OSError):
            # The descriptors, not the paths: the files the stage wrote, even if renamed.
            printed.anything = len(redirected) < 2 or any(os.fstat(fd).st_size for fd, _ in redirected)
        sys.stdout, sys.stderr = saved_streams
        for fd, saved in redirected:
            if saved >= 0:
                os.dup2(saved, fd)
                os.close(saved)
            else:
                os.close(fd)


_SPAWNS = frozenset({"subprocess.Popen", "os.system", "os.posix_spawn", "os.spawn", "os.exec", "os.fork"})
_hooked: list[bool] = []


def _flush_before_spawn() -> None:
    """An audit hook (once per process: hooks cannot be removed) that flushes the
    stage's stdout before it starts a process, whose output would otherwise come before
    the lines printed just before it."""
    if _hooked:
        return
    _hooked.append(True)

    def hook(event: str, _args: object) -> None:
        if event in _SPAWNS:
            with _FLUSHER.lock:
                for stream in _FLUSHER.streams:
                    with contextlib.suppress(Exception):
                        stream.flush()

    sys.addaudithook(hook)


def _flush_c_stdio() -> None:
    """C code's stdout is buffered by libc when it is not a terminal: flushed now, so
    that what the stage printed is in its own files, not the next stage's."""
    with contextlib.suppress(OSError, AttributeError):
        if not _LIBC:
            import ctypes

            _LIBC.append(ctypes.CDLL(None))
        _LIBC[0].fflush(None)


_LIBC: list[Any] = []  # this process's C library, loaded once
