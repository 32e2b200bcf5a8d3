"""What runs inside a loky worker: import the pipeline, run one stage, record it.

Nothing here touches sockets. The stage's stdout/stderr are captured line by line and
returned with the result; the pool publishes them as log events.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from pivot.errors import (
    MAX_DETAIL_CHARS,
    MAX_REASON_CHARS,
    PipelineError,
    PivotError,
    clip,
    describe_os_error,
)
from pivot.faults import reached
from pivot.runtime.cancel import StageCancelled, arm, cancellable
from pivot.runtime.job import StageJob, StageOutcome
from pivot.runtime.lease import LEASE_NAME, LEASE_S, read_lease
from pivot.runtime.loader import import_pipeline
from pivot.runtime.usertb import user_traceback
from pivot.state.lock import StageLock, write_lock
from pivot.state.outputs import ProjectState, commit, preserve, remove, settle
from pivot.state.stagelogs import keep_log

__all__ = ["run_stage"]

MAX_LOG_LINES = 5000
MAX_LINE_CHARS = 4000
# All lines kept of one run, both streams: its result message must stay far below the
# transport's 16 MiB limit (a larger one is dropped, and the stage would look lost).
MAX_LOG_CHARS = 2_000_000
# Its reason (one line) and traceback are bounded for the same limit (MAX_REASON_CHARS,
# MAX_DETAIL_CHARS): an exception whose message is megabytes long made the result too
# large, and the stage looked lost.


class _LineCapture:
    """A text stream that keeps whole lines, bounded, tagged with their stream name.

    Linear in what is written, however it is cut: a line's pieces are kept in a list (a
    stage printing megabytes without a newline made the old `partial += text` quadratic),
    and only its first MAX_LINE_CHARS characters are kept at all."""

    def __init__(self, stream: str, sink: list[list[str]], budget: list[int], lock: threading.Lock) -> None:
        self.stream = stream
        self.sink = sink
        self.budget = budget  # characters left for every capture of this run (shared)
        self.lock = lock  # ... with the readers of file descriptors 1 and 2 (threads)
        self.pieces: list[str] = []
        self.piece_chars = 0
        self.dropped = 0

    def write(self, text: str) -> int:
        if "\n" not in text:
            self._extend(text)
            return len(text)
        first, *rest = text.split("\n")
        self._extend(first)
        self._keep("".join(self.pieces))
        self.pieces, self.piece_chars = [], 0
        for line in rest[:-1]:
            self._keep(line)
        self._extend(rest[-1])
        return len(text)

    def _extend(self, text: str) -> None:
        room = MAX_LINE_CHARS - self.piece_chars
        if text and room > 0:
            self.pieces.append(text[:room])
            self.piece_chars += min(len(text), room)

    def _keep(self, line: str) -> None:
        line = line[:MAX_LINE_CHARS]
        with self.lock:
            if len(self.sink) < MAX_LOG_LINES and len(line) <= self.budget[0]:
                self.sink.append([self.stream, line])
                self.budget[0] -= len(line)
                return
        self.dropped += 1

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def close_capture(self) -> None:
        if self.pieces:
            self._keep("".join(self.pieces))
            self.pieces, self.piece_chars = [], 0
        if self.dropped:
            self.sink.append([self.stream, f"[pivot: {self.dropped} more lines not kept]"])


@contextmanager
def _captured(sink: list[list[str]]) -> Iterator[None]:
    """What the stage writes while it runs: through sys.stdout and sys.stderr, and to file
    descriptors 1 and 2 themselves (C extensions, `os.write`, a subprocess inheriting
    them), which used to go to the pool's log unbounded (100 MB from one stage)."""
    saved: tuple[TextIO, TextIO] = (sys.stdout, sys.stderr)
    budget, lock = [MAX_LOG_CHARS], threading.Lock()
    out, err = _LineCapture("stdout", sink, budget, lock), _LineCapture("stderr", sink, budget, lock)
    fds = _FdCapture(sink, budget, lock)
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        fds.close()
        out.close_capture()
        err.close_capture()


class _FdCapture:
    """File descriptors 1 and 2 pointed, for the duration of a stage, at files of this
    worker process (opened once, unlinked, append-only), read when the stage ends.

    Files, not pipes: a write never waits for a reader, so a stage stuck in native code
    holding the GIL while it prints cannot block on a full pipe, and no thread is needed
    (two reader threads a stage cost ~1 ms). What a grandchild that outlives the stage
    writes later lands in the next stage's capture or is cut. Bounded: at most
    READ_BYTES of each is read, and the files are emptied after every stage."""

    READ_BYTES = 4 * MAX_LOG_CHARS
    _files: dict[int, int] = {}  # descriptor (1, 2) -> this process's capture file
    _owner = 0  # the process that opened them (a forked child opens its own)

    def __init__(self, sink: list[list[str]], budget: list[int], lock: threading.Lock) -> None:
        self.parts: list[tuple[int, int, int, _LineCapture]] = []
        for fd, stream in ((1, "stdout"), (2, "stderr")):
            with contextlib.suppress(OSError, ValueError, AttributeError):  # a closed stream stays
                (sys.__stdout__ if fd == 1 else sys.__stderr__).flush()  # type: ignore[union-attr]
            try:
                saved = os.dup(fd)
                file = self._file(fd)
            except OSError:
                continue  # not open in this process, or no temp folder: nothing captured
            os.dup2(file, fd)
            self.parts.append((fd, saved, file, _LineCapture(stream, sink, budget, lock)))

    @classmethod
    def _file(cls, fd: int) -> int:
        file = cls._files.get(fd)
        if file is None or os.getpid() != cls._owner:
            import fcntl
            import tempfile

            file, path = tempfile.mkstemp(prefix=f"pivot-capture-{os.getpid()}-")
            os.unlink(path)
            fcntl.fcntl(file, fcntl.F_SETFL, os.O_APPEND)  # writers share no offset to race on
            cls._files[fd], cls._owner = file, os.getpid()
        return file

    def close(self) -> None:
        _flush_c_stdio()
        for fd, saved, file, capture in self.parts:
            os.dup2(saved, fd)
            os.close(saved)
            size = os.fstat(file).st_size
            data = os.pread(file, min(size, self.READ_BYTES), 0)
            os.ftruncate(file, 0)
            capture.write(data.decode("utf-8", "replace"))
            if size > self.READ_BYTES:
                capture.write(f"\n[pivot: {size - self.READ_BYTES} more bytes not read]")
            capture.close_capture()


def _flush_c_stdio() -> None:
    """C code's stdout is buffered by libc when it is not a terminal: flushed now, so
    that what the stage printed is in its capture, not the next stage's."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None).fflush(None)


_STATE: dict[str, ProjectState] = {}


def _changed_deps(state: ProjectState, root: Path, before: dict[str, str]) -> list[str]:
    """File dependencies whose stat no longer matches what was hashed when the stage was
    decided: it (or someone) changed what it reads while it ran. Stat only, recording
    nothing: the engine's own check decides whether the content changed. Folders are
    not looked into."""
    changed = []
    for dep, digest in sorted(before.items()):
        path = root / dep
        if path.is_file() and not state.hashes.still(path, digest):
            changed.append(dep)
    return changed


def _discard(root: Path, outs: list[str]) -> None:
    """Remove what a run that did not succeed left of its outputs."""
    for out in outs:
        with contextlib.suppress(OSError):  # its own error says the rest
            remove(root / out)


def _state(root: Path) -> ProjectState:
    """One set of stores per worker process (and root), reused across stages."""
    key = str(root)
    if key not in _STATE:
        _STATE[key] = ProjectState.open(root)
    return _STATE[key]


POOL_CHECK_S = 0.2
STOPPED_POOL_S = 3.0  # the broker's liveness window: by then it runs the stage elsewhere
_watched: list[int] = []


def watch_pool(pool_pid: int, lease: Path | None = None) -> None:
    """Fencing from inside: a stage must not outlive its pool. A pool killed outright
    (SIGKILL) leaves its workers running; one stopped (SIGSTOP) or hung (its loop stuck
    in native code holding the GIL, so that no thread of it runs: its `lease` file, which
    its loop rewrites every second, stays as it was while the process runs) is given up
    by the broker, which runs its stages elsewhere. Either way this worker exits, so two
    attempts of a stage never run side by side. One watching thread per worker process."""
    if _watched == [pool_pid]:
        return
    _watched[:] = [pool_pid]
    import threading

    from pivot.launch.procs import is_alive, is_stopped

    # The worker's own standard error: while a stage runs, descriptor 2 is its capture.
    try:
        err = os.dup(2)
    except OSError:
        err = -1

    def fence(why: str) -> None:
        with contextlib.suppress(OSError):
            os.write(err, f"pivot worker {os.getpid()}: its pool (pid {pool_pid}) {why}: exiting\n".encode())
        os._exit(70)

    def watch() -> None:
        # The cancel signal is the stage's (pivot/runtime/cancel.py): a stage that
        # blocks it, or sits in native code, must not have it run here instead.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        stopped_since: float | None = None
        seen = read_lease(lease)
        unrenewed = 0.0  # time the pool ran (not stopped) without renewing its lease
        last = time.monotonic()
        while _watched == [pool_pid]:
            time.sleep(POOL_CHECK_S)
            now = time.monotonic()
            step, last = now - last, now
            if not is_alive(pool_pid):
                fence("is gone")
            if is_stopped(pool_pid):
                stopped_since = stopped_since or now
                if now - stopped_since > STOPPED_POOL_S:
                    fence(f"has been stopped for {STOPPED_POOL_S:.0f} s")
                continue
            stopped_since = None
            renewed = read_lease(lease)
            if renewed != seen:
                seen, unrenewed = renewed, 0.0
            elif lease is not None:
                unrenewed += step
                if unrenewed > LEASE_S:
                    fence(f"runs but has not renewed its lease for {LEASE_S:.0f} s (hung)")

    threading.Thread(target=watch, name="pool-watch", daemon=True).start()


def run_stage(job: StageJob) -> StageOutcome:
    """Run the stage described by `job` (a pool's, or `pivot run --foreground`'s) and
    record it on success: the outputs are in the content cache, the lock names them and
    the run cache maps this run's inputs to them."""
    root = Path(job.root)
    name = job.stage
    if job.pool_pid:
        watch_pool(job.pool_pid, Path(job.pid_file).parent / LEASE_NAME if job.pid_file else None)
    pid_file = Path(job.pid_file) if job.pid_file else None
    if pid_file is not None:
        # The pool learns which stage a dying worker was running, and whom to signal to
        # cancel it.
        arm()
        pid_file.write_text(str(os.getpid()))
    logs: list[list[str]] = []
    notes: list[str] = []
    started = time.perf_counter()
    executed = False  # the stage's own code ran: its output is kept for `pivot logs`

    def outcome(
        status: str, code: str, reason: str, error: str | None = None, details: dict[str, Any] | None = None
    ) -> StageOutcome:
        reason = clip(reason, MAX_REASON_CHARS)
        error = None if error is None else clip(error, MAX_DETAIL_CHARS)
        if executed:
            keep_log(root, name, status, reason, error, logs, state.runs.log_path(job.run_key) if job.run_key else None)
            if status != "ran":
                settle(state, outs)  # what it deleted or half wrote starts no wave
        return StageOutcome(
            status, code, reason, time.perf_counter() - started, error,
            details if details is not None else (job.details if status == "ran" else {}),
            [(stream, line) for stream, line in logs], notes,
        )

    try:
        import_pipeline(root)
    except PipelineError as exc:
        return outcome("failed", "failed", str(exc), exc.detail)
    from pivot.pipeline.stage import registered

    decl = registered().get(name)
    if decl is None:
        return outcome(
            "failed", "failed", f"stage {name!r} is no longer defined in pipeline.py"
        )
    state = _state(root)
    outs: list[str] = list(job.outs)
    # Nothing is lost: what is about to be deleted goes to the cache first. Then the old
    # outputs go, so a stage that does not write one cannot pass on the previous file.
    # The previous lock stays until this run succeeds: it still describes the last good
    # run (whose outputs `pivot checkout` can bring back), never this one.
    try:
        notes.extend(s.note() for s in preserve(state, outs, job.recorded_outs))
    except (PivotError, OSError) as exc:
        msg = f"not run: could not save its current outputs to the cache first: {exc}"
        return outcome("failed", "failed", msg)
    try:
        for out in outs:
            remove(root / out)
    except OSError as exc:  # a read-only mount, a permission: said, the stage not run
        return outcome("failed", "failed", f"not run: {describe_os_error(exc, root)}")
    executed = True
    try:
        if job.foreground:  # `pivot run --foreground`: the terminal is the stage's
            decl.func(**job.params)
        else:
            with _captured(logs), cancellable(pid_file):
                decl.func(**job.params)
    except StageCancelled:
        _discard(root, outs)  # partial: nothing of this run is kept
        return outcome("cancelled", "cancelled", "cancelled while running")
    except BaseException as exc:
        # What a failed run wrote is partial (and may fill the disk): it goes. The last
        # good outputs stay in the cache (`pivot checkout` brings them back).
        _discard(root, outs)
        why = describe_os_error(exc, root) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        return outcome("failed", "failed", why, user_traceback(exc))
    not_folders = [out for out in outs if out.endswith("/") and (root / out.rstrip("/")).is_file()]
    if not_folders:
        # Stored as a file, it would never match its declaration: stale forever.
        _discard(root, outs)
        out = not_folders[0]
        return outcome(
            "failed", "failed",
            f"declared output {out} is a folder (its trailing /) but the stage wrote a file there: "
            f"write a folder, or declare {out.rstrip('/')!r} without the /",
            details={"paths": not_folders},
        )
    try:
        stored = commit(state, outs)
    except (PivotError, OSError) as exc:
        _discard(root, outs)
        why = describe_os_error(exc, root / ".pivot" / "cache") if isinstance(exc, OSError) else str(exc)
        return outcome("failed", "failed", f"could not store its outputs in the cache: {why}")
    reached("committed")
    missing = [out for out, digest in stored.items() if digest is None]
    if missing:
        msg = f"declared output not produced: {', '.join(missing)}"
        return outcome("failed", "out_not_produced", msg, details={"paths": missing})
    out_hashes = {out: digest for out, digest in stored.items() if digest is not None}
    write_lock(
        root,
        StageLock(name, job.fingerprint, job.params, job.dep_hashes, out_hashes, job.code_parts),
    )
    reached("locked")
    if job.run_key:
        state.runs.record(job.run_key, name, out_hashes)
        reached("run-cached")
    changed = _changed_deps(state, root, job.dep_hashes)
    return outcome("ran", job.reason_code, job.reason, details={**job.details, "changed_deps": changed} if changed else None)
