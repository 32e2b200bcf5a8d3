"""Plain lines for logs, CI and pipes: one line per stage outcome, greppable.

    wave 1: 4 stages
    prepare: running (never ran)
      prepare | kept 40 rows
    prepare: ran in 0.01s
    features: skipped (up to date)
    fit: FAILED (ZeroDivisionError: division by zero)
        Traceback (most recent call last):
        ...
    evaluate: blocked (blocked by failed upstream 'fit')
    wave 1 failed: 1 ran, 1 skipped, 1 failed, 1 blocked

Stage log lines are indented, `|` after the stage name for stdout and `!` for stderr;
the state of a line not ended yet (a progress bar) `~`, every PARTIAL_EVERY_S at most.
Pipeline errors and lost pools go to `err`. Colour only on a terminal, never with
NO_COLOR set.
"""

from __future__ import annotations

import contextlib
import os
from typing import TextIO

from pivot.display.render import Progress, format_duration, stage_order, wave_failed, wave_summary
from pivot.protocol.codec import Envelope
from pivot.protocol.messages import (
    EngineStopped,
    LogLine,
    Message,
    Paused,
    PipelineInvalid,
    PipelineLoaded,
    PoolLost,
    Resumed,
    Snapshot,
    StageFinished,
    StageStarted,
    WaveFinished,
    WaveStarted,
)

__all__ = ["PlainRenderer"]

_STYLES = {
    "ran": "32",  # green
    "restored": "32",
    "note": "1;33",
    "skipped": "2",  # dim
    "failed": "1;31",  # bold red
    "blocked": "33",  # yellow
    "cancelled": "2",
    "lost": "1;31",
    "running": "36",  # cyan
    "done": "1;32",
    "error": "1;31",
    "log": "2",
}


PARTIAL_EVERY_S = 10.0  # a line in flight (a progress bar) is printed at most this often

class PlainRenderer:
    def __init__(self, out: TextIO, err: TextIO, *, color: bool | None = None) -> None:
        self.out = out
        self.err = err
        self.color = _wants_color(out) if color is None else color
        self.progress = Progress()
        self._loaded_once = False
        self._partial_at: dict[tuple[str, str], float] = {}  # when a line in flight was last shown
        self._seen_running: set[tuple[int, str]] = set()  # (wave, stage) shown running
        self._caught_running: set[tuple[int, str]] = set()  # (those a resync said: no live start seen)

    # --- Renderer ------------------------------------------------------------------

    def event(self, env: Envelope) -> None:
        msg = env.msg
        error_was_shown = self.progress.pipeline_error is not None
        if not self.progress.admit(msg):
            return  # shown already by a resync
        if isinstance(msg, StageStarted):
            if (msg.wave, msg.stage) in self._caught_running:
                self._caught_running.discard((msg.wave, msg.stage))
                return  # a late copy of what the resync said (a retry's start is shown)
            self._seen_running.add((msg.wave, msg.stage))
        if isinstance(msg, PipelineLoaded):
            self._loaded(msg, error_was_shown)
        elif isinstance(msg, LogLine) and msg.partial:
            # A progress bar's state: every PARTIAL_EVERY_S at most (a log is no terminal).
            key = (msg.stage, msg.stream)
            if env.ts - self._partial_at.get(key, -1e18) >= PARTIAL_EVERY_S:
                self._partial_at[key] = env.ts
                self._show(msg)
        else:
            self._show(msg)

    def resync(self, snap: Snapshot) -> None:
        for msg in self.progress.catch_up(snap):
            self._show(msg)
        # The stages running now whose start this display did not see (`pivot attach`
        # during a long stage showed nothing of it until it ended).
        if not snap.wave_running:
            return
        for stage in stage_order(snap.order, snap.stages):
            view = snap.stages[stage]
            key = (view.wave, stage)
            if view.status == "running" and view.wave == snap.wave and key not in self._seen_running:
                self._seen_running.add(key)
                self._caught_running.add(key)
                self._line(f"{stage}: {self._paint('running', 'running')}{_paren(view.reason)}")

    def baseline(self, snap: Snapshot) -> None:
        """Optional, before any event: what `snap` shows is history, not to be shown."""
        self.progress.baseline(snap)
        self._loaded_once = bool(snap.order)

    def idle(self) -> None:
        pass  # every event is written as it comes

    def close(self, dropped_logs: int) -> None:
        self._flush(self.out)
        if dropped_logs > 0:
            lines = "log line was" if dropped_logs == 1 else "log lines were"
            self._write(self.err, f"{dropped_logs} {lines} dropped (the display fell behind)")
            self._flush(self.err)

    # --- one message -----------------------------------------------------------------

    def _show(self, msg: Message) -> None:
        match msg:
            case WaveStarted():
                n = len(msg.stages)
                self._line(f"wave {msg.wave}: {n} stage{'' if n == 1 else 's'}")
            case StageStarted() if msg.details.get("from_wave"):
                self._line(f"{msg.stage}: {self._paint('running', 'running')} on from wave {msg.details['from_wave']}"
                           " (its code did not change)")
            case StageStarted():
                self._line(f"{msg.stage}: {self._paint('running', 'running')}{_paren(msg.reason)}")
            case LogLine() if msg.stream == "pivot":  # Pivot's own note, e.g. a saved edit
                self._line(f"  {msg.stage} {self._paint('note', 'note')}: {msg.line}")
            case LogLine():
                mark = "~" if msg.partial else "!" if msg.stream == "stderr" else "|"
                text = msg.line.rstrip("\r\n")
                self._line(f"  {msg.stage} {mark} {text}".rstrip())
            case StageFinished():
                self._finished(msg)
            case WaveFinished():
                style = "failed" if wave_failed(msg) else "done"
                self._line(self._paint(wave_summary(msg), style))
            case Paused() if msg.waiting:
                self._line(f"paused: waiting to run for {', '.join(msg.waiting)} (p resumes)")
            case Paused():
                self._line("paused: no wave starts until resumed (p)")
            case Resumed():
                self._line("resumed")
            case EngineStopped():
                self._line("the engine stopped")
            case PipelineInvalid():
                self._flush(self.out)
                # One line starting `error:` as every error of the CLI (docs/cli.md); the
                # message names the file, stage or field.
                self._write(self.err, f"{self._paint('error', 'error')}: {msg.message}")
                if msg.detail.strip():
                    self._write(self.err, _indent(msg.detail))
                self._flush(self.err)
            case PoolLost():
                self._flush(self.out)
                line = f"worker pool {msg.pool} lost ({msg.reason})"
                if msg.stages:
                    line += f" while running: {', '.join(msg.stages)}"
                self._write(self.err, self._paint(line, "error"))
                self._flush(self.err)
            case _:
                return

    def _finished(self, msg: StageFinished) -> None:
        status = msg.status
        if status == "ran":
            text = f"{self._paint('ran', 'ran')} in {format_duration(msg.duration_s)}"
        elif status == "restored":  # the reason reads "restored from run cache (...)"
            text = self._paint("restored", status) + msg.reason.removeprefix("restored")
        elif status in ("failed", "lost"):
            text = self._paint(status.upper(), status) + _paren(msg.reason)
        else:
            text = self._paint(status, status) + _paren(msg.reason)
        self._line(f"{msg.stage}: {text}")
        if msg.error and msg.error.strip():
            self._line(_indent(msg.error))

    def _loaded(self, msg: PipelineLoaded, error_was_shown: bool) -> None:
        first, self._loaded_once = not self._loaded_once, True
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (("added", msg.added), ("changed", msg.changed), ("removed", msg.removed))
            if names
        ]
        if error_was_shown:
            self._line("pipeline loaded" + (f": {'; '.join(parts)}" if parts and not first else ""))
        elif parts and not first:
            self._line(f"pipeline reloaded: {'; '.join(parts)}")

    # --- output ----------------------------------------------------------------------

    def _line(self, text: str) -> None:
        self._write(self.out, text)
        self._flush(self.out)

    @staticmethod
    def _write(stream: TextIO, text: str) -> None:
        stream.write(text + "\n")

    @staticmethod
    def _flush(stream: TextIO) -> None:
        with contextlib.suppress(AttributeError, ValueError):  # a closed or minimal stream
            stream.flush()

    def _paint(self, text: str, style: str) -> str:
        code = _STYLES.get(style)
        if not self.color or code is None:
            return text
        return f"\x1b[{code}m{text}\x1b[0m"


def _paren(reason: str) -> str:
    return f" ({reason})" if reason else ""


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join((prefix + line).rstrip() for line in text.rstrip().splitlines())


def _wants_color(out: TextIO) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):
        return False
