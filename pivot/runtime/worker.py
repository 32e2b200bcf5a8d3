"""What runs inside a loky worker: import the pipeline, run one stage, record it.

Nothing here touches sockets. The stage's stdout/stderr are captured line by line and
returned with the result; the pool publishes them as log events.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from pivot.errors import PipelineError
from pivot.runtime.loader import import_pipeline
from pivot.runtime.usertb import user_traceback
from pivot.state.hashing import hash_path
from pivot.state.lock import StageLock, lock_path, write_lock

__all__ = ["StageJob", "run_stage"]

MAX_LOG_LINES = 5000
MAX_LINE_CHARS = 4000


class _LineCapture:
    """A text stream that keeps whole lines, bounded, tagged with their stream name."""

    def __init__(self, stream: str, sink: list[list[str]]) -> None:
        self.stream = stream
        self.sink = sink
        self.partial = ""
        self.dropped = 0

    def write(self, text: str) -> int:
        self.partial += text
        *lines, self.partial = self.partial.split("\n")
        for line in lines:
            self._keep(line)
        return len(text)

    def _keep(self, line: str) -> None:
        if len(self.sink) < MAX_LOG_LINES:
            self.sink.append([self.stream, line[:MAX_LINE_CHARS]])
        else:
            self.dropped += 1

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def close_capture(self) -> None:
        if self.partial:
            self._keep(self.partial)
            self.partial = ""
        if self.dropped:
            self.sink.append([self.stream, f"[pivot: {self.dropped} more lines not kept]"])


@contextmanager
def _captured(sink: list[list[str]]) -> Iterator[None]:
    saved: tuple[TextIO, TextIO] = (sys.stdout, sys.stderr)
    out, err = _LineCapture("stdout", sink), _LineCapture("stderr", sink)
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        out.close_capture()
        err.close_capture()


StageJob = dict[str, Any]


def run_stage(job: StageJob) -> dict[str, Any]:
    """Run the stage described by `job` (see workers.pool) and write its lock on success.

    Returns {"status", "reason_code", "reason", "error", "logs", "duration_s"}.
    """
    root = Path(job["root"])
    name = job["stage"]
    logs: list[list[str]] = []
    started = time.perf_counter()

    def outcome(status: str, code: str, reason: str, error: str | None = None) -> dict[str, Any]:
        return {
            "status": status,
            "reason_code": code,
            "reason": reason,
            "error": error,
            "logs": logs,
            "duration_s": time.perf_counter() - started,
        }

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
    # Old outputs go first: a stage that does not write an output must not pass by
    # leaving the previous run's file in place.
    lock_path(root, name).unlink(missing_ok=True)
    for out in job["outs"]:
        _remove(root / out)
    try:
        with _captured(logs):
            decl.func(**job["params"])
    except BaseException as exc:
        return outcome("failed", "failed", f"{type(exc).__name__}: {exc}", user_traceback(exc))
    out_hashes: dict[str, str] = {}
    for out in job["outs"]:
        digest = hash_path(root / out)
        if digest is None:
            return outcome("failed", "out_not_produced", f"declared output not produced: {out}")
        out_hashes[out] = digest
    write_lock(
        root,
        StageLock(name, job["fingerprint"], job["params"], job["dep_hashes"], out_hashes),
    )
    return outcome("ran", job["reason_code"], job["reason"])


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        import shutil

        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
