"""How `pivot display` shows events: the `Renderer` interface, its factory and shared helpers.

A renderer is fed by the display client, one call at a time from one thread:

- `event(env)` for each live event (state events and log lines; the client filters out
  the bus messages `welcome` and `tick`);
- `resync(snapshot)` after the client saw a gap in the state sequence and fetched a
  snapshot: the renderer shows what it missed, never anything twice;
- `idle()` when no event came for a while (a tenth of a second): a renderer that holds
  something back for a batch shows it now;
- `close(dropped_logs)` once at the end.

`Progress` is the bookkeeping the line-based renderers (plain, json) share: what was
shown already, and which messages a snapshot implies that were not.

`rich` is imported by `pivot.display.tui` only, when the tui mode is chosen.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import field
from typing import Any, Protocol, TextIO, runtime_checkable

from pivot.protocol.codec import Envelope
from pivot.protocol.messages import (
    STATUSES,
    EngineStopped,
    LogLine,
    Message,
    Notice,
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
from pivot.protocol.record import MutableRecord, mutable_record

__all__ = [
    "EVENT_TAGS",
    "FINAL_STATUSES",
    "MODES",
    "Progress",
    "Renderer",
    "format_duration",
    "make_renderer",
    "resolve_mode",
    "show_engine_start",
    "stage_order",
    "wave_failed",
    "wave_summary",
]

MODES = ("plain", "json", "tui")
FINAL_STATUSES = frozenset(STATUSES)
# The events a display shows, in the order of docs/events.md.
EVENT_TAGS = frozenset(
    cls.TAG
    for cls in (
        PipelineLoaded,
        PipelineInvalid,
        WaveStarted,
        StageStarted,
        StageFinished,
        LogLine,
        WaveFinished,
        PoolLost,
        Paused,
        Resumed,
        EngineStopped,
        Notice,
    )
)
_WAVE_LISTS = STATUSES  # WaveFinished list fields, same names and order as the statuses


@runtime_checkable
class Renderer(Protocol):
    def baseline(self, snap: Snapshot) -> None:
        """The snapshot taken on joining: what it shows is history, not missed events."""

    def event(self, env: Envelope) -> None:
        """A live event (never welcome/tick: the client filters those)."""

    def resync(self, snap: Snapshot) -> None:
        """After a sequence gap: the full state; show what was missed."""

    def idle(self) -> None:
        """No event for a while: show anything held back for a batch."""

    def close(self, dropped_logs: int) -> None:
        """End of the run; report `dropped_logs` when > 0."""


def resolve_mode(mode: str, out: TextIO) -> str:
    """`auto` -> `tui` on an interactive terminal, else `plain`; other modes are checked."""
    if mode == "auto":
        try:
            tty = out.isatty()
        except (AttributeError, ValueError):  # closed or odd streams
            tty = False
        return "tui" if tty else "plain"
    if mode not in MODES:
        raise ValueError(f"unknown display mode {mode!r}; expected auto, {', '.join(MODES)}")
    return mode


def say_notice(msg: Notice) -> None:
    """Something the engine wants a user to know (a warning about the pipeline, a pool
    restarted): on standard error whatever the display."""
    print(f"pivot: {msg.message}", file=sys.stderr, flush=True)


def make_renderer(mode: str, out: TextIO, err: TextIO) -> Renderer:
    """The renderer for `mode` ("plain", "json" or "tui"; "auto" is resolved here too)."""
    mode = resolve_mode(mode, out)
    if mode == "json":
        from pivot.display.jsonl import JsonRenderer

        return JsonRenderer(out, err)
    if mode == "tui":
        from pivot.display.tui import TuiRenderer

        return TuiRenderer.for_stream(out, err)  # the view goes through `out`; a final error to `err`
    from pivot.display.plain import PlainRenderer

    return PlainRenderer(out, err)


# --- text helpers shared by the renderers ------------------------------------------


def format_duration(seconds: float) -> str:
    """0.01s, 3.25s, 42.1s, 2m05s, 1h02m."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def wave_failed(msg: WaveFinished) -> bool:
    return bool(msg.failed or msg.lost or msg.blocked or msg.cancelled)


def wave_summary(msg: WaveFinished) -> str:
    """`wave 1 done: 2 ran, 2 skipped` / `wave 1 failed: 1 ran, 1 failed, 1 blocked` /
    `wave 1 stopped: 1 ran, 2 cancelled` (nothing failed: a code change or a stop)."""
    counts = [f"{len(names)} {status}" for status, names in _wave_lists(msg) if names]
    if msg.moved:
        counts.append(f"{len(msg.moved)} running on in wave {msg.wave + 1}")
    verdict = "done"
    if wave_failed(msg):
        verdict = "failed" if msg.failed or msg.blocked or msg.lost else "stopped"
    return f"wave {msg.wave} {verdict}: {', '.join(counts) or 'nothing to run'}"


def _wave_lists(msg: WaveFinished) -> list[tuple[str, list[str]]]:
    return [(status, list(getattr(msg, status))) for status in _WAVE_LISTS]


# --- what was shown, and what a snapshot says was missed ----------------------------


@mutable_record
class Progress(MutableRecord):
    """Tracks what a line renderer has shown, so nothing is shown twice.

    `admit(msg)` is asked for every live message: False means it was shown already (it
    was synthesized by an earlier resync). `catch_up(snap)` returns the messages the
    snapshot implies were missed, synthesized, and records them as shown.
    """

    started: set[int] = field(default_factory=set)  # waves whose wave_started was shown
    finished: set[tuple[int, str]] = field(default_factory=set)  # (wave, stage) outcomes
    summarized: set[int] = field(default_factory=set)  # waves whose wave_finished was shown
    base_wave: int | None = None  # the first wave this display knew of; older is history
    pipeline_error: tuple[str, str] | None = None  # the pipeline error last shown

    def admit(self, msg: Message) -> bool:
        match msg:
            case WaveStarted():
                self._note_wave(msg.wave)
                if msg.wave in self.started:
                    return False
                self.started.add(msg.wave)
            case StageStarted():
                self._note_wave(msg.wave)
            case StageFinished():
                self._note_wave(msg.wave)
                key = (msg.wave, msg.stage)
                if key in self.finished:
                    return False
                self.finished.add(key)
            case WaveFinished():
                self._note_wave(msg.wave)
                if msg.wave in self.summarized:
                    return False
                self.summarized.add(msg.wave)
            case PipelineInvalid():
                self.pipeline_error = (msg.message, msg.detail)
            case PipelineLoaded():
                self.pipeline_error = None
        return True

    def _note_wave(self, wave: int) -> None:
        if self.base_wave is None or wave < self.base_wave:
            self.base_wave = wave

    def baseline(self, snap: Snapshot) -> None:
        """Take `snap` as known (e.g. the one taken on joining, before the run started):
        what it shows is history, not missed, and will never be shown by `catch_up`."""
        self.base_wave = snap.wave
        if snap.pipeline_error:
            self.pipeline_error = (snap.pipeline_error.message, snap.pipeline_error.detail)
        if snap.wave >= 1:
            self.started.add(snap.wave)
        for stage, view in snap.stages.items():
            if view.status in FINAL_STATUSES:
                self.finished.add((view.wave, stage))
        if snap.last_wave is not None:
            self.summarized.add(snap.last_wave.wave)

    def catch_up(self, snap: Snapshot) -> list[Message]:
        """Messages for what `snap` shows and this display did not: a missed pipeline
        error, wave starts, final stage outcomes and the last wave's summary, in order."""
        if self.base_wave is None:
            self.base_wave = snap.wave  # a display's first sight: older waves are history
        base = self.base_wave
        out: list[Message] = []

        if snap.pipeline_error:
            error = (snap.pipeline_error.message, snap.pipeline_error.detail)
            if error != self.pipeline_error:
                self.pipeline_error = error
                out.append(PipelineInvalid(*error))
        else:
            self.pipeline_error = None

        views = snap.stages
        order = stage_order(snap.order, views)

        outcomes: dict[int, list[StageFinished]] = {}
        for stage in order:
            view = views[stage]
            wave = view.wave
            if view.status not in FINAL_STATUSES or wave < max(1, base):
                continue
            if (wave, stage) in self.finished:
                continue
            outcomes.setdefault(wave, []).append(
                StageFinished(
                    wave, stage, view.status, view.reason_code, view.reason, view.duration_s, view.error,
                )
            )

        last = snap.last_wave
        waves = set(outcomes)
        if last is not None and last.wave >= base and last.wave not in self.summarized:
            waves.add(last.wave)
        if snap.wave_running and snap.wave >= max(1, base) and snap.wave not in self.started:
            waves.add(snap.wave)

        for wave in sorted(waves):
            if wave not in self.started:
                stages: list[str] | None = None
                trigger, paths = "run", []
                if wave == snap.wave:
                    stages = [s for s in order if views[s].wave == wave]
                    trigger, paths = snap.trigger, list(snap.paths)
                elif last is not None and wave == last.wave:
                    members = {n for _, names in _wave_lists(last) for n in names}
                    stages = [s for s in order if s in members]
                    stages += sorted(members - set(stages))
                if stages is not None:  # waves older than both: their stage list is gone
                    self.started.add(wave)
                    out.append(WaveStarted(wave, stages, trigger, paths))
            for msg in outcomes.get(wave, []):
                self.finished.add((wave, msg.stage))
                out.append(msg)
            if last is not None and wave == last.wave and wave not in self.summarized:
                self.summarized.add(wave)
                out.append(last)
        return out


def stage_order(order: Iterable[str], views: dict[str, Any]) -> list[str]:
    """The snapshot's stage order, then any stage it lists in `stages` only."""
    known = [s for s in order if s in views]
    return known + sorted(set(views) - set(known))


def show_engine_start(renderer: Renderer, snap: Snapshot) -> None:
    """Join an engine this display has just started (`pivot up`), or one whose pipeline
    does not load (`pivot repro` asking it): its pipeline may have loaded (or failed to)
    before the display joined: that is news, shown as its event. What else the snapshot
    shows is history, not shown: no wave of this display's has started yet."""
    import dataclasses
    import time

    renderer.baseline(dataclasses.replace(snap, pipeline_error=None))
    msg: Message
    if snap.pipeline_error:
        msg = snap.pipeline_error
    elif snap.order:
        msg = PipelineLoaded(list(snap.order), [], [])
    else:
        return
    renderer.event(Envelope(msg, "", None, "broker", snap.seq, time.time()))
