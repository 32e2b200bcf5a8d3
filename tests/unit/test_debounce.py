"""The broker's change queue: quiet window, one batch out at a time, causes."""

from __future__ import annotations

from broker.debounce import ChangeQueue


def test_a_batch_goes_out_after_the_quiet_window_and_one_at_a_time() -> None:
    q = ChangeQueue(debounce_s=0.02, max_wait_s=5.0)
    assert q.deadline() is None and q.take(1.0, lambda p: True) is None
    q.report(("a.txt",), 1.0, "m1")
    q.report(("b.txt",), 1.01, "m2")
    assert q.deadline() == 1.01 + 0.02
    assert q.take(1.02, lambda p: True) is None  # still quiet-windowed
    assert q.take(1.04, lambda p: True) == ("a.txt", "b.txt")
    q.report(("c.txt",), 1.05)
    assert q.take(2.0, lambda p: True) is None  # the first batch is still being checked
    assert q.checked() == ("a.txt", "b.txt")
    assert q.take(2.0, lambda p: True) == ("c.txt",)


def test_a_stream_of_changes_still_goes_out_after_the_longest_wait() -> None:
    q = ChangeQueue(debounce_s=0.5, max_wait_s=1.0)
    for i in range(20):
        q.report((f"f{i}",), i * 0.1)
    assert q.deadline() == 1.0  # the first report + max_wait, not the last + debounce


def test_paths_held_back_keep_waiting_and_causes_name_the_first_report() -> None:
    q = ChangeQueue(debounce_s=0.0, max_wait_s=1.0)
    q.report(("data.csv", "pipeline.py"), 0.0, "m1")
    assert q.take(0.0, lambda p: p.endswith(".py")) == ("pipeline.py",)
    assert list(q.waiting) == ["data.csv"] and q.first == 0.0
    q.checked()
    assert q.cause_of(["data.csv"]) == "m1" and q.causes == {"pipeline.py": "m1"}
    q.forget(["pipeline.py"])
    q.clear()
    assert q.causes == {} and q.deadline() is None
