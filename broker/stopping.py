"""The engine's stop, step by step: a sub-machine of the broker's state (pure: time
comes in as arguments).

Once asked, nothing new starts. Running stages get the grace period; then they are
asked to cancel; `CANCEL_WAIT_S` later whatever still runs is given up. The clients
that asked are answered once nothing runs. A second request with a shorter grace cuts
the wait.
"""

from __future__ import annotations

from dataclasses import field

from pivot.launch.limits import HARD_KILL_S
from pivot.protocol.record import MutableRecord, mutable_record

__all__ = ["CANCEL_WAIT_S", "StopPlan"]

# After cancelling the running stages: a stage stuck in native code has its worker
# killed by the pool after HARD_KILL_S; this is longer.
CANCEL_WAIT_S = HARD_KILL_S + 2.0


@mutable_record
class StopPlan(MutableRecord):
    asked: bool = False  # nothing new starts
    done: bool = False  # engine_stopped was published
    reason: str = ""  # why the engine gives up ("" for a requested stop)
    waiting: list[bytes] = field(default_factory=list)  # clients to answer (b"": the broker)
    cancel_at: float | None = None  # when running stages are asked to cancel
    give_up_at: float | None = None  # when what still runs is given up

    def ask(self, client: bytes, grace_s: float, now: float, reason: str = "") -> bool:
        """A stop request; True when it is the first."""
        first = not self.asked
        self.asked = True
        self.waiting.append(client)
        self.reason = self.reason or reason
        cancel_at = now + max(0.0, grace_s)
        if self.give_up_at is None and (self.cancel_at is None or cancel_at < self.cancel_at):
            self.cancel_at = cancel_at
        return first

    def cancel_due(self, now: float) -> bool:
        """True once, when the grace period is over: cancel what runs now."""
        if self.cancel_at is None or now < self.cancel_at:
            return False
        self.cancel_at, self.give_up_at = None, now + CANCEL_WAIT_S
        return True

    def give_up_due(self, now: float) -> bool:
        return self.give_up_at is not None and now >= self.give_up_at

    def deadlines(self) -> list[float]:
        return [t for t in (self.cancel_at, self.give_up_at) if t is not None]

    def answer(self) -> list[bytes]:
        """The clients to answer now (nothing runs any more)."""
        clients, self.waiting = self.waiting, []
        self.cancel_at = self.give_up_at = None
        return clients
