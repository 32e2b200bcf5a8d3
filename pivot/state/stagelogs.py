"""What `pivot logs STAGE` shows: the output of the run that made the stage's outputs.

`.pivot/logs/stages/STAGE.log` holds the last run's output: everything it printed (up to
the cap, its last part), stderr lines marked `! `, Pivot's notes `# pivot: `, under a
head line with how the run ended. While a run goes on, what it printed so far is in
`STAGE.log.part` (written by its pool, workers/streams.py). A successful run's log is also kept beside its run-cache entry (and cleared with
it), so that when the stage is later restored from the run cache, its log becomes that
run's, headed by a line that says it was restored (it used to go on showing the last run
that executed, which may have had other params).

A run that printed nothing has a log of one head line. It is kept in the state database
(`keep_quiet`), not in a file: a file is an inode, and on this machine's ext4 making one
costs 0.1-1 ms, a fifth of what a small stage costs in all. `STAGE.log`, when present,
is newer than the kept head line: a run that prints writes it, a quiet one's worker
removes it and its pool keeps the head line (workers/quietlogs.py: many stages' in one
transaction).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pivot.protocol.record import Record, record
from pivot.state.atomic import link_atomic, replace_small, write_atomic
from pivot.state.lock import stage_file

if TYPE_CHECKING:
    from pivot.state.statecache import StateCache

__all__ = [
    "RUN_NOTES", "QuietRun", "finish_log", "keep_log", "keep_quiet", "latest_states", "note_restored", "older_segment",
    "quiet_head", "quiet_log", "running_log_parts", "running_log_path", "stage_log_file", "stage_log_path",
]

RUN_NOTES = "run-log:"  # the head line of a quiet run, by run-cache key


def _stage_note(stage: str) -> str:
    return f"log:{stage}"

_PREFIXES = (b"! ", b"# pivot: ")  # a stream's mark, before what the stage wrote


_RUNNING = ".part"  # the running log: STAGE.log.part
_OLDER = ".1"  # its older half: STAGE.log.part.1


def _log_file(root: str | os.PathLike[str], stage: str) -> str:
    # A string join: a worker removes these every stage, and pathlib's joins and parses
    # were a quarter of a worker's own Python time.
    return os.path.join(root, ".pivot", "logs", "stages", f"{stage_file(stage)}.log")


def stage_log_path(root: Path, stage: str) -> Path:
    return Path(_log_file(root, stage))


def stage_log_file(root: str | os.PathLike[str], stage: str) -> str:
    """`stage_log_path` as a string (a worker's every stage)."""
    return _log_file(root, stage)


def running_log_path(root: Path, stage: str) -> Path:
    """What the stage's run going on has printed so far."""
    return Path(_log_file(root, stage) + _RUNNING)


def older_segment(running_log: Path) -> Path:
    """Where the older half of a long running log goes (workers/streams.py)."""
    return running_log.with_name(running_log.name + _OLDER)


def running_log_parts(root: str | os.PathLike[str], stage: str) -> tuple[str, str]:
    """The running log's segments (the newer, the older), as strings."""
    path = _log_file(root, stage) + _RUNNING
    return path, path + _OLDER


def latest_states(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """A log's lines (`chunks` of its bytes, in order) as a terminal would have left
    them: each line's text after its last carriage return (a progress bar's last state,
    not its thousands of rewrites), its stream's mark kept; a trailing `\\r\\n` is a
    plain newline. Each line ends with `\\n`, the last too."""
    rest = b""
    for chunk in chunks:
        data = rest + chunk
        end = data.rfind(b"\n")
        if end < 0:
            rest = _fold(data)  # a line rewritten in place holds only its latest state
            continue
        for line in data[:end].split(b"\n"):
            yield _latest_line(line) + b"\n"
        rest = _fold(data[end + 1 :])
    if rest:
        yield _latest_line(rest) + b"\n"


def _fold(part: bytes) -> bytes:
    """An unfinished line, cut to its mark and what follows its last carriage return
    (bounded memory however long the line), unless that return may be part of `\\r\\n`."""
    cr = part.rfind(b"\r", 0, len(part) - 1)
    if cr < 0:
        return part
    mark = next((p for p in _PREFIXES if part.startswith(p)), b"")
    return mark + part[cr:]


def _latest_line(line: bytes) -> bytes:
    mark = next((p for p in _PREFIXES if line.startswith(p)), b"")
    body = line[len(mark) :].rstrip(b"\r")
    return mark + body[body.rfind(b"\r") + 1 :]


def _head(stage: str, status: str, reason: str) -> bytes:
    reason = " ".join(reason.split())  # the head is one line
    return f"# {stage}: {status} ({reason}) at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode()


def _tail(error: str | None) -> bytes:
    return ("\n".join(["# traceback:", *error.rstrip().splitlines()]) + "\n").encode() if error else b""


def finish_log(
    root: Path, stage: str, status: str, reason: str, error: str | None, parts: list[Path], cut: int,
    run_log: Path | None = None,
) -> None:
    """A run is over: what it printed (`parts`, in order, of which the first `cut` bytes
    were dropped) becomes the stage's log, under its head line. Linked, not copied,
    beside its run-cache entry when it succeeded."""
    path = stage_log_path(root, stage)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if not parts:  # it printed nothing
            write_atomic(path, _head(stage, status, reason) + _tail(error), mode=0o644)
            if run_log is not None and status == "ran":
                _link_or_copy(path, run_log)
            return
        with open(tmp, "wb") as out:
            out.write(_head(stage, status, reason))
            if cut:
                out.write(f"# pivot: the first {cut / 1_000_000:.1f} MB of this run's output were cut "
                          "(the log keeps the last part: PIVOT_LOG_MAX_MB)\n".encode())
            ends_line = True
            for i, part in enumerate(parts):
                with open(part, "rb") as f:
                    if cut and i == 0:  # what is left of a line whose beginning was cut
                        head = f.read(1 << 16)
                        out.write(head[head.find(b"\n") + 1 :])  # (a line that long stays)
                    while chunk := f.read(1 << 20):
                        out.write(chunk)
                        ends_line = chunk.endswith(b"\n")
            if not ends_line:
                out.write(b"\n")
            out.write(_tail(error))
        tmp.chmod(0o644)
        replace_small(tmp, path)
        if run_log is not None and status == "ran":
            _link_or_copy(path, run_log)
    except OSError:  # losing a log copy must not fail the stage
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    finally:
        for part in parts:
            with contextlib.suppress(OSError):
                part.unlink()


@record  # (a frozen dataclass compiled six methods as every no-op imported this: ~1 ms)
class QuietRun(Record):
    """A pool's run that succeeded and printed nothing, its log (`head`, one line) to
    keep (`keep_quiet`); its worker removed the stage's earlier log file."""

    stage: str
    head: bytes
    reason: str
    run_key: str | None
    run_log: Path | None  # its file beside its run-cache entry, if it must be a file


def quiet_head(stage: str, reason: str) -> bytes:
    """The log of a run that succeeded and printed nothing."""
    return _head(stage, "ran", reason)


def keep_quiet(
    notes: StateCache, root: Path, runs: list[QuietRun], rows: Sequence[tuple[str, int, int, int, str, int]] = (),
) -> None:
    """Keep the quiet runs' head lines in the state database (for the run cache too,
    under each run key), with `rows` for the state cache, in one transaction; when the
    database cannot keep them, each run's log is a file, as a run that printed has."""
    kept: list[tuple[str, bytes]] = []
    for run in runs:
        kept.append((_stage_note(run.stage), run.head))
        if run.run_key:
            kept.append((RUN_NOTES + run.run_key, run.head))
    if notes.keep_notes(kept, rows):
        return
    for run in runs:
        finish_log(root, run.stage, "ran", run.reason, None, [], 0, run.run_log)


def quiet_log(root: Path, stage: str) -> bytes | None:
    """The head line kept for the stage's last run if it printed nothing (`keep_quiet`);
    None when none is kept. Read only where `STAGE.log` is absent: that file is newer."""
    from pivot.state.statecache import StateCache

    db = root / ".pivot" / "state.db"
    if not db.is_file():  # nothing ran here: asking must not make the database
        return None
    notes = StateCache(db)
    try:
        return notes.note(_stage_note(stage))
    finally:
        notes.close()


def _link_or_copy(path: Path, dest: Path) -> None:
    try:
        link_atomic(path, dest)
    except OSError:  # no hard links here (some network file systems): a copy
        import shutil

        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(path, tmp)
        replace_small(tmp, dest)


def keep_log(root: Path, stage: str, status: str, reason: str, error: str | None, run_log: Path | None = None) -> None:
    """The log of a run whose output went elsewhere (`pivot run --foreground`: the
    terminal): how it ended."""
    data = _head(stage, status, reason) + _tail(error)
    with contextlib.suppress(OSError):  # losing a log copy must not fail the stage
        write_atomic(stage_log_path(root, stage), data, mode=0o644)
        if run_log is not None and status == "ran":
            write_atomic(run_log, data, mode=0o644)


def note_restored(root: Path, stage: str, run_log: Path, notes: StateCache, run_key: str) -> None:
    """The stage was restored from the run cache: its log is now the log of the run that
    made those outputs, if kept (a file, or the head line `keep_quiet` kept for a run that
    printed nothing), under a line saying so."""
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    head = f"# {stage}: restored from the run cache at {when}; the output below is the run's that made them"
    with contextlib.suppress(OSError):
        try:
            with open(run_log, "rb") as f:
                kept = f.read()
        except FileNotFoundError:
            quiet = notes.note(RUN_NOTES + run_key)
            kept = quiet or b""
            if quiet is None:
                head = (f"# {stage}: restored from the run cache at {when}; the output of the run that made them "
                        "was not kept")
        write_atomic(stage_log_path(root, stage), head.encode() + b"\n" + kept, mode=0o644)
