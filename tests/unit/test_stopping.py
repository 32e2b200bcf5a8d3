"""The engine's stop plan: grace, cancel, give up, answer."""

from __future__ import annotations

from broker.stopping import CANCEL_WAIT_S, StopPlan


def test_running_stages_get_the_grace_then_a_cancel_then_are_given_up() -> None:
    plan = StopPlan()
    assert plan.ask(b"c1", grace_s=5.0, now=10.0) is True
    assert plan.asked and plan.deadlines() == [15.0]
    assert not plan.cancel_due(14.9)
    assert plan.cancel_due(15.0) and not plan.cancel_due(15.1)  # once
    assert plan.deadlines() == [15.0 + CANCEL_WAIT_S]
    assert not plan.give_up_due(15.0) and plan.give_up_due(15.0 + CANCEL_WAIT_S)
    assert plan.answer() == [b"c1"] and plan.deadlines() == [] and plan.waiting == []


def test_a_second_request_with_a_shorter_grace_cuts_the_wait_never_lengthens_it() -> None:
    plan = StopPlan()
    plan.ask(b"c1", grace_s=30.0, now=0.0)
    assert plan.ask(b"c2", grace_s=0.0, now=1.0, reason="crashed") is False
    assert plan.cancel_at == 1.0 and plan.reason == "crashed"
    plan.ask(b"c3", grace_s=60.0, now=2.0)
    assert plan.cancel_at == 1.0 and plan.waiting == [b"c1", b"c2", b"c3"]
    plan.cancel_due(1.0)
    plan.ask(b"c4", grace_s=0.0, now=1.5)  # already cancelling: the give-up time stands
    assert plan.cancel_at is None and plan.give_up_at == 1.0 + CANCEL_WAIT_S
