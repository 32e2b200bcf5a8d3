"""What the displays are shown: a sub-machine of the broker's state (pure).

Every stage's view (status, reason, duration, wave, error), each stage's last output
lines, the last change and the last wave's summary; and the sequence numbers of state
events and of log lines, so a display can tell a gap and catch up from `snapshot()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.events import Publish, PublishLog
from pivot.protocol.messages import (
    LogLine,
    Message,
    PipelineInvalid,
    Snapshot,
    StageView,
    WaveFinished,
)

__all__ = ["LOG_TAIL", "EngineView"]

LOG_TAIL = 20  # lines of each stage's last run kept for the snapshot (an attach shows them)


@dataclass
class EngineView:
    stages: dict[str, StageView] = field(default_factory=dict)
    logs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    last_change: tuple[str, list[str]] = ("run", [])  # trigger and paths of the last wave
    last_wave: WaveFinished | None = None
    seq: int = 0  # of the last state event published
    log_seq: int = 0  # of the last log line published

    def set(self, stage: str, status: str, code: str, reason: str, duration: float, wave: int,
            error: str | None = None) -> None:
        self.stages[stage] = StageView(str(status), str(code), reason, duration, wave, error)

    def forget(self, stage: str) -> None:
        self.stages.pop(stage, None)
        self.logs.pop(stage, None)

    def publish(self, msg: Message, parent: str | None = None) -> Publish:
        self.seq += 1
        return Publish(msg, self.seq, parent)

    def log_lines(self, stage: str, lines: tuple[tuple[str, str], ...], ran: bool) -> list[PublishLog]:
        """A stage's output lines, published; its tail kept when its code ran."""
        out = []
        for stream, line in lines:
            self.log_seq += 1
            out.append(PublishLog(LogLine(stage, stream, line), self.log_seq))
        if lines or ran:
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
            logs={k: list(v) for k, v in self.logs.items() if v},
        )
