"""One stage to run, and how it went: the typed records a pool hands a worker and gets
back, shared with `pivot run --foreground` (which runs the stage in its own process).

`Verdict` is the one skip / restore / run branch both take after deciding a stage
(`pivot/state/plan.py`), so they cannot drift apart.

A `ChainLink` is a stage handed to the worker that runs its one unfinished upstream
stage, before that one ended: the worker decides it itself once the upstream stage has
run well there (`LinkBegan` before it runs it, `LinkDecided` if it does not), where the
pool would have decided it after the upstream's result came back (workers/pool.py
`_hand_ahead`).
"""

from __future__ import annotations

import enum
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pivot.protocol.record import Record, record

if TYPE_CHECKING:
    from pivot.pipeline.manifest import StageSpec
    from pivot.state.plan import Prepared

__all__ = [
    "RESUME", "ChainLink", "LinkBegan", "LinkDecided", "StageJob", "StageOutcome", "Verdict", "ended_well", "paused_after",
    "verdict",
]

# Sent by a pool to a worker (pivot/runtime/worker.py `serve`) in place of a job: go on
# after a stage that did not succeed.
RESUME = None


class Verdict(enum.Enum):
    MISSING_DEPS = "missing_deps"  # fails without running: a dependency does not exist
    FROZEN_MISSING = "frozen_missing"  # fails without running: frozen, and an output is gone
    RESTORED = "restored"  # its outputs were placed from the run cache
    SKIPPED = "skipped"  # up to date
    RUN = "run"  # stale: it runs


def verdict(prepared: Prepared) -> Verdict:
    decision = prepared.decision
    if decision.missing_deps:
        return Verdict.MISSING_DEPS
    if decision.frozen_missing:
        return Verdict.FROZEN_MISSING
    if prepared.restored is not None:
        return Verdict.RESTORED
    return Verdict.RUN if decision.run else Verdict.SKIPPED


@record
class StageJob(Record):
    """Everything a worker needs to run one stage and record it (picklable)."""

    root: str
    stage: str
    params: dict[str, Any]
    outs: tuple[str, ...]
    fingerprint: str
    code_parts: dict[str, str]
    dep_hashes: dict[str, str]
    recorded_outs: dict[str, str]  # what the last good run's lock names (preserved first)
    run_key: str
    reason_code: str
    reason: str
    details: dict[str, Any]
    pid_file: str = ""  # the worker writes its pid here (the pool learns who runs what)
    pool_pid: int = 0  # the worker exits if this process is gone (fencing)
    foreground: bool = False  # `pivot run --foreground`: the terminal is the stage's
    persist: tuple[str, ...] = ()  # outputs left in place before the run and after a failure
    uncached: tuple[str, ...] = ()  # outputs hashed but never stored in the cache
    # The project files its code fingerprint was read from -> their digests then: run only
    # on that code (pivot/runtime/freshcode.py `differing`).
    code_sources: dict[str, str] = field(default_factory=dict)
    # After this stage, the worker watches this long for its next job before it sleeps:
    # a chain's next stage, handed out as soon as this one's result is in, finds it awake.
    linger_s: float = 0.0

    @classmethod
    def for_stage(
        cls, root: Path, spec: StageSpec, prepared: Prepared, *, pid_file: str = "", pool_pid: int = 0,
        foreground: bool = False, linger: float = 0.0,
    ) -> StageJob:
        decision, reason = prepared.decision, prepared.reason
        return cls(
            root=str(root), stage=spec.name, params=spec.params, outs=tuple(spec.outs),
            fingerprint=spec.fingerprint, code_parts=spec.code_parts,
            dep_hashes=decision.dep_hashes, recorded_outs=decision.lock.outs if decision.lock else {},
            run_key=prepared.run_key, reason_code=str(reason.code), reason=reason.message,
            details=reason.details, pid_file=pid_file, pool_pid=pool_pid, foreground=foreground,
            persist=spec.persist, uncached=spec.uncached, code_sources=spec.code_sources, linger_s=linger,
        )


@record
class StageOutcome(Record):
    """How a run went: `status` is ran, failed or cancelled; `notes` holds Pivot's own
    remarks (a hand edit saved first, ...) when the run had no attempt files to write
    them to (what it printed went to the attempt's files: pivot/runtime/capture.py)."""

    status: str
    reason_code: str
    reason: str
    duration_s: float
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # A pool's attempt that printed nothing: its worker removed its files and the stage's
    # earlier log, which its pool then need not do (pivot/runtime/worker.py `_tidy`); its
    # log, one head line, is `quiet_head`, which its pool keeps (workers/quietlogs.py).
    tidied: bool = False
    quiet_head: bytes = b""
    # A pool's attempt that ran: the state-cache rows its worker hashed (its outputs), for
    # its pool to store with other stages' (StateCache.take_held).
    rows: list[tuple[str, int, int, int, str, int]] = field(default_factory=list)


Row = tuple[str, int, int, int, str, int]  # a state-cache row (StateCache.take_held)


@record
class ChainLink(Record):
    """A stage to decide and run right after the job named `upstream` (its pid file), in
    the same worker, if that ended well there: skipped, restored or run, as its pool
    would have decided it (`pivot.state.plan.prepare`) once the upstream result was in."""

    root: str
    spec: StageSpec
    upstream: str  # the pid file of the job it follows
    pid_file: str
    pool_pid: int
    force: bool
    producers: dict[str, frozenset[str]]  # its deps' producing stages (for its reasons)
    linger_s: float = 0.0

    @property
    def stage(self) -> str:
        return self.spec.name

    @property
    def outs(self) -> tuple[str, ...]:
        return self.spec.outs

    @property
    def persist(self) -> tuple[str, ...]:
        return self.spec.persist


@record
class LinkBegan(Record):
    """Sent by a worker before it runs a chain link it decided to run: why it runs."""

    reason_code: str
    reason: str
    details: dict[str, Any]
    run_key: str


@record
class LinkDecided(Record):
    """A chain link its worker did not run: decided (`prepared`: skipped, restored, or
    failed without running), its check failed (`error`), or neither: its upstream did
    not end well there (its pool gave it back already). `rows`: what the check hashed."""

    prepared: Prepared | None = None
    error: str | None = None
    rows: list[Row] = field(default_factory=list)


def ended_well(ok: bool, value: object) -> bool:
    """Whether a worker's reply says its job ended well (a chain link after it may go on)."""
    if not ok:
        return False
    if isinstance(value, StageOutcome):
        return value.status == "ran"
    return (isinstance(value, LinkDecided) and value.prepared is not None
            and verdict(value.prepared) in (Verdict.SKIPPED, Verdict.RESTORED))


def paused_after(ok: bool, value: object) -> bool:
    """Whether a worker waits for RESUME after this reply: after a stage that failed (a
    link it decided not to run ran nothing: it goes on)."""
    return not ok or (isinstance(value, StageOutcome) and value.status == "failed")
