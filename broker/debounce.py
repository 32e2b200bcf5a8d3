"""Changed paths on their way from the watcher to a decision: a sub-machine of the
broker's state (pure: time comes in as arguments).

Reported paths wait for a quiet window (`debounce_s` after the last report, at most
`max_wait_s` after the first), then go out as one batch to be checked against the state
cache; one batch is out at a time. A *settled* report (a lone save: the watcher saw every
write in it closed, and a quiet moment after, pivot/watch/completions.py; the broker's
state judges it lone) that finds nothing waiting goes out without a window, unless
another report came within the window before it; any report joining it makes it a burst
again, with the window. Paths held back while the broker is busy (a wave runs) are looked
at again every window, and at once when the wave is over (`resume`): they are its own
outputs, closed by then, or changes that already waited out a window. Each path
remembers the `files_changed` message that reported it, so the wave it causes can name
its cause.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field

from pivot.protocol.record import MutableRecord, mutable_record

__all__ = ["ChangeQueue"]


@mutable_record
class ChangeQueue(MutableRecord):
    debounce_s: float
    max_wait_s: float
    waiting: dict[str, None] = field(default_factory=dict)  # in the order reported
    causes: dict[str, str] = field(default_factory=dict)  # path -> reporting message id
    first: float | None = None  # when the oldest waiting path was reported
    last: float = 0.0  # when the newest was
    checking: tuple[str, ...] | None = None  # the batch out for a check
    settled: bool = False  # what waits is one lone save: no quiet window
    deferred: bool = False  # take() held waiting paths back (busy): the window again
    heard: float = float("-inf")  # when the last report that counts came

    def report(
        self, paths: tuple[str, ...], now: float, cause: str = "", *, settled: bool = False,
        counts: bool = True,
    ) -> None:
        """`settled`: a lone save, by its content (the watcher saw it complete; a few
        paths). It skips the window only if nothing waits and no report came within the
        window before it: a copy whose writer keeps pausing (a busy machine) arrives as
        many small settled reports a few milliseconds apart, and is one burst. A report
        that does not `count` (the last wave's own outputs) neither waits nor makes a
        burst."""
        for path in paths:
            self.waiting[path] = None
            if cause:
                self.causes[path] = cause
        alone = now - self.heard >= self.debounce_s
        if counts:
            self.heard = now
        if not counts and self.first is None:
            self.settled = True
        else:
            self.settled = settled and alone and (self.first is None or self.settled)
        if self.first is None:
            self.first = now
        self.last = now

    def deadline(self) -> float | None:
        """When the quiet window ends (None: nothing waits)."""
        if self.first is None:
            return None
        if self.settled and not self.deferred:
            return self.first
        return min(self.last + self.debounce_s, self.first + self.max_wait_s)

    def take(self, now: float, may_check: Callable[[str], bool]) -> tuple[str, ...] | None:
        """The batch to check now, once the quiet window has passed and no batch is out:
        the waiting paths `may_check` lets through (the rest keep waiting)."""
        deadline = self.deadline()
        if deadline is None or now < deadline or self.checking is not None:
            return None
        picked = tuple(p for p in self.waiting if may_check(p))
        for path in picked:
            del self.waiting[path]
        if self.waiting:
            self.first = self.last = now
            self.deferred = True
        else:
            self.first = None
            self.settled = self.deferred = False
        if not picked:
            return None
        self.checking = picked
        return picked

    def resume(self) -> None:
        """The wave is over: what it held back goes out at once."""
        if self.deferred:
            self.deferred = False
            self.settled = True

    def checked(self) -> tuple[str, ...]:
        """The batch whose check just came back (no batch is out any more)."""
        batch, self.checking = self.checking or (), None
        return batch

    def cause_of(self, paths: list[str]) -> str | None:
        """The message that reported the first of `paths` (their causes are forgotten)."""
        found = [self.causes.pop(p) for p in paths if p in self.causes]
        return found[0] if found else None

    def forget(self, paths: list[str]) -> None:
        for path in paths:
            self.causes.pop(path, None)

    def clear(self) -> None:
        """Stopping: nothing waiting is acted on."""
        self.waiting.clear()
        self.first = None
        self.settled = self.deferred = False
