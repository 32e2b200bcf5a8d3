"""JSON lines, the CI contract (docs/events.md): one object per event, flushed per line.

    {"v":1,"event":"stage_finished","ts":1700000000.1,"wave":1,"stage":"prepare",...}

Every line has `v` (the contract version), `event` (the message's wire tag) and `ts`
(Unix seconds), then the message's fields. Lines synthesized from a snapshot after a
gap carry `"resynced": true`. The dropped-log count goes to `err` as text, so `out`
stays pure JSON lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any, TextIO

from pivot.display.render import EVENT_TAGS, Progress
from pivot.display.strictjson import dumps
from pivot.protocol.codec import Envelope
from pivot.protocol.messages import Message, Snapshot

__all__ = ["EVENTS_VERSION", "JsonRenderer", "event_record"]

EVENTS_VERSION = 1


def event_record(msg: Message, ts: float, *, resynced: bool = False) -> dict[str, Any]:
    """The JSON object for `msg`: v, event, ts, then its fields in declaration order."""
    record: dict[str, Any] = {"v": EVENTS_VERSION, "event": msg.TAG, "ts": ts}
    for f in dataclasses.fields(msg):
        record[f.name] = getattr(msg, f.name)
    if resynced:
        record["resynced"] = True
    return record


class JsonRenderer:
    def __init__(
        self, out: TextIO, err: TextIO, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.out = out
        self.err = err
        self.clock = clock
        self.progress = Progress()

    def event(self, env: Envelope) -> None:
        msg = env.msg
        if msg.TAG not in EVENT_TAGS:
            return  # welcome, tick and anything not in the contract
        if not self.progress.admit(msg):
            return  # emitted already by a resync
        self._emit(event_record(msg, env.ts))

    def resync(self, snap: Snapshot) -> None:
        now = self.clock()  # a snapshot carries no time of its own
        for msg in self.progress.catch_up(snap):
            self._emit(event_record(msg, now, resynced=True))

    def baseline(self, snap: Snapshot) -> None:
        """Optional, before any event: what `snap` shows is history, not to be emitted."""
        self.progress.baseline(snap)

    def idle(self) -> None:
        pass  # every event is written as it comes

    def close(self, dropped_logs: int) -> None:
        _flush(self.out)
        if dropped_logs > 0:
            lines = "log line was" if dropped_logs == 1 else "log lines were"
            self.err.write(f"{dropped_logs} {lines} dropped (the display fell behind)\n")
            _flush(self.err)

    def _emit(self, record: dict[str, Any]) -> None:
        self.out.write(dumps(record, separators=(",", ":")) + "\n")
        _flush(self.out)


def _flush(stream: TextIO) -> None:
    with contextlib.suppress(AttributeError, ValueError):  # a closed or minimal stream
        stream.flush()
