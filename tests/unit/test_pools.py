"""The broker's pool table: slots, liveness and fencing (broker/pools.py), pure."""

from __future__ import annotations

import pytest

from broker.pools import FENCE_MARGIN_S, PoolInfo, PoolTable


def table(**pools: PoolInfo) -> PoolTable:
    t = PoolTable(heartbeat_s=1.0, liveness=3)
    for name, info in pools.items():
        t.add(name, info)
    return t


def pool(slots: int = 2, heard: float = 0.0, **kw: object) -> PoolInfo:
    info = PoolInfo(slots, heard, heard, **kw)  # type: ignore[arg-type]
    info.current = True
    return info


def test_free_slots_count_own_and_foreign_attempts_and_skip_pools_not_current_or_leaving() -> None:
    busy = pool(2, attempts={"a1"}, foreign={"old": "s"})
    stale = pool(2)
    stale.current = False
    leaving = pool(2)
    leaving.leaving = True
    t = table(p1=pool(3, attempts={"a2"}), busy=busy, stale=stale, leaving=leaving)
    assert t.free_slots() == {"p1": 2}
    assert t.foreign_stages() == {"s"}


def test_tags_and_mismatched_stages_decide_what_a_pool_takes() -> None:
    gpu = pool(tags=frozenset({"gpu", "big"}), mismatched=frozenset({"old"}))
    assert gpu.takes("fit", frozenset({"gpu"}))
    assert not gpu.takes("fit", frozenset({"tpu"}))
    assert not gpu.takes("old", frozenset())
    t = table(gpu=gpu)
    assert t.any_has(frozenset({"big"})) and not t.any_has(frozenset({"tpu"}))


def test_tick_heartbeats_quiet_links_and_reports_silent_pools() -> None:
    t = table(quiet=pool(heard=0.0), chatty=pool(heard=3.5))
    t.tick(2.0)  # (the broker runs: it ticks)
    t.sent("chatty", 3.5)
    due = t.tick(3.6)
    assert due.silent == [("quiet", pytest.approx(3.6))]
    assert due.heartbeats == []
    assert t.tick(4.6).heartbeats == ["chatty"]


def test_a_broker_that_did_not_run_gives_every_pool_a_fresh_window() -> None:
    t = table(p=pool(heard=0.0))
    assert t.tick(0.5).silent == []
    due = t.tick(60.0)  # stopped (Ctrl-Z) for a minute: the silence was the broker's
    assert due.silent == []
    assert t.get("p") is not None and t["p"].last_heard == 60.0


def test_a_broker_stopped_before_its_first_tick_gives_every_pool_a_fresh_window() -> None:
    """The process group of a `pivot repro` stopped (SIGSTOP) 0.25 s in, for 8 s: its
    broker's first tick came after, and took the whole stop for the pool's silence (the
    run ended "pool lost", exit 1, the pool having run every stage: a new-user hunt)."""
    t = table(p=pool(heard=0.0))
    due = t.tick(8.0)
    assert due.silent == [] and t["p"].last_heard == 8.0
    t.tick(9.0)
    t.tick(10.0)
    assert t.tick(11.2).silent == [("p", pytest.approx(3.2))]  # then silent while it runs: lost


def test_fenced_attempts_are_released_after_the_silence_plus_the_margin() -> None:
    t = table()
    t.tick(10.0)
    t.fence("gone", ["a1", "a2"], "no heartbeat")
    assert t.is_fenced("gone") and t.held() == {"a1", "a2"}
    assert t.tick(10.0 + t.silence_s + FENCE_MARGIN_S - 0.1).released == []
    assert t.tick(10.0 + t.silence_s + FENCE_MARGIN_S).released == ["gone"]
    fenced = t.release("gone")
    assert fenced is not None and fenced.attempts == ["a1", "a2"]
    assert t.release("gone") is None and t.held() == set()


def test_a_fenced_pool_back_keeps_what_it_still_runs() -> None:
    t = table()
    t.fence("p", ["a1", "a2"], "no heartbeat")
    t.keep_fenced_except("p", {"a1"})
    fenced = t.release("p")
    assert fenced is not None and fenced.attempts == ["a2"]


def test_a_leaving_pool_is_forgotten_once_nothing_of_it_is_out() -> None:
    p = pool(attempts={"a1"})
    p.leaving = True
    t = table(p=p)
    assert not t.forget_if_left("p")
    p.attempts.clear()
    assert t.forget_if_left("p") and "p" not in t


def test_validate_catches_a_pool_over_its_slots_and_an_attempt_fenced_and_in_flight() -> None:
    t = table(p=pool(1, attempts={"a1", "a2"}))
    with pytest.raises(AssertionError, match="over its slots"):
        t.validate()
    t = table(p=pool(2, attempts={"a1"}))
    t.fence("p", ["a1"], "x")
    with pytest.raises(AssertionError, match="both fenced and in flight"):
        t.validate()
