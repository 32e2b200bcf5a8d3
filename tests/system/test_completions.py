"""The watcher's completions reader against real files and a real inotify instance.

The kernel queues an event in the writing call itself, so what a test wrote is in the
reader's queue by the time `drain()` runs: no waiting is needed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import wait_for

from pivot.watch.completions import Completions, open_completions
from pivot.watch.plan import WatchPlan
from pivot.watch.rules import IgnoreRules


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for folder in ("a", "b", "a/deep"):
        (tmp_path / folder).mkdir()
    return tmp_path


@pytest.fixture
def reader(root: Path) -> Iterator[Completions]:
    found = open_completions(root, IgnoreRules(root))
    assert found is not None, "inotify is available on the machines this runs on"
    yield found
    found.close()


def drained(reader: Completions) -> Completions:
    reader.drain(time.monotonic())
    return reader


def test_a_file_is_open_until_closed_then_complete(root: Path, reader: Completions) -> None:
    reader.sync(WatchPlan(recursive=frozenset({""})))
    with open(root / "a" / "x.csv", "w") as f:
        f.write("half")
        f.flush()
        now = time.monotonic()
        assert "a/x.csv" in drained(reader).open and reader.withholds("a/x.csv", now)
        assert "a/x.csv" not in reader.changed
    assert list(drained(reader).changed) == ["a/x.csv"] and not reader.open
    assert reader.take(time.monotonic()) == ["a/x.csv"]
    assert reader.echo("a/x.csv", time.monotonic())  # untouched since it was taken
    (root / "a" / "x.csv").write_text("again")
    drained(reader)
    assert not reader.echo("a/x.csv", time.monotonic())  # touched: a real change


def test_a_rename_into_place_and_a_link_are_complete_as_they_come(
    root: Path, reader: Completions, tmp_path_factory: pytest.TempPathFactory
) -> None:
    reader.sync(WatchPlan(recursive=frozenset({""})))
    staged = tmp_path_factory.mktemp("outside") / "staged"
    staged.write_text("whole")
    os.replace(staged, root / "b" / "moved.csv")
    os.link(root / "b" / "moved.csv", root / "b" / "linked.csv")
    drained(reader)
    assert list(reader.changed) == ["b/moved.csv", "b/linked.csv"] and not reader.open


def test_a_file_a_copy_fills_in_one_call_is_open_until_the_copy_closes_it(
    root: Path, reader: Completions, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`cp` and `shutil.copyfile` fill a new file in one call (copy_file_range,
    sendfile), whose only modify event comes at its end: the file, created with bytes in
    it by the time its creation is read, was taken for a hard link and reported complete,
    half copied (a `cp -r` into a folder dep: a wave per file, each reading one half
    written)."""
    import shutil
    import threading

    reader.sync(WatchPlan(recursive=frozenset({""})))
    source = tmp_path_factory.mktemp("outside") / "big.bin"
    with open(source, "wb") as f:
        f.truncate(256 << 20)  # (sparse: made at once, copied byte by byte)
    target = root / "a" / "big.bin"
    copy = threading.Thread(target=shutil.copyfile, args=(source, target))
    copy.start()
    try:
        # Its creation is read once it has bytes (a busy machine's watcher reads it then).
        wait_for(lambda: target.exists() and target.stat().st_size > 0, 20, "the copy's first bytes")
        drained(reader)
        copying = copy.is_alive()
        seen_open, seen_complete = "a/big.bin" in reader.open, "a/big.bin" in reader.changed
    finally:
        copy.join(60)
    assert copying, "the copy was over before its file's creation was read: nothing to judge"
    assert seen_open and not seen_complete
    assert list(drained(reader).changed) == ["a/big.bin"] and not reader.open  # (closed: complete)


def test_a_burst_ends_once_a_file_beside_it_begun_around_it_is_closed(root: Path, reader: Completions) -> None:
    """A save beside a file being written (the next file of a copy, a slow writer) waits
    for its close: a stage reading the folder, or both files, ran on the half-written
    one, then again. A file in another folder or in the project's own, or one written
    since long before (a log), holds nothing."""
    from pivot.watch.completions import BESIDE_S

    reader.sync(WatchPlan(recursive=frozenset({""})))
    with open(root / "a" / "big.csv", "w") as big:
        big.write("half")
        big.flush()
        (root / "a" / "small.csv").write_text("saved")
        assert drained(reader).burst(time.monotonic() + 1) == "going"
        assert not reader.wake()  # (the watcher reads watchfiles meanwhile; the close wakes it)
    assert drained(reader).burst(time.monotonic() + 1) == "settled"
    assert sorted(reader.take(time.monotonic())) == ["a/big.csv", "a/small.csv"]

    with open(root / "b" / "other.csv", "w") as other:  # (another folder)
        other.write("half")
        other.flush()
        (root / "a" / "small.csv").write_text("saved again")
        assert drained(reader).burst(time.monotonic() + 1) == "settled"
    reader.take(time.monotonic())
    drained(reader)

    with open(root / "big.csv", "w") as top:  # (the project's own folder: files of every kind)
        top.write("half")
        top.flush()
        (root / "probe.txt").write_text("saved")
        assert drained(reader).burst(time.monotonic() + 1) == "settled"
    reader.take(time.monotonic())
    drained(reader)

    with open(root / "a" / "run.log", "w") as log:  # (written since long before the save)
        log.write("line\n")
        log.flush()
        reader.drain(time.monotonic() - 2 * BESIDE_S)
        (root / "a" / "small.csv").write_text("and again")
        assert drained(reader).burst(time.monotonic() + 1) == "settled"


def test_a_folder_event_leaves_the_burst_to_the_watcher(root: Path, reader: Completions) -> None:
    reader.sync(WatchPlan(recursive=frozenset({""})))
    (root / "b" / "new").mkdir()
    (root / "b" / "new" / "f.csv").write_text("1")
    assert drained(reader).burst(time.monotonic() + 1) == "unsure"
    reader.forget_burst()
    assert reader.watches("b/new/f.csv")  # the new folder is watched by then
    (root / "b" / "new" / "g.csv").write_text("2")
    assert drained(reader).burst(time.monotonic() + 1) == "settled"


def test_the_reader_takes_no_more_watches_than_its_budget(root: Path, reader: Completions) -> None:
    reader.budget = 2
    reader.sync(WatchPlan(recursive=frozenset({""})))
    watched = [rel for rel in ("x", "a/x", "b/x", "a/deep/x") if reader.watches(rel)]
    assert len(watched) == 2, watched


def test_a_file_left_open_is_let_go_after_the_hold(root: Path, reader: Completions) -> None:
    # A log kept open for hours must not be held back for good: after OPEN_HOLD_S its
    # changes are reported as they come (its next write holds it again).
    from pivot.watch.completions import OPEN_HOLD_S

    reader.sync(WatchPlan(recursive=frozenset({""})))
    with open(root / "a" / "run.log", "w") as f:
        f.write("line\n")
        f.flush()
        since = drained(reader).open["a/run.log"]
        assert reader.withholds("a/run.log", since)
        assert reader.next_release(since) == pytest.approx(OPEN_HOLD_S)
        later = since + OPEN_HOLD_S
        assert not reader.withholds("a/run.log", later)
        assert reader.next_release(later) is None and "a/run.log" not in reader.open


def test_a_queue_overflow_forgets_what_was_reported(root: Path, reader: Completions) -> None:
    # The kernel dropped events: nothing can say any more that a report repeats one made
    # here.
    reader.sync(WatchPlan(recursive=frozenset({""})))
    (root / "a" / "x.csv").write_text("x")
    assert drained(reader).take(time.monotonic()) == ["a/x.csv"]
    assert reader.echo("a/x.csv", time.monotonic())
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    for i in range(limit // 2 + 100):  # (two or three events each: created, written, closed)
        (root / "b" / f"{i}.txt").write_text("x")
    assert not drained(reader).echo("a/x.csv", time.monotonic())
