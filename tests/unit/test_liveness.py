"""The pool's view of its broker's liveness (workers/liveness.py), pure."""

from __future__ import annotations

from workers.liveness import HELLO_EVERY_S, BrokerWatch, Due


def watch(standalone: bool = False, give_up_after: float | None = None) -> BrokerWatch:
    w = BrokerWatch(0.0, standalone=standalone, give_up_after=give_up_after)
    w.welcomed(1.0, 3)
    w.sent(0.0)
    return w


def test_heartbeats_when_nothing_else_went_out_for_an_interval() -> None:
    w = watch()
    assert w.due(0.5) == Due()
    assert w.due(1.0) == Due(heartbeat=True)
    w.sent(1.0)
    w.heard(1.0)
    assert w.due(1.5) == Due() and w.next_deadline() == 2.0


def test_a_pool_its_engine_started_fences_and_exits_once_the_broker_is_silent() -> None:
    w = watch(standalone=False)
    w.sent(3.0)
    assert not w.silent(3.0)
    assert w.due(3.01) == Due(fence=True, give_up=True)


def test_a_standalone_pool_fences_once_says_hello_again_and_gives_up_only_after_its_timeout() -> None:
    w = watch(standalone=True, give_up_after=10.0)
    first = w.due(3.5)
    assert first.fence and first.hello and not first.give_up
    second = w.due(3.6)
    assert not second.fence and not second.hello  # fenced already; next hello in a second
    assert w.due(3.5 + HELLO_EVERY_S).hello
    assert w.due(10.5).give_up


def test_a_standalone_pool_without_a_timeout_never_gives_up() -> None:
    w = watch(standalone=True)
    assert not w.due(3600.0).give_up


def test_a_welcome_ends_the_fence() -> None:
    w = watch(standalone=True)
    assert w.due(4.0).fence
    w.heard(4.5)
    w.welcomed(0.5, 4)
    assert w.due(4.6) == Due(heartbeat=True)  # the broker's settings: 0.5 s
    assert w.due(6.6).fence  # silent again: fenced again
