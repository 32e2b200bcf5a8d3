"""The pool's side of its link's liveness: when to heartbeat, when the broker counts as
gone, and what the pool does then. Pure: time comes in as `now`.

Heard from (any message) and sent to (a heartbeat when nothing else went out for a
heartbeat interval). A broker silent for heartbeat x liveness is gone for now:
- the pool stops the stages it runs, once (fencing: the broker runs them elsewhere only
  after that time plus a margin, so two attempts of a stage are never alive at once);
- a pool its engine started (`--work`) then exits: its engine is gone;
- a pool started on its own (`--broker`) says hello again every HELLO_EVERY_S, and exits
  only after `--broker-timeout` seconds of silence, if given.
The broker's welcome (after a hello) ends the silence and the fence.
"""

from __future__ import annotations

from pivot.protocol.record import Record, record

__all__ = ["HELLO_EVERY_S", "BrokerWatch", "Due"]

HELLO_EVERY_S = 1.0  # while the broker is away, how often a standalone pool asks again
DEFAULT_HEARTBEAT_S = 1.0
DEFAULT_LIVENESS = 3


@record
class Due(Record):
    heartbeat: bool = False  # send one now
    fence: bool = False  # stop every stage this pool runs (the first turn of a silence)
    give_up: bool = False  # exit: the broker stayed away too long
    hello: bool = False  # say hello again (a standalone pool)


class BrokerWatch:
    def __init__(self, now: float, *, standalone: bool, give_up_after: float | None) -> None:
        self.standalone = standalone
        self.give_up_after = give_up_after
        self.heartbeat_s = DEFAULT_HEARTBEAT_S
        self.liveness = DEFAULT_LIVENESS
        self.last_heard = now
        self.last_sent = 0.0
        self.fenced = False  # stopped what it ran in this silence
        self._next_hello = 0.0

    def heard(self, now: float) -> None:
        self.last_heard = now

    def sent(self, now: float) -> None:
        self.last_sent = now

    def welcomed(self, heartbeat_s: float, liveness: int) -> None:
        """The broker (a new one, maybe) took this pool in: its settings, no fence."""
        self.heartbeat_s, self.liveness, self.fenced = heartbeat_s, liveness, False

    def silent(self, now: float) -> bool:
        return now - self.last_heard > self.heartbeat_s * self.liveness

    def due(self, now: float) -> Due:
        """What to do on this turn of the loop."""
        heartbeat = now - self.last_sent >= self.heartbeat_s
        if not self.silent(now):
            return Due(heartbeat=heartbeat)
        fence, self.fenced = not self.fenced, True
        limit = self.give_up_after
        if limit is None and not self.standalone:
            limit = self.heartbeat_s * self.liveness  # its engine is gone
        if limit is not None and now - self.last_heard > limit:
            return Due(heartbeat=heartbeat, fence=fence, give_up=True)
        hello = self.standalone and now >= self._next_hello
        if hello:
            self._next_hello = now + HELLO_EVERY_S
        return Due(heartbeat=heartbeat, fence=fence, hello=hello)

    def next_deadline(self) -> float:
        """When the loop must wake next at the latest (a heartbeat, or the silence)."""
        return min(self.last_sent + self.heartbeat_s, self.last_heard + self.heartbeat_s * self.liveness)
