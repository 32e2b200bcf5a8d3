"""The pool's attempt records and their invariants."""

from __future__ import annotations

import pytest

from pivot.protocol.messages import RunStage
from workers.attempts import LINGER_S, Attempt, Phase, linger_s, validate


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


def _named(name: str, phase: Phase, **kw: object) -> Attempt:
    return Attempt(RunStage(1, f"stage-{name}", name, False), phase, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("others", "lingers"),
    [
        # A chain's next link waits behind it, no other stage is with a worker: stay awake.
        ({"b": _named("b", Phase.BEHIND, after={"a"})}, True),
        # Nothing waits behind it: the next stage, if any, comes from the broker later.
        ({}, False),
        ({"b": _named("b", Phase.BEHIND, after={"z"})}, False),
        ({"b": _named("b", Phase.QUEUED)}, False),
        # Another stage is with a worker: no core is free for the wait.
        ({"b": _named("b", Phase.BEHIND, after={"a"}), "c": _named("c", Phase.RUNNING, generation=0)}, False),
    ],
)
def test_a_worker_lingers_only_for_a_chain_run_alone(others: dict[str, Attempt], lingers: bool) -> None:
    attempts = {"a": _named("a", Phase.QUEUED), **others}
    assert linger_s("a", attempts) == (LINGER_S if lingers else 0.0)
