"""What a pool reports for an attempt (workers/outcomes.py), pure."""

from __future__ import annotations

from concurrent.futures import BrokenExecutor

from pivot.protocol.messages import RunStage, StageResult, Status
from pivot.runtime.job import StageOutcome
from pivot.state.decide import Decision
from pivot.state.plan import Prepared
from pivot.state.reasons import Reason, ReasonCode
from workers.attempts import Attempt, Phase
from workers.outcomes import RESEND_S, Outbox, Result, after_decision, after_run

STALE = Reason(ReasonCode.DEPS_CHANGED, "data/in.txt changed", {"paths": ["data/in.txt"]})


def attempt(phase: Phase = Phase.DECIDING, **kw: object) -> Attempt:
    a = Attempt(RunStage(1, "train", "b1w1-1", False), phase)
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def prepared(run: bool = True, missing: tuple[str, ...] = (), restored: dict[str, str] | None = None) -> Prepared:
    return Prepared(Decision(run, (STALE,) if run else (), missing_deps=missing), restored=restored, notes=["a note"])


def test_a_stale_stage_runs() -> None:
    assert after_decision(attempt(), prepared(run=True)) is None


def test_decisions_that_end_the_attempt_without_running_it() -> None:
    skipped = after_decision(attempt(), prepared(run=False))
    assert skipped is not None and skipped.status == Status.SKIPPED
    missing = after_decision(attempt(), prepared(missing=("data/raw.csv",)))
    assert missing == Result(Status.FAILED, ReasonCode.DEP_MISSING, "dependency missing: data/raw.csv",
                             details={"paths": ["data/raw.csv"]})
    restored = after_decision(attempt(), prepared(restored={"out.txt": "abc"}))
    assert restored is not None and restored.status == Status.RESTORED
    assert restored.code == ReasonCode.RESTORED and restored.logs == [("pivot", "a note")]
    failed = after_decision(attempt(), OSError("disk gone"))
    assert failed == Result(Status.FAILED, ReasonCode.FAILED, "could not check the stage: disk gone")


def test_a_cancel_while_deciding_wins_over_the_decision() -> None:
    result = after_decision(attempt(cancel="code changed"), prepared(run=True))
    assert result == Result(Status.CANCELLED, ReasonCode.CANCELLED, "code changed")


def test_a_run_reports_the_stages_own_outcome_with_pivots_notes() -> None:
    outcome = StageOutcome(Status.RAN, "deps_changed", "data changed", 1.5, None, {"k": 1}, ["saved"])
    result = after_run(attempt(Phase.RUNNING, generation=0), outcome)
    assert result == Result(Status.RAN, "deps_changed", "data changed", 1.5, None, [("pivot", "saved")], {"k": 1})


def test_a_soft_cancel_the_stage_obeyed_reports_the_cancels_reason() -> None:
    outcome = StageOutcome(Status.CANCELLED, "cancelled", "SIGUSR1", 0.2)
    a = attempt(Phase.RUNNING, generation=0, stop="inputs changed")
    assert after_run(a, outcome).reason == "inputs changed"
    finished = StageOutcome(Status.RAN, "deps_changed", "it finished first", 0.2)
    assert after_run(a, finished).status == Status.RAN  # its real result stands


def test_a_dead_worker_charges_only_its_own_stage() -> None:
    own = after_run(attempt(Phase.RUNNING, generation=0, dead_pid=4242), BrokenExecutor("worker died"))
    assert own.status == Status.FAILED and own.code == ReasonCode.WORKER_DIED and "4242" in own.reason
    beside = after_run(attempt(Phase.RUNNING, generation=0, dead_pid=0), BrokenExecutor("worker died"))
    assert beside.status == Status.LOST and beside.code == ReasonCode.POOL_LOST


def test_a_hard_cancel_is_cancelled_whatever_the_run_returned() -> None:
    a = attempt(Phase.RUNNING, generation=0, cancel="Pivot is stopping")
    assert after_run(a, BrokenExecutor("killed")).status == Status.CANCELLED
    assert after_run(a, StageOutcome(Status.RAN, "x", "y", 1.0)).status == Status.CANCELLED


def test_pivots_own_failure_is_a_failure_that_names_it() -> None:
    result = after_run(attempt(Phase.RUNNING, generation=0), RuntimeError("pickling failed"))
    assert result.status == Status.FAILED and "RuntimeError: pickling failed" in result.reason


def test_a_leaving_pool_hands_back_its_cancelled_attempts_as_lost() -> None:
    cancelled = Result(Status.CANCELLED, ReasonCode.CANCELLED, "pool stopping")
    assert cancelled.handed_back().status == Status.LOST
    ran = Result(Status.RAN, "deps_changed", "ok")
    assert ran.handed_back() is ran


def test_results_are_resent_until_acknowledged() -> None:
    box = Outbox()
    msg = StageResult("b1w1-1", "train", Status.RAN, "deps_changed", "ok", 1.0, None, [], {}, "inc")
    box.add(msg, now=10.0)
    assert "b1w1-1" in box and box.next_send() == 10.0 + RESEND_S
    assert box.due(10.5) == []
    assert box.due(10.0 + RESEND_S) == [msg]
    assert box.due(10.0 + RESEND_S) == []  # rescheduled
    box.acked("b1w1-1")
    assert not box and box.due(100.0) == [] and box.next_send() is None
