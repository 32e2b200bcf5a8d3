"""What `pivot logs STAGE` shows: the output of the run that made the stage's outputs.

`.pivot/logs/stages/STAGE.log` holds the last run's output (bounded like the captured
lines). A successful run's log is also kept beside its run-cache entry (and cleared with
it), so that when the stage is later restored from the run cache, its log becomes that
run's, headed by a line that says it was restored (it used to go on showing the last run
that executed, which may have had other params).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from pivot.state.atomic import write_atomic

__all__ = ["keep_log", "note_restored", "stage_log_path"]


def stage_log_path(root: Path, stage: str) -> Path:
    return root / ".pivot" / "logs" / "stages" / f"{stage}.log"


def keep_log(
    root: Path, stage: str, status: str, reason: str, error: str | None, logs: list[list[str]],
    run_log: Path | None = None,
) -> None:
    """The output of the stage's last run, for `pivot logs STAGE` (written to a temp file
    and renamed); a successful run's also under its run-cache key."""
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"# {stage}: {status} ({reason}) at {when}"]
    lines += [("! " if stream == "stderr" else "") + line for stream, line in logs]
    if error:
        lines += ["# traceback:", *error.rstrip().splitlines()]
    data = ("\n".join(lines) + "\n").encode()
    with contextlib.suppress(OSError):  # losing a log copy must not fail the stage
        write_atomic(stage_log_path(root, stage), data, mode=0o644)
        if run_log is not None and status == "ran":
            write_atomic(run_log, data, mode=0o644)


def note_restored(root: Path, stage: str, run_log: Path) -> None:
    """The stage was restored from the run cache: its log is now the log of the run that
    made those outputs, if kept, under a line saying so."""
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    head = f"# {stage}: restored from the run cache at {when}; the output below is the run's that made them"
    with contextlib.suppress(OSError):
        try:
            with open(run_log, "rb") as f:
                kept = f.read()
        except FileNotFoundError:
            head = f"# {stage}: restored from the run cache at {when}; the output of the run that made them was not kept"
            kept = b""
        write_atomic(stage_log_path(root, stage), head.encode() + b"\n" + kept, mode=0o644)
