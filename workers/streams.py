"""A running stage's output, read by its pool as it is printed (the worker's side is
pivot/runtime/capture.py): every TAIL_S the pool reads what is new in the attempt's
files and does two things with it.

- **The stage's log on disk**, every byte (stderr lines marked `! `), written to
  `.pivot/logs/stages/STAGE.log.part` while it runs and renamed to `STAGE.log` when the
  attempt ends, whatever its end (a crash's last lines are kept). Bounded by
  `log_max_bytes()` (100 MB by default, `PIVOT_LOG_MAX_MB`): two segments of half that
  each; when the newer is full, the older is dropped, and the log says how much of the
  beginning was cut. The last lines are always kept. Both streams go into the one file a
  whole line at a time: a stream's unfinished line (a progress bar on stderr) is held
  until it ends, so a line of the other stream never lands in its middle.
- **Live lines for every display**, one message per TAIL_S at most, with at most
  LINES_PER_TICK lines of each stream: when a stage prints faster, the last lines are
  sent and the others counted in a note on the `pivot` stream (they are all in the log). A line rewritten with `\\r` (a
  progress bar) is sent as its latest state; one not ended yet (a progress bar in
  flight) is sent as a `partial` line at most every PARTIAL_EVERY_S, which displays show
  in place until the next.

Memory is bounded whatever the stage prints: one READ_BYTES buffer, a held line of at
most MAX_LINE_BYTES per stream, and the lines of one look. A pool that falls behind only
delays the live lines; the stage never waits for it (its writes go to a file).
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import BinaryIO

from pivot.runtime.capture import STREAM_SUFFIXES, output_path
from pivot.state.stagelogs import finish_log, older_segment, running_log_path

__all__ = ["LINES_PER_TICK", "AttemptOutput", "LineSplitter", "LogSegments", "log_max_bytes"]

TAIL_S = 0.1
LINES_PER_TICK = 200  # per stream: 2,000 lines/s of a stage reach the displays
PARTIAL_EVERY_S = 0.25
READ_BYTES = 1 << 20
BYTES_PER_TICK = 8 << 20  # then the pool's loop turns (its socket) before it reads more
MAX_LINE_CHARS = 4000
MAX_LINE_BYTES = 4 * MAX_LINE_CHARS
DEFAULT_LOG_MAX_MB = 100.0
PUNCH_EVERY = 8 << 20  # bytes read from a file before the part read is freed on disk
HOLD_BYTES = 1 << 16  # an unfinished line held for the log, beyond its latest state


def log_max_bytes() -> int:
    """The cap of one stage's log on disk: `PIVOT_LOG_MAX_MB` (default 100)."""
    raw = os.environ.get("PIVOT_LOG_MAX_MB", "")
    try:
        mb = float(raw) if raw else DEFAULT_LOG_MAX_MB
    except ValueError:
        mb = DEFAULT_LOG_MAX_MB
    return max(int(mb * 1_000_000), 2 * MAX_LINE_BYTES)


def _latest(line: bytes) -> bytes:
    """What a terminal would show of a line rewritten with carriage returns."""
    line = line.rstrip(b"\r")
    return line[line.rfind(b"\r") + 1 :]


def _text(line: bytes) -> str:
    return line[:MAX_LINE_BYTES].decode("utf-8", "replace")[:MAX_LINE_CHARS]


class LineSplitter:
    """One stream's bytes into lines; the line not ended yet is held (its latest state,
    bounded)."""

    def __init__(self) -> None:
        self.held = b""

    def feed(self, data: bytes, keep: int) -> tuple[list[str], int]:
        """The last `keep` complete lines in `data` (after what was held), and how many
        complete lines came before them (not returned)."""
        if self.held:
            data = self.held + data
        end = data.rfind(b"\n")
        if end < 0:
            self._hold(data)
            return [], 0
        self._hold(data[end + 1 :])
        count = data.count(b"\n", 0, end) + 1
        start = 0
        if count > keep:
            pos = end
            for _ in range(keep):
                pos = data.rfind(b"\n", 0, pos)
            start = pos + 1
        lines = [_text(_latest(line)) for line in data[start:end].split(b"\n")] if keep else []
        return lines, count - len(lines)

    def _hold(self, rest: bytes) -> None:
        if b"\r" in rest:
            rest = _latest(rest)
        self.held = rest[:MAX_LINE_BYTES]

    def partial(self) -> str:
        return _text(_latest(self.held))

    def flush(self) -> str | None:
        """The last line, not ended by a newline, once the stage is over."""
        held, self.held = self.held, b""
        return _text(_latest(held)) if held else None


class LogSegments:
    """The stage's log on disk while it runs: two segments, the older dropped when the
    newer reaches half the cap (`cut` counts the bytes dropped). A log that cannot be
    written (a read-only project, a full disk) stops being written, and `broken` says
    why: the stage runs on, its lines still go to the displays."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path  # the newer segment
        self.older = older_segment(path)
        self.half = max(1, cap // 2)
        self.cut = 0
        self.size = 0
        self.at_line_start: dict[str, bool] = {}
        self.last_stream = ""
        self.held: dict[str, bytes] = {}  # each stream's line not ended yet
        self.broken = ""
        self.file: BinaryIO | None = None  # opened at the first write: a silent stage makes none

    def write(self, stream: str, data: bytes) -> None:
        if not data or self.broken:
            return
        try:
            if self.file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.older.unlink(missing_ok=True)
                self.file = open(self.path, "wb")  # noqa: SIM115 (held open while the stage runs)
            self._write(stream, data)
        except OSError as exc:
            self.broken = str(exc)
            self.remove()

    def flush(self) -> None:
        if self.file is not None:
            try:
                self.file.flush()
            except OSError as exc:
                self.broken = str(exc)
                self.remove()

    def _write(self, stream: str, data: bytes) -> None:
        """Whole lines only; the unfinished one waits for its end (or the attempt's)."""
        data = self.held.pop(stream, b"") + data
        end = data.rfind(b"\n") + 1
        rest = data[end:]
        if len(rest) > HOLD_BYTES:
            # A line rewritten with \r for long (a progress bar): what a display shows
            # of it is what follows its last \r, which is all that is held.
            cr = rest.rfind(b"\r", 0, len(rest) - 1)
            if cr > 0:
                rest = rest[cr:]
        if len(rest) > HOLD_BYTES:  # a line that long without an end is written as it comes
            end = len(data)
        elif rest:
            self.held[stream] = rest
        if end:
            self._emit(stream, data[:end])

    def _emit(self, stream: str, data: bytes) -> None:
        last = self.last_stream
        if last and last != stream and not self.at_line_start.get(last, True):
            self._raw(b"\n")  # another stream's line begins: the unfinished one ends here
            self.at_line_start[last] = True
        self.last_stream = stream
        prefix = {"stderr": b"! ", "pivot": b"# pivot: "}.get(stream, b"")
        if prefix:
            body = data.replace(b"\n", b"\n" + prefix)
            if self.at_line_start.get(stream, True):
                body = prefix + body
            if body.endswith(b"\n" + prefix):  # the prefix belongs to the next line
                body = body[: -len(prefix)]
            data = body
        self.at_line_start[stream] = data.endswith(b"\n")
        self._raw(data)

    def _raw(self, data: bytes) -> None:
        assert self.file is not None
        while data:
            room = self.half - self.size
            self.file.write(data[:room])
            self.size += min(room, len(data))
            data = data[room:]
            if self.size >= self.half:
                self.file.close()
                with contextlib.suppress(FileNotFoundError):
                    self.cut += self.older.stat().st_size
                os.replace(self.path, self.older)
                self.file = open(self.path, "wb")  # noqa: SIM115
                self.size = 0

    def parts(self) -> list[Path]:
        """The segments in order, closed (the attempt is over): the lines it left
        unfinished are written first, each ended."""
        if self.file is None:
            return []
        held, self.held = self.held, {}
        with contextlib.suppress(OSError):  # a full disk: the log keeps what it has
            for stream, rest in held.items():
                self._emit(stream, rest + b"\n")
        self.file.close()
        return [p for p in (self.older, self.path) if p.exists()]

    def remove(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):  # a full disk fails the flush of close
                self.file.close()
            self.file = None
        for p in (self.older, self.path):
            with contextlib.suppress(OSError):
                p.unlink(missing_ok=True)


class _Source:
    """One of the attempt's files, read from where the last look stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1
        self.offset = 0
        self.punched = 0
        self.can_punch = True

    def read(self, limit: int) -> bytes:
        if self.fd < 0:
            try:
                self.fd = os.open(self.path, os.O_RDWR)
            except FileNotFoundError:
                return b""  # the stage has not started printing (or not started)
        data = os.pread(self.fd, min(limit, READ_BYTES), self.offset)
        self.offset += len(data)
        if self.can_punch and self.offset - self.punched >= PUNCH_EVERY:
            self.can_punch = _punch(self.fd, self.offset & ~0xFFFF)
            self.punched = self.offset
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _punch(fd: int, upto: int) -> bool:
    """Free the part of a file already read (its size stays: the stage appends on);
    False where the file system cannot (the file then keeps all it was written)."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        punch_hole, keep_size = 0x02, 0x01
        return libc.fallocate(fd, punch_hole | keep_size, ctypes.c_long(0), ctypes.c_long(upto)) == 0
    except (OSError, AttributeError):
        return False


class AttemptOutput:
    """What one running attempt printed: read at every look, kept on disk, and turned
    into the lines its pool sends the broker."""

    def __init__(
        self, root: Path, stage: str, pid_file: Path, *, run_log: Path | None = None, cap: int | None = None,
    ) -> None:
        self.root = root
        self.run_log = run_log  # where a successful run's log is also kept (run cache)
        self.stage = stage
        self.pid_file = pid_file
        self.cap = cap
        self.cut_told = 0
        self.broken_told = False
        self.pending: dict[str, list[str]] = {stream: [] for stream in STREAM_SUFFIXES}  # lines to send
        self.skipped: dict[str, int] = dict.fromkeys(STREAM_SUFFIXES, 0)  # lines not to be sent
        self.sent_at = -1e18
        self.partial_sent: dict[str, str] = {}
        self.partial_at = -1e18

    @functools.cached_property
    def sources(self) -> dict[str, _Source]:
        # Built at the first look: most short stages end before one, and their pool's
        # loop (which serves every stage) then never pays for it.
        return {stream: _Source(output_path(self.pid_file, stream)) for stream in STREAM_SUFFIXES}

    @functools.cached_property
    def splitters(self) -> dict[str, LineSplitter]:
        return {stream: LineSplitter() for stream in STREAM_SUFFIXES}

    @functools.cached_property
    def log(self) -> LogSegments:
        return LogSegments(running_log_path(self.root, self.stage), self.cap or log_max_bytes())

    def look(self, now: float, *, final: bool = False) -> tuple[list[tuple[str, str, bool]], bool]:
        """Read what is new (into the log) and return the lines to send (stream, text,
        partial): at most once per TAIL_S however often it is called, the last
        LINES_PER_TICK of each stream since then. Also whether more is waiting to be
        read (the look stopped at BYTES_PER_TICK a stream). `final`: the attempt is over."""
        more = False
        for stream, source in self.sources.items():
            budget = BYTES_PER_TICK
            pending = self.pending[stream]
            while data := source.read(budget):
                budget -= len(data)
                self.log.write(stream, data)
                got, missed = self.splitters[stream].feed(data, LINES_PER_TICK)
                pending += got
                self.skipped[stream] += missed + max(0, len(pending) - LINES_PER_TICK)
                del pending[:-LINES_PER_TICK]
                if budget <= 0:
                    more = True
                    break
        self.log.flush()  # `pivot logs STAGE` shows it while it runs
        if not final and now - self.sent_at < TAIL_S:
            return [], more  # the bus carries a stage's lines at most every TAIL_S
        self.sent_at = now
        out: list[tuple[str, str, bool]] = []
        for stream, pending in self.pending.items():
            if self.skipped[stream]:
                out.append(("pivot", f"{self.skipped[stream]} {stream} lines not shown live (printed faster than "
                                     f"displays follow); {self._where_all()}", False))
                self.skipped[stream] = 0
            out += [(stream, line, False) for line in pending]
            if pending:
                self.partial_sent.pop(stream, None)  # a complete line replaced it
            pending.clear()
        if self.log.broken and not self.broken_told:
            self.broken_told = True
            out.append(("pivot", f"its log could not be written ({self.log.broken}): `pivot logs "
                                 f"{self.stage}` will not have this run", False))
        if self.log.cut > self.cut_told:
            self.cut_told = self.log.cut
            out.append(("pivot", f"its log reached its cap: the first {_mb(self.log.cut)} of its output "
                                 "were cut from it (PIVOT_LOG_MAX_MB)", False))
        if final and not more:
            for stream, splitter in self.splitters.items():
                last = splitter.flush()
                if last is not None:
                    out.append((stream, last, False))
        elif now - self.partial_at >= PARTIAL_EVERY_S:
            for stream, splitter in self.splitters.items():
                state = splitter.partial()
                if state != self.partial_sent.get(stream, ""):
                    self.partial_sent[stream] = state
                    self.partial_at = now
                    out.append((stream, state, True))
        return out, more

    def _where_all(self) -> str:
        """Where the lines not sent can be read, as far as is true now."""
        if self.log.broken:
            return "its log could not be written: they are lost"
        if self.log.cut:  # the older ones among them may be cut already
            return (f"`pivot logs {self.stage}` has the recent ones: its log keeps only the last part of the "
                    f"output (the first {_mb(self.log.cut)} were cut: PIVOT_LOG_MAX_MB)")
        return f"`pivot logs {self.stage}` has them all"

    def finish(self, status: str, reason: str, error: str | None) -> None:
        """The attempt is over: its log becomes the stage's (`pivot logs STAGE`), if its
        code ran (its files exist); else the stage's last log stays."""
        for source in self.sources.values():
            source.close()
        if output_path(self.pid_file, "stdout").exists():
            finish_log(self.root, self.stage, status, reason, error, self.log.parts(), self.log.cut, self.run_log)
        self.log.remove()  # (what is left: one an attempt cut off before this one left)

    def close(self) -> None:
        """Over, and its worker kept its log (it printed nothing): only the descriptors
        the looks opened close."""
        for source in self.__dict__.get("sources", {}).values():
            source.close()

    def discard(self) -> None:
        """Over without a log to keep (the pool stops)."""
        self.close()
        self.log.remove()

    def remove_files(self) -> None:
        for stream in STREAM_SUFFIXES:
            output_path(self.pid_file, stream).unlink(missing_ok=True)


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"
