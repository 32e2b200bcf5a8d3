"""The worker pools a broker knows: membership, slots, liveness and fencing. A
sub-machine of the broker's state (`broker/state.py`): pure, time comes in as `now`.

A pool is heard from (any message) and sent to (heartbeats when nothing else went out).
One silent for heartbeat x liveness is lost without proof of death: it may still run its
attempts until it notices the silence itself and stops them (`workers/pool.py` does after
the same time), so those attempts are *fenced*: held back, still counted as running, and
released to run elsewhere only after that time plus `FENCE_MARGIN_S`, or at once when
its death is confirmed (its process reaped, or it said hello again).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import field

from pivot.pipeline.manifest import Manifest
from pivot.protocol.record import MutableRecord, mutable_record

__all__ = ["FENCE_MARGIN_S", "Fenced", "PoolInfo", "PoolTable", "TickDue"]

# The broker stops heartbeating a pool it lost, so that pool notices at most
# heartbeat x liveness after the loss; its stages run elsewhere only after that plus
# time to kill its workers.
FENCE_MARGIN_S = 2.0


@mutable_record
class PoolInfo(MutableRecord):
    slots: int
    last_heard: float
    last_sent: float
    attempts: set[str] = field(default_factory=set)
    incarnation: str = ""
    tags: frozenset[str] = frozenset()
    host: str = ""
    pid: int = 0
    joined: float = 0.0
    # Attempts it was running when it said hello (from before a broker restart): they
    # hold a slot, and no other attempt of their stages starts until they end.
    foreign: dict[str, str] = field(default_factory=dict)
    leaving: bool = False  # it said goodbye: nothing new; forgotten once its results are in
    # Its own manifest matches the engine's (since the last reload): it may run stages,
    # but none of `mismatched` (another checkout's code for them).
    current: bool = False
    manifest: Manifest | None = None
    mismatched: frozenset[str] = frozenset()
    queue: int = 0  # attempts it takes beyond its slots, held decided until a worker frees
    asked: int | None = None  # the load it was last asked for (None: none yet, its own first)

    def free(self, alone: bool = True) -> int:
        """Attempts it takes now: its free slots, then its queue's room. Beside another
        pool (not `alone`), no more of its queue than it has slots: a stage queued here
        waits for this pool's workers while another pool's may free first (a long
        stage's wait)."""
        if self.leaving or not self.current:
            return 0
        queue = self.queue if alone else min(self.queue, self.slots)
        return self.slots + queue - len(self.attempts) - len(self.foreign)

    def idle(self) -> bool:
        """A slot of its is free: a stage given now starts at once."""
        return self.free() > self.queue

    def takes(self, stage: str, tags: frozenset[str]) -> bool:
        """Whether `stage` (needing `tags`) may run here, slots aside."""
        return tags <= self.tags and stage not in self.mismatched


@mutable_record
class Fenced(MutableRecord):
    """The attempts of a pool lost without proof of death, held back until `release_at`."""

    release_at: float
    attempts: list[str]
    reason: str


@mutable_record
class TickDue(MutableRecord):
    """What a tick found due: fenced pools to release, silent pools to declare lost
    (name, seconds silent), pools to heartbeat."""

    released: list[str] = field(default_factory=list)
    silent: list[tuple[str, float]] = field(default_factory=list)
    heartbeats: list[str] = field(default_factory=list)


class PoolTable:
    def __init__(self, heartbeat_s: float, liveness: int) -> None:
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self._pools: dict[str, PoolInfo] = {}
        self._fenced: dict[str, Fenced] = {}
        self.last_tick: float | None = None

    # --- membership ------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._pools

    def __bool__(self) -> bool:
        return bool(self._pools)

    def get(self, name: str) -> PoolInfo | None:
        return self._pools.get(name)

    def __getitem__(self, name: str) -> PoolInfo:
        return self._pools[name]

    def items(self) -> Iterator[tuple[str, PoolInfo]]:
        return iter(list(self._pools.items()))

    def names(self) -> list[str]:
        return list(self._pools)

    def add(self, name: str, info: PoolInfo) -> None:
        self._pools[name] = info
        if self.last_tick is None:
            # The broker's own time from here: stopped (its process group's SIGSTOP) before
            # its first tick, it took the whole stop for the pool's silence ("lost", the
            # run ending 1, the pool having run every stage).
            self.last_tick = info.last_heard

    def remove(self, name: str) -> PoolInfo | None:
        return self._pools.pop(name, None)

    def forget_if_left(self, name: str) -> bool:
        """A pool that said goodbye is forgotten once none of its attempts is out."""
        pool = self._pools.get(name)
        if pool is not None and pool.leaving and not pool.attempts and not pool.foreign:
            del self._pools[name]
            return True
        return False

    # --- slots -----------------------------------------------------------------------

    def free_slots(self) -> dict[str, int]:
        """Pool name -> free slots (and queue room: PoolInfo.free), for pools with any."""
        # (A pool still loading counts: the stages of a wave that starts before it is in
        # would wait in the first one's queue.)
        alone = sum(1 for pool in self._pools.values() if not pool.leaving) <= 1
        return {name: free for name, pool in self._pools.items() if (free := pool.free(alone)) > 0}

    def foreign_stages(self) -> set[str]:
        """Stages an attempt from before a broker restart still runs."""
        return {s for pool in self._pools.values() for s in pool.foreign.values()}

    def any_has(self, tags: frozenset[str]) -> bool:
        return any(tags <= pool.tags for pool in self._pools.values())

    def first_current(self) -> str | None:
        """A pool whose manifest matches the engine's (the wave planner), if any."""
        return next((name for name, pool in self._pools.items() if pool.current), None)

    # --- liveness --------------------------------------------------------------------

    @property
    def silence_s(self) -> float:
        """How long a pool may stay silent before it is lost (and stops its stages)."""
        return self.heartbeat_s * self.liveness

    def heard(self, name: str, now: float) -> None:
        pool = self._pools.get(name)
        if pool is not None:
            pool.last_heard = now

    def sent(self, name: str, now: float) -> None:
        pool = self._pools.get(name)
        if pool is not None:
            pool.last_sent = now

    def tick(self, now: float) -> TickDue:
        due = TickDue()
        if self.last_tick is not None and now - self.last_tick > self.silence_s:
            # The broker itself did not run (`pivot up` stopped by Ctrl-Z, then fg): the
            # pools' silence is ours, not theirs. They get a fresh liveness window.
            for pool in self._pools.values():
                pool.last_heard = now
        self.last_tick = now
        due.released = [name for name, fenced in self._fenced.items() if now >= fenced.release_at]
        for name, pool in self._pools.items():
            if now - pool.last_heard > self.silence_s:
                due.silent.append((name, now - pool.last_heard))
            elif now - pool.last_sent >= self.heartbeat_s:
                due.heartbeats.append(name)
        return due

    # --- fencing ---------------------------------------------------------------------

    def fence(self, name: str, attempts: list[str], reason: str) -> None:
        now = self.last_tick if self.last_tick is not None else 0.0
        self._fenced[name] = Fenced(now + self.silence_s + FENCE_MARGIN_S, attempts, reason)

    def is_fenced(self, name: str) -> bool:
        return name in self._fenced

    def keep_fenced_except(self, name: str, still_its_own: set[str]) -> None:
        """A fenced pool is back: what it still runs stays its own (not released)."""
        fenced = self._fenced.get(name)
        if fenced is not None:
            fenced.attempts = [a for a in fenced.attempts if a not in still_its_own]

    def release(self, name: str) -> Fenced | None:
        """Stop holding a lost pool's attempts back: they may run elsewhere now."""
        return self._fenced.pop(name, None)

    # --- invariants ------------------------------------------------------------------

    def in_flight(self) -> set[str]:
        return {a for pool in self._pools.values() for a in pool.attempts}

    def held(self) -> set[str]:
        return {a for fenced in self._fenced.values() for a in fenced.attempts}

    def validate(self) -> None:
        for name, pool in self._pools.items():
            assert len(pool.attempts) + len(pool.foreign) <= pool.slots + pool.queue, f"pool {name} over its slots"
            assert not pool.attempts & set(pool.foreign), f"pool {name}: an attempt both its own and foreign"
        for name, fenced in self._fenced.items():
            live = self._pools.get(name)
            assert live is None or not set(fenced.attempts) & live.attempts, (
                f"pool {name}: an attempt both fenced and in flight"
            )
