"""A live terminal view with rich: the current wave as a table, failures, and above it
everything the stages print.

The view is rebuilt from this renderer's state twice a second by rich's refresh thread,
so a stage's running time ticks without events, and right after an event at most 8
times a second: never more than 10 frames a second.
State changes happen under `_lock`; rich is never called while holding it (rich's own
lock is taken by the refresh thread before it asks us for the view).

Each line a stage ends is printed above the live region (`console.print` while the
Live runs), prefixed by its stage, so the terminal's scrollback keeps everything the
display received, as after `make` or `dvc repro`; the region itself shows only the lines
in flight (progress bars, in place) and the few not printed yet. Lines are printed in
batches, at most every ABOVE_EVERY_S, and at once before any other event is shown: each
print redraws the live region, so one print per line would cost a table per line.

On close the live region is cleared and the final table, failures and summary are
printed as ordinary output, so they stay on screen (and end up in a file as-is).

`rich` is imported here only: `pivot.display` does not need it for plain or json.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pivot.display.render import (
    format_duration,
    stage_order,
    wave_failed,
    wave_summary,
)
from pivot.protocol.codec import Envelope
from pivot.protocol.messages import (
    EngineStopped,
    LogLine,
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

__all__ = ["TuiRenderer"]

# status -> (symbol, style)
_LOOK = {
    "pending": ("·", "dim"),
    "running": ("▶", "bold cyan"),
    "ran": ("✓", "green"),
    "restored": ("✓", "cyan"),
    "skipped": ("○", "dim"),
    "failed": ("✗", "bold red"),
    "blocked": ("⊘", "yellow"),
    "cancelled": ("-", "dim"),
    "lost": ("!", "bold red"),
}
_TICKS_PER_S = 2.0  # rich's refresh thread
_EVENT_REFRESH_S = 0.125  # least time between two refreshes triggered by events
_LIVE_ERROR_LINES = 12  # tail of each failure's traceback while live
_LIVE_ERRORS = 2  # failures shown in full-ish while live; the rest by name
_STAGE_LOG_LINES = 8  # a failed stage's last output lines, shown above its traceback
ABOVE_EVERY_S = 0.1  # least time between two batches of lines printed above the view


@dataclass
class _Row:
    status: str = "pending"
    reason: str = ""
    duration_s: float = 0.0
    started_at: float | None = None
    error: str | None = None


class TuiRenderer:
    def __init__(
        self,
        console: Console,
        *,
        log_lines: int = 10,
        clock: Callable[[], float] = time.time,
        err: TextIO | None = None,
    ) -> None:
        """`clock` gives Unix time: running stages' elapsed time, refresh throttling.
        With `err`, a pipeline error still standing at the end is said there, as the one
        `error:` line every command ends with, not in the final view."""
        self.console = console
        self.err = err
        self.clock = clock
        self._last_refresh = float("-inf")
        self._last_above = float("-inf")
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._closed = False
        self._wave = 0
        self._wave_running = False
        self._wave_t0: float | None = None
        self._wave_t1: float | None = None
        self._rows: dict[str, _Row] = {}
        self._summary: WaveFinished | None = None
        self._carried: dict[str, _Row] = {}  # rows of a wave's `moved` stages, for the next
        self._log_lines = max(0, log_lines)  # the live region's lines not printed above yet
        self._unprinted: list[LogLine] = []  # ended lines waiting for the next batch above
        self._printed_logs = False  # (a snapshot's log tails are shown on joining only)
        self._stage_logs: dict[str, deque[LogLine]] = {}  # each stage's last run
        self._partials: dict[tuple[str, str], LogLine] = {}  # lines in flight (progress bars), in place
        self._pipeline_error: tuple[str, str] | None = None
        self._notes: deque[str] = deque(maxlen=3)
        self._trigger = ""  # what started the wave shown: "files: data/raw.csv"
        self.keys_hint = ""  # set by a live command that reads keys
        self._paused = False  # `pivot up` paused (p): said in the header
        self._waiting: list[str] = []  # ... with the changed paths whose wave waits

    @classmethod
    def for_stream(cls, out: TextIO, err: TextIO | None = None) -> TuiRenderer:
        return cls(Console(file=out), err=err)

    # --- Renderer ------------------------------------------------------------------

    def event(self, env: Envelope) -> None:
        with self._lock:
            above = self._apply(env)
            # A state event is shown after the lines printed before it.
            lines = self._take_unprinted(force=not isinstance(env.msg, LogLine))
        self._print_above([*lines, *above])
        self._ensure_live()
        self._refresh_soon()

    def resync(self, snap: Snapshot) -> None:
        with self._lock:
            lines = self._take_unprinted(force=True)
            above = self._apply_snapshot(snap)
            lines += self._take_unprinted(force=True)
        self._print_above([*lines, *above])
        self._ensure_live()
        self._refresh_soon()

    def baseline(self, snap: Snapshot) -> None:
        """Optional, before any event: start from `snap`; a finished wave is history."""
        with self._lock:
            if snap.wave_running:
                self._apply_snapshot(snap)
            elif snap.pipeline_error:
                self._pipeline_error = (snap.pipeline_error.message, snap.pipeline_error.detail)
        self._ensure_live()

    def idle(self) -> None:
        """No event for a while: lines held for a batch are printed now."""
        with self._lock:
            lines = self._take_unprinted(force=True)
        self._print_above(lines)

    def close(self, dropped_logs: int) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            live, self._live = self._live, None
            lines = self._take_unprinted(force=True)
            error, self._pipeline_error = (self._pipeline_error, None) if self.err else (None, self._pipeline_error)
            final = self._final_view(dropped_logs)
        if live is not None:
            live.stop()
        self._print_above(lines)
        if final is not None:
            self.console.print(final)
        if error is not None and self.err is not None:
            message, detail = error
            err = Console(file=self.err, highlight=False)
            err.print(Text(f"error: {message}", style="bold red"))
            if detail.strip():
                err.print(Text("\n".join("    " + line for line in detail.rstrip().splitlines())))

    # --- state ---------------------------------------------------------------------

    def _apply(self, env: Envelope) -> list[RenderableType]:
        above: list[RenderableType] = []
        msg = env.msg
        match msg:
            case WaveStarted():
                if msg.wave != self._wave:
                    above += self._leave_wave()
                self._wave, self._wave_running = msg.wave, True
                self._wave_t0, self._wave_t1 = env.ts, None
                self._summary = None
                carried, self._carried = self._carried, {}
                self._rows = {s: carried.get(s) or _Row() for s in msg.stages}
                self._trigger = _trigger_text(msg.trigger, msg.paths)
            case StageStarted() if msg.details.get("from_wave"):
                row = self._row(msg.wave, msg.stage, above)
                if row is not None and row.started_at is None:  # (its start was not seen)
                    row.status, row.reason, row.started_at = "running", msg.reason, env.ts
            case StageStarted():
                row = self._row(msg.wave, msg.stage, above)
                if row is not None:
                    row.status, row.reason, row.started_at = "running", msg.reason, env.ts
                    self._stage_logs.pop(msg.stage, None)
                    self._drop_partials(msg.stage)
            case StageFinished():
                row = self._row(msg.wave, msg.stage, above)
                if row is not None:
                    row.status, row.reason = msg.status, msg.reason
                    row.duration_s, row.error = msg.duration_s, msg.error
                self._drop_partials(msg.stage)
            case LogLine() if msg.partial:
                self._partials[(msg.stage, msg.stream)] = msg
            case LogLine():
                self._partials.pop((msg.stage, msg.stream), None)
                self._unprinted.append(msg)
                self._stage_tail(msg.stage).append(msg)
            case WaveFinished():
                if msg.wave == self._wave or self._wave == 0:
                    self._wave, self._wave_running = msg.wave, False
                    self._wave_t1 = env.ts
                    self._summary = msg
                    # Still running: the next wave's rows, with their start and output.
                    self._carried = {s: self._rows[s] for s in msg.moved if s in self._rows}
            case Paused():
                if not self._paused:
                    self._notes.append("paused: no wave starts until resumed (p)")
                self._paused, self._waiting = True, list(msg.waiting)
            case Resumed():
                self._paused, self._waiting = False, []
                self._notes.append("resumed")
            case EngineStopped():
                self._notes.append("the engine stopped")
            case PipelineInvalid():
                self._pipeline_error = (msg.message, msg.detail)
            case PipelineLoaded():
                self._pipeline_error = None
            case PoolLost():
                line = f"worker pool {msg.pool} lost ({msg.reason})"
                if msg.stages:
                    line += f" while running: {', '.join(msg.stages)}"
                self._notes.append(line)
                above.append(Text(line, style="bold red"))
                for stage in msg.stages:  # the broker queues them again
                    row = self._rows.get(stage)
                    if row is not None and row.status == "running":
                        row.status, row.reason, row.started_at = "pending", "its pool was lost", None
            case _:
                pass
        return above

    def _take_unprinted(self, force: bool) -> list[RenderableType]:
        """The lines to print above now, as one batch (empty until ABOVE_EVERY_S has
        passed since the last, unless `force`)."""
        if not self._unprinted:
            return []
        now = self.clock()
        if not force and now - self._last_above < ABOVE_EVERY_S:
            return []
        self._last_above = now
        self._printed_logs = True
        lines, self._unprinted = self._unprinted, []
        return [Group(*(_log_text(line, wrap=True) for line in lines))]

    def _drop_partials(self, stage: str) -> None:
        for key in [k for k in self._partials if k[0] == stage]:
            del self._partials[key]

    def _stage_tail(self, stage: str) -> deque[LogLine]:
        return self._stage_logs.setdefault(stage, deque(maxlen=_STAGE_LOG_LINES))

    def _row(self, wave: int, stage: str, above: list[RenderableType]) -> _Row | None:
        """The row of `stage`; a newer wave (its wave_started was missed) replaces the table."""
        if wave != self._wave:
            if wave < self._wave:
                return None  # late news about an older wave
            above += self._leave_wave()
            self._wave, self._wave_running, self._rows = wave, True, {}
            self._wave_t0 = self._wave_t1 = None
            self._summary = None
        return self._rows.setdefault(stage, _Row())

    def _leave_wave(self) -> list[RenderableType]:
        """Lines that keep the wave being replaced on screen: its summary and failures."""
        if not self._wave or self._summary is None:
            return []
        out: list[RenderableType] = [self._summary_text(self._summary)]
        for name, row in self._rows.items():
            if row.status in ("failed", "lost"):
                out.append(Text(f"  {name}: {row.status.upper()} ({row.reason})", style="red"))
        return out

    def _apply_snapshot(self, snap: Snapshot) -> list[RenderableType]:
        above: list[RenderableType] = []
        error = snap.pipeline_error
        self._pipeline_error = (error.message, error.detail) if error else None
        self._paused = snap.paused
        if snap.wave < 1:
            return above
        views = snap.stages
        members = [s for s in stage_order(snap.order, views) if views[s].wave == snap.wave]
        if snap.wave != self._wave:
            if self._summary is None and snap.last_wave and snap.last_wave.wave == self._wave:
                self._summary = snap.last_wave
            above += self._leave_wave()
            self._rows, self._wave_t0, self._wave_t1 = {}, None, None
        self._wave, self._wave_running = snap.wave, snap.wave_running
        rows: dict[str, _Row] = {}
        for stage in members:
            view = views[stage]
            row = self._rows.get(stage) or _Row()
            if view.status != "running" or row.status != "running":
                row.started_at = None
            row.status, row.reason, row.duration_s = view.status, view.reason, view.duration_s
            row.error = view.error or None
            rows[stage] = row
        self._rows = rows
        self._trigger = _trigger_text(snap.trigger, snap.paths)
        if not self._printed_logs and not self._unprinted:  # joining: the tail of each stage's last run
            for stage in stage_order(snap.order, snap.logs):
                for stream, line in snap.logs[stage]:
                    self._unprinted.append(LogLine(stage, stream, line))
                    self._stage_tail(stage).append(LogLine(stage, stream, line))
        last = snap.last_wave
        self._summary = last if not snap.wave_running and last and last.wave == snap.wave else None
        return above

    # --- rich ----------------------------------------------------------------------

    def _ensure_live(self) -> None:
        if self._live is not None or self._closed:
            return
        live = Live(
            console=self.console,
            get_renderable=self._live_view,
            refresh_per_second=_TICKS_PER_S,
            transient=True,
        )
        self._live = live
        live.start()

    def _refresh_soon(self) -> None:
        """Show an event now unless the view was refreshed for an event very recently."""
        now = self.clock()
        if self._live is None or now - self._last_refresh < _EVENT_REFRESH_S:
            return
        self._last_refresh = now
        self._live.refresh()

    def _print_above(self, renderables: list[RenderableType]) -> None:
        for renderable in renderables:
            self.console.print(renderable)

    def _live_view(self) -> RenderableType:
        with self._lock:
            limit = max(5, self.console.size.height - 20)
            parts: list[RenderableType] = [self._header(), self._table(limit)]
            parts += self._errors(live=True)
            parts += self._pipeline_error_view(live=True)
            in_flight = [*self._unprinted[-self._log_lines :], *self._partials.values()]
            if in_flight:
                parts.append(Text("─ log ─", style="dim"))
                parts += [_log_text(line) for line in in_flight]
            parts += [Text(note, style="red") for note in self._notes]
            return Group(*parts)

    def _final_view(self, dropped_logs: int) -> RenderableType | None:
        parts: list[RenderableType] = []
        if self._rows:
            parts += [self._header(), self._table(None)]
            parts += self._errors(live=False)
        parts += self._pipeline_error_view(live=False)
        if self._summary is not None:
            parts.append(self._summary_text(self._summary))
        elif self._wave_running:
            done = sum(1 for r in self._rows.values() if r.status not in ("pending", "running"))
            parts.append(
                Text(f"wave {self._wave} interrupted: {done}/{len(self._rows)} finished", "yellow")
            )
        if dropped_logs > 0:
            lines = "log line was" if dropped_logs == 1 else "log lines were"
            parts.append(Text(f"{dropped_logs} {lines} dropped (the display fell behind)", "dim"))
        return Group(*parts) if parts else None

    def _header(self) -> Text:
        paused = Text("")
        if self._paused:
            shown = ", ".join(self._waiting[:3]) + (" …" if len(self._waiting) > 3 else "")
            waiting = f"{len(self._waiting)} change{'s' * (len(self._waiting) != 1)} wait ({shown})" if self._waiting else "changes wait"
            paused = Text(f" · PAUSED: {waiting} until p resumes", style="bold yellow")
        if not self._wave:
            return Text("pivot: waiting for a run", style="dim") + paused
        done = sum(1 for r in self._rows.values() if r.status not in ("pending", "running"))
        text = Text(f"wave {self._wave}", style="bold")
        if self._wave_running:
            text.append(" · running", style="bold cyan")
        elif self._summary is not None and wave_failed(self._summary):
            text.append(" · failed", style="bold red")
        else:
            text.append(" · done", style="bold green")
        text.append_text(paused)  # early: the header is cut at the console's width
        text.append(f" · {done}/{len(self._rows)} stages")
        if self._wave_t0 is not None:
            end = self._wave_t1 if self._wave_t1 is not None else self.clock()
            text.append(f" · {format_duration(end - self._wave_t0)}", style="dim")
        if self._trigger:
            text.append(f" · {self._trigger}", style="dim")
        if self.keys_hint:
            text.append(f"    {self.keys_hint}", style="dim")
        text.no_wrap, text.overflow = True, "ellipsis"  # one line at any width
        return text

    def _table(self, limit: int | None) -> Table:
        """Stage names, statuses and times are never cut, at any width: the reason gives
        way (cut with …), and takes what room is left."""
        names = _visible(self._rows, limit)
        cells = []
        for name in names:
            row = self._rows[name]
            symbol, style = _LOOK.get(row.status, ("?", ""))
            if row.status == "running":
                elapsed = self.clock() - row.started_at if row.started_at is not None else None
                when = format_duration(elapsed) if elapsed is not None else ""
            elif row.status in ("ran", "failed", "lost"):
                when = format_duration(row.duration_s)
            else:
                when = ""
            cells.append((Text(name), Text(f"{symbol} {row.status}", style=style), Text(when, style="dim"),
                          Text(row.reason, style="dim")))
        hidden = len(self._rows) - len(names)
        if hidden > 0:
            cells.append((Text(f"… {hidden} more", style="dim"), Text(""), Text(""), Text("")))

        def widest(i: int, title: str) -> int:
            return max([len(title), *(c[i].cell_len for c in cells)])

        # Rich would squeeze every column: the fixed ones get their widest cell, and the
        # reason what is left of the console (3 columns between cells), cut with …
        fixed = [widest(i, title) for i, title in enumerate(("stage", "status", "time"))]
        room = max(1, self.console.width - sum(fixed) - 3 * 3)
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for title, width, justify in zip(("stage", "status", "time"), fixed, ("left", "left", "right"), strict=True):
            table.add_column(title, no_wrap=True, width=width, justify=justify)  # type: ignore[arg-type]
        table.add_column("reason", no_wrap=True, overflow="ellipsis", max_width=room)
        for name_cell, status_cell, when_cell, reason_cell in cells:
            reason_cell.truncate(room, overflow="ellipsis")
            table.add_row(name_cell, status_cell, when_cell, reason_cell)
        return table

    def _errors(self, live: bool) -> list[RenderableType]:
        failed = [(n, r) for n, r in self._rows.items() if r.status in ("failed", "lost")]
        out: list[RenderableType] = []
        for i, (name, row) in enumerate(failed):
            if live and i >= _LIVE_ERRORS:
                rest = ", ".join(n for n, _ in failed[i:])
                out.append(Text(f"also failed: {rest}", style="red"))
                break
            out.append(Text(f"{name} {row.status}: {row.reason}", style="bold red"))
            tail = [m for m in self._stage_logs.get(name, ()) if m.stream != "pivot"]
            if tail:
                out.append(Text(f"  last output of {name}:", style="dim"))
                out += [Text("    ") + _log_text(m) for m in tail]
            if row.error and row.error.strip():
                lines = row.error.rstrip().splitlines()
                if live and len(lines) > _LIVE_ERROR_LINES:
                    lines = ["…", *lines[-_LIVE_ERROR_LINES:]]
                out.append(Text("\n".join("    " + line for line in lines)))
        return out

    def _pipeline_error_view(self, live: bool) -> list[RenderableType]:
        if self._pipeline_error is None:
            return []
        message, detail = self._pipeline_error
        out: list[RenderableType] = [Text(f"pipeline error: {message}", style="bold red")]
        if detail.strip():
            lines = detail.rstrip().splitlines()
            if live and len(lines) > _LIVE_ERROR_LINES:
                lines = ["…", *lines[-_LIVE_ERROR_LINES:]]
            out.append(Text("\n".join("    " + line for line in lines)))
        return out

    @staticmethod
    def _summary_text(msg: WaveFinished) -> Text:
        return Text(wave_summary(msg), style="bold red" if wave_failed(msg) else "bold green")


def _trigger_text(trigger: str, paths: list[str]) -> str:
    """The header's "last change": what started the wave, and the first paths."""
    if trigger == "run":
        return ""
    shown = ", ".join(paths[:3]) + (" …" if len(paths) > 3 else "")
    return f"{trigger}: {shown}" if shown else trigger


def _visible(rows: dict[str, _Row], limit: int | None) -> list[str]:
    """All rows, or at most `limit`: running and failed first, then upcoming, then the
    latest finished; shown in wave order."""
    names = list(rows)
    if limit is None or len(names) <= limit:
        return names
    limit = max(1, limit - 1)  # room for the "… N more" row

    def rank(item: tuple[int, str]) -> tuple[int, int]:
        i, name = item
        status = rows[name].status
        if status in ("running", "failed", "lost"):
            return (0, i)
        if status == "pending":
            return (1, i)
        return (2, -i)

    chosen = {name for _, name in sorted(enumerate(names), key=rank)[:limit]}
    return [n for n in names if n in chosen]


def _log_text(msg: LogLine, wrap: bool = False) -> Text:
    """`STAGE | line` (`!` stderr, `*` Pivot's notes); cut to one row unless `wrap`
    (printed above the view: the scrollback keeps the whole line)."""
    mark = {"stderr": "!", "pivot": "*"}.get(msg.stream, "|")
    text = Text(f"{msg.stage} {mark} ", style={"!": "red dim", "*": "yellow"}.get(mark, "dim"))
    text.append_text(Text.from_ansi(msg.line.replace("\r", "")))
    text.no_wrap = not wrap
    text.overflow = "fold" if wrap else "ellipsis"
    return text

