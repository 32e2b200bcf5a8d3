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


def test_a_lone_save_skips_the_window_and_reports_near_each_other_are_a_burst() -> None:
    q = ChangeQueue(debounce_s=0.02, max_wait_s=5.0)
    q.report(("a.txt",), 1.0, settled=True)
    assert q.deadline() == 1.0
    q.report(("b.txt",), 1.001, settled=True)  # another one at once: a burst
    assert q.deadline() == 1.001 + 0.02
    assert q.take(1.03, lambda p: True) == ("a.txt", "b.txt")
    q.checked()
    q.report(("d.txt",), 2.0, settled=True)  # a window of quiet before it: lone
    assert q.deadline() == 2.0
    q.report(("e.txt",), 2.001)  # an unsettled one joining: a burst
    assert q.deadline() == 2.001 + 0.02
    assert q.take(2.03, lambda p: True) == ("d.txt", "e.txt")
    q.checked()
    q.report(("out.txt",), 3.0, counts=False)  # a wave's own outputs: no window...
    assert q.deadline() == 3.0
    assert q.take(3.0, lambda p: True) == ("out.txt",)
    q.checked()
    q.report(("f.txt",), 3.001, settled=True)  # ...and no burst for a save after them
    assert q.deadline() == 3.001


def test_paths_held_back_wait_a_window_then_go_at_once_when_resumed() -> None:
    q = ChangeQueue(debounce_s=0.02, max_wait_s=5.0)
    q.report(("out.csv",), 1.0, settled=True)
    assert q.take(1.0, lambda p: False) is None  # busy: held back...
    assert q.deadline() == 1.0 + 0.02  # ...and looked at once a window, not at every wake
    q.report(("log.txt",), 1.01)  # unsettled: written while the wave ran
    assert q.deadline() == 1.01 + 0.02
    q.resume()  # the wave finished
    assert q.deadline() == 1.0
    assert q.take(1.011, lambda p: True) == ("out.csv", "log.txt")
    q.checked()
    q.report(("next.csv",), 2.0)
    assert q.deadline() == 2.0 + 0.02  # nothing held back: the window as usual
    q.resume()  # (a wave that held nothing back finished)
    assert q.deadline() == 2.0 + 0.02
