"""What a pool reports for an attempt: the pure decisions of `workers/pool.py`, and the
results waiting for the broker's acknowledgement.

`after_decision` turns a stage's skip / restore / run decision (or its failure) into the
result to report, or None when the stage must run. `after_run` turns how its run ended
into the result: the stage's own outcome, a cancel, a death of its own worker (charged:
failed, `worker_died`) or of another stage's worker (lost: it runs again elsewhere). The
service does the I/O around them: the threads, the workers, the socket.

A result is resent every `RESEND_S` until the broker acknowledges it (`Outbox`).
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor
from dataclasses import field
from typing import Any

from pivot.protocol.messages import StageResult, Status
from pivot.protocol.record import MutableRecord, Record, mutable_record, record
from pivot.runtime.job import StageOutcome, Verdict, verdict
from pivot.state.plan import Prepared
from pivot.state.reasons import ReasonCode
from workers.attempts import Attempt

__all__ = ["RESEND_S", "Outbox", "Result", "after_decision", "after_run"]

RESEND_S = 1.0


@record
class Result(Record):
    status: str
    code: str
    reason: str
    duration_s: float = 0.0
    error: str | None = None
    logs: list[tuple[str, str]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def handed_back(self) -> Result:
        """As reported by a pool that is leaving: its cancelled attempts are lost (they
        run again on another pool), not cancelled."""
        if self.status != Status.CANCELLED:
            return self
        return Result(Status.LOST, ReasonCode.POOL_LOST, self.reason, self.duration_s, self.error, self.logs, self.details)


def after_decision(attempt: Attempt, decided: Prepared | BaseException) -> Result | None:
    """The result of an attempt whose decision came back, or None: it runs."""
    if attempt.cancel is not None:
        return Result(Status.CANCELLED, ReasonCode.CANCELLED, attempt.cancel)
    if isinstance(decided, BaseException):
        return Result(Status.FAILED, ReasonCode.FAILED, f"could not check the stage: {decided}")
    reason = decided.reason
    match verdict(decided):
        case Verdict.MISSING_DEPS:
            missing = list(decided.decision.missing_deps)
            return Result(
                Status.FAILED, ReasonCode.DEP_MISSING, f"dependency missing: {', '.join(missing)}",
                details={"paths": missing},
            )
        case Verdict.FROZEN_MISSING:
            return Result(Status.FAILED, ReasonCode.OUT_MISSING, reason.message, details=reason.details)
        case Verdict.RESTORED:
            notes = [("pivot", note) for note in decided.notes]
            return Result(Status.RESTORED, str(reason.code), reason.message, logs=notes, details=reason.details)
        case Verdict.SKIPPED:
            return Result(Status.SKIPPED, str(reason.code), reason.message)
    return None


def after_run(attempt: Attempt, ran: StageOutcome | BaseException) -> Result:
    """The result of an attempt whose run ended. For a run the executor lost
    (`BrokenExecutor`), the attempt's `dead_pid` must be judged already: its own worker's
    pid if that died, else 0."""
    if attempt.cancel is not None:  # its worker was stopped on purpose
        return Result(Status.CANCELLED, ReasonCode.CANCELLED, attempt.cancel)
    if isinstance(ran, BrokenExecutor):
        if attempt.dead_pid:
            why = " ".join(str(ran).split())  # (words that may span lines; a reason is one)
            return Result(Status.FAILED, ReasonCode.WORKER_DIED, f"its worker process (pid {attempt.dead_pid}) died: {why}")
        return Result(Status.LOST, ReasonCode.POOL_LOST, "another stage's worker process died; it runs again")
    if isinstance(ran, BaseException):  # the stage's own errors come as its outcome: this is ours
        return Result(Status.FAILED, ReasonCode.FAILED, f"Pivot could not run the stage: {type(ran).__name__}: {ran}")
    logs = [("pivot", note) for note in ran.notes]
    # A soft cancel the stage obeyed: the cancel's reason, not the stage's.
    reason = attempt.stop if attempt.stop is not None and ran.status == Status.CANCELLED else ran.reason
    return Result(ran.status, ran.reason_code, reason, ran.duration_s, ran.error, logs, ran.details)


@mutable_record
class _Unacked(MutableRecord):
    msg: StageResult
    next_send: float


class Outbox:
    """Results sent and not yet acknowledged, each resent every RESEND_S."""

    def __init__(self) -> None:
        self._unacked: dict[str, _Unacked] = {}

    def __contains__(self, attempt: object) -> bool:
        return attempt in self._unacked

    def __bool__(self) -> bool:
        return bool(self._unacked)

    def names(self) -> set[str]:
        return set(self._unacked)

    def status(self, attempt: str) -> str | None:
        """The status `attempt` was reported with, while not yet acknowledged."""
        pending = self._unacked.get(attempt)
        return None if pending is None else pending.msg.status

    def add(self, msg: StageResult, now: float) -> None:
        self._unacked[msg.attempt] = _Unacked(msg, now + RESEND_S)

    def acked(self, attempt: str) -> None:
        self._unacked.pop(attempt, None)

    def due(self, now: float) -> list[StageResult]:
        """The results to send again now (their next resend is scheduled)."""
        out = []
        for pending in self._unacked.values():
            if now >= pending.next_send:
                out.append(pending.msg)
                pending.next_send = now + RESEND_S
        return out

    def next_send(self) -> float | None:
        return min((p.next_send for p in self._unacked.values()), default=None)
