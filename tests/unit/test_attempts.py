"""The pool's attempt records and their invariants."""

from __future__ import annotations

import pytest

from pivot.protocol.messages import RunStage
from workers.attempts import Attempt, Phase, validate


def attempt(phase: Phase, **kw: object) -> Attempt:
    return Attempt(RunStage(1, "train", "a1", False), phase, **kw)  # type: ignore[arg-type]


def test_consistent_records_pass() -> None:
    validate({"a1": attempt(Phase.RUNNING, generation=0, stop="inputs changed", kill_at=3.0)}, set())
    validate({"a1": attempt(Phase.DECIDING, cancel="code changed")}, set())


@pytest.mark.parametrize(
    ("record", "unacked", "match"),
    [
        (attempt(Phase.DECIDING, generation=2), set(), "a generation but not running"),
        (attempt(Phase.RUNNING), set(), "a generation but not running"),
        (attempt(Phase.DECIDING, stop="x"), set(), "a soft stop of"),
        (attempt(Phase.RUNNING, generation=0, stop="x", cancel="y"), set(), "a soft stop of"),
        (attempt(Phase.WAITING, dead_pid=7), set(), "judged dead while"),
        (attempt(Phase.DECIDING), {"a1"}, "its result already sent"),
    ],
)
def test_inconsistent_records_fail(record: Attempt, unacked: set[str], match: str) -> None:
    with pytest.raises(AssertionError, match=match):
        validate({"a1": record}, unacked)
