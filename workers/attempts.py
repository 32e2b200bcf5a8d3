"""What a pool knows of each stage attempt it was given: one record per attempt, with
its phase, instead of parallel maps.

    BEHIND  --its upstream attempts here ended well-->  WAITING (below)
       \\
        +-- one ended otherwise: lost (given back unstarted); cancelled

    BEHIND  --its one upstream attempt is with a worker-->  RUNNING, ahead (`ahead_of`):
                     that worker decides it after the upstream ran well there

    WAITING  --pipeline loaded-->  DECIDING  --stale-->  RUNNING (on a worker)
       \\                              \\      \\               \\
        +-- failed / cancelled          \\      +-> QUEUED -->   +-- its outcome, or lost
                                         \\    (every worker busy; a cancel ends it there)
                                          +-- skipped, restored, failed, cancelled

A cancel is either *hard* (`cancel`: the attempt is reported cancelled whatever its run
returns; its worker was killed, or it never reached one) or *soft* (`stop`: the stage
was asked to stop through SIGUSR1; its real result stands, and its worker is killed at
`kill_at` if it has not stopped by then, which makes the cancel hard).
"""

from __future__ import annotations

import enum
from dataclasses import field
from typing import TYPE_CHECKING

from pivot.protocol.messages import RunStage, StageRunning
from pivot.protocol.record import MutableRecord, mutable_record

if TYPE_CHECKING:
    from pivot.state.plan import Prepared

__all__ = ["Attempt", "Phase", "validate"]


class Phase(enum.Enum):
    BEHIND = "behind"  # given behind attempts of its upstream stages here (`after`)
    WAITING = "waiting"  # dispatched before this pool's pipeline loaded
    DECIDING = "deciding"  # skip, restore or run: decided in a thread
    QUEUED = "queued"  # decided to run, waiting for a free worker (`held`)
    RUNNING = "running"  # handed to a worker (which may run another before it)


@mutable_record
class Attempt(MutableRecord):
    job: RunStage
    phase: Phase
    cancel: str | None = None  # hard cancel: why
    stop: str | None = None  # soft cancel asked: why
    kill_at: float = 0.0  # (stop) when its worker is killed if still running
    worker_pid: int = 0  # (stop) the worker running it, once known
    generation: int = -1  # (running) the workers' generation running it
    dead_pid: int | None = None  # (running, after the executor broke) its worker's pid if dead, else 0
    held: Prepared | None = None  # (queued) its decision
    announce: StageRunning | None = None  # (running) sent when its worker begins it
    run_key: str | None = None  # (running) its run-cache key, if it has one
    after: set[str] = field(default_factory=set)  # (behind) the upstream attempts it waits for
    # (running) handed ahead to the worker of this upstream attempt, which decides it;
    # None once that worker began it (or for an attempt the pool decided)
    ahead_of: str | None = None

    @property
    def stage(self) -> str:
        return self.job.stage


# How long a worker watches for its next job after a stage before it sleeps, when that
# stage is a chain's link run alone (`linger_s`): woken from sleep on this machine's two
# cores, a chain's next stage began later (docs/benchmarks.md, nineteenth session).
LINGER_S = 0.0003


def linger_s(attempt: str, attempts: dict[str, Attempt]) -> float:
    """How long the worker about to run `attempt` should stay awake after it: LINGER_S
    when another attempt waits behind it here (its pool hands that one out as soon as
    this one's result is in) and no other attempt is with a worker (a core is free for
    the wait); else 0, and a worker's wait would take the CPU from the others."""
    behind = False
    for name, other in attempts.items():
        if name == attempt:
            continue
        if other.phase is Phase.RUNNING:
            return 0.0
        behind = behind or attempt in other.after
    return LINGER_S if behind else 0.0


def validate(attempts: dict[str, Attempt], unacked: set[str]) -> None:
    """The pool's invariants (checked after every turn of its loop)."""
    for name, a in attempts.items():
        assert a.job.attempt == name, f"{name}: filed under another attempt's name"
        assert name not in unacked, f"{name}: in flight and its result already sent"
        assert (a.generation >= 0) == (a.phase is Phase.RUNNING), f"{name}: a generation but not running"
        assert (a.held is not None) == (a.phase is Phase.QUEUED), f"{name}: a held decision but not queued"
        assert bool(a.after) == (a.phase is Phase.BEHIND), f"{name}: upstream attempts to wait for but {a.phase}"
        if a.stop is not None:
            assert a.phase is Phase.RUNNING and a.cancel is None, f"{name}: a soft stop of {a.phase}"
        if a.dead_pid is not None:
            assert a.phase is Phase.RUNNING, f"{name}: judged dead while {a.phase}"
        if a.ahead_of is not None:
            assert a.phase is Phase.RUNNING and a.announce is None, f"{name}: ahead while {a.phase}"
