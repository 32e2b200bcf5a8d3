"""Reloads of the pipeline's code, one at a time (broker/reload.py), pure."""

from __future__ import annotations

from broker.reload import Reload


def test_one_reload_at_a_time_and_changes_meanwhile_make_one_follow_up() -> None:
    r = Reload()
    assert r.begin(True, ["pipeline.py"]) is True
    assert r.active and r.trigger == ("code", ["pipeline.py"])
    assert r.begin(False, ["params.yaml"]) is False
    assert r.begin(True, ["helpers.py"]) is False
    assert r.answered() == (True, ["helpers.py", "params.yaml", "pipeline.py"])
    assert not r.active
    assert r.begin(True, ["helpers.py"]) is True  # the follow-up, begun by the broker


def test_a_params_only_follow_up_does_not_restart_workers() -> None:
    r = Reload()
    r.begin(True, ["pipeline.py"])
    r.begin(False, ["params.yaml"])
    assert r.answered() == (False, ["params.yaml", "pipeline.py"])


def test_an_answer_without_a_follow_up_or_without_a_reload_out() -> None:
    r = Reload()
    assert r.answered() is None
    r.begin(False, ["params.yaml"])
    assert r.trigger == ("params", ["params.yaml"])
    assert r.answered() is None and not r.active


def test_carried_stages_are_taken_once() -> None:
    r = Reload()
    r.carry |= {"a", "b"}
    assert r.take_carry() == {"a", "b"}
    assert r.take_carry() == set()
