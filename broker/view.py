"""What the displays are shown: a sub-machine of the broker's state (pure).

Every stage's view (status, reason, duration, wave, error), each stage's last output
lines, the last change and the last wave's summary; and the sequence numbers of state
events and of log lines, so a display can tell a gap and catch up from `snapshot()`.
"""

from __future__ import annotations

from dataclasses import field

from broker.events import Publish, PublishLog
from pivot.protocol.messages import (
    LogLine,
    Message,
    PipelineInvalid,
    Snapshot,
    StageView,
    WaveFinished,
)
from pivot.protocol.record import MutableRecord, mutable_record

__all__ = ["LOG_TAIL", "EngineView"]

LOG_TAIL = 20  # lines of each stage's last run kept for the snapshot (an attach shows them)

# Views without a duration (pending, queued, running, skipped in a wave) are the same for
# most stages: one record shared (records are immutable), not one made per stage and
# change (a no-op of 10,000 stages made 30,000). Bounded: cleared when full.
_SHARED: dict[tuple[object, ...], StageView] = {}
_SHARED_MAX = 1024


@mutable_record
class EngineView(MutableRecord):
    stages: dict[str, StageView] = field(default_factory=dict)
    logs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    partials: dict[str, tuple[str, str]] = field(default_factory=dict)  # stage -> its line in flight
    last_change: tuple[str, list[str]] = ("run", [])  # trigger and paths of the last wave
    last_wave: WaveFinished | None = None
    seq: int = 0  # of the last state event published
    log_seq: int = 0  # of the last log line published

    def set(self, stage: str, status: str, code: str, reason: str, duration: float, wave: int,
            error: str | None = None) -> None:
        if duration:
            self.stages[stage] = StageView(str(status), str(code), reason, duration, wave, error)
            return
        key = (status, code, reason, wave, error)
        view = _SHARED.get(key)
        if view is None:
            if len(_SHARED) >= _SHARED_MAX:
                _SHARED.clear()
            view = _SHARED[key] = StageView(str(status), str(code), reason, 0.0, wave, error)
        self.stages[stage] = view

    def forget(self, stage: str) -> None:
        self.stages.pop(stage, None)
        self.logs.pop(stage, None)
        self.partials.pop(stage, None)

    def publish(self, msg: Message, parent: str | None = None) -> Publish:
        self.seq += 1
        return Publish(msg, self.seq, parent)

    def started(self, stage: str) -> None:
        """A run of the stage began: its tail is of this run from now on."""
        self.logs[stage] = []
        self.partials.pop(stage, None)

    def stream(self, stage: str, lines: tuple[tuple[str, str, bool], ...]) -> list[PublishLog]:
        """Lines a running stage printed, published; its tail kept (a partial line in
        place of the last, until a line of its stream ends)."""
        out = []
        tail = self.logs.setdefault(stage, [])
        for stream, line, partial in lines:
            self.log_seq += 1
            out.append(PublishLog(LogLine(stage, stream, line, partial), self.log_seq))
            if partial:
                self.partials[stage] = (stream, line)
                continue
            if self.partials.get(stage, ("",))[0] == stream:
                del self.partials[stage]
            tail.append((stream, line))
        del tail[:-LOG_TAIL]
        return out

    def log_lines(self, stage: str, lines: tuple[tuple[str, str], ...], ran: bool) -> list[PublishLog]:
        """Pivot's notes on a finished stage, published. A run's tail (streamed while it
        ran) goes on; else the notes are its tail (a restored stage's)."""
        self.partials.pop(stage, None)
        out = self.stream(stage, tuple((stream, line, False) for stream, line in lines)) if lines else []
        if not ran and lines:
            self.logs[stage] = list(lines[-LOG_TAIL:])
        return out

    def snapshot(
        self, *, wave: int, wave_running: bool, order: list[str], pipeline_error: PipelineInvalid | None,
        paused: bool,
    ) -> Snapshot:
        return Snapshot(
            seq=self.seq,
            log_seq=self.log_seq,
            wave=wave,
            wave_running=wave_running,
            stages=dict(self.stages),
            order=order,
            pipeline_error=pipeline_error,
            last_wave=self.last_wave,
            paused=paused,
            trigger=self.last_change[0],
            paths=list(self.last_change[1]),
            logs={k: [*v, *([self.partials[k]] if k in self.partials else [])]
                  for k, v in self.logs.items() if v or k in self.partials},
        )
