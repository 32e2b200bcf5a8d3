"""Unit tests for the state cache (pivot.state.statecache) and the digests it must keep.

Time is simulated: file mtimes are set with os.utime(ns=...) and the cache's clock (the
moment a file is hashed) is a `Clock` the test moves. `reads` counts files whose contents
the cache read, which is how a test proves that a lookup was answered from the cache.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import xxhash
from procs import wait_for

from pivot.state import hashing, statecache
from pivot.state.statecache import STILL_READ_BYTES, StateCache, racy_window_ns

OLD = 1_600_000_000_123_456_789  # an mtime with nanoseconds: window 20 ms
LATER = OLD + 10 * 10**9  # hashing OLD files at LATER gives trusted rows
TREE = {"a.txt": b"a", "sub/b.txt": b"bb", "sub/deeper/c.txt": b"ccc", "z/\u00e9.txt": b""}


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / ".pivot" / "state.db"


@pytest.fixture
def cache(db: Path) -> Iterator[StateCache]:
    with StateCache(db, clock=Clock(LATER)) as c:
        yield c


def write(path: Path, data: bytes, mtime_ns: int = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def rewrite_in_place(path: Path, data: bytes, mtime_ns: int) -> None:
    """Same inode, contents replaced, mtime forced: the stat a same-tick rewrite leaves."""
    inode = path.stat().st_ino
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
    os.utime(path, ns=(mtime_ns, mtime_ns))
    assert path.stat().st_ino == inode


def make_tree(root: Path, files: dict[str, bytes] = TREE) -> Path:
    for rel, data in files.items():
        write(root / rel, data)
    return root


def xxh(data: bytes) -> str:
    return str(xxhash.xxh3_128(data).hexdigest())


# --- the digests lock files depend on -------------------------------------------------------


def test_file_digest_is_xxh3_128_of_the_bytes(tmp_path: Path) -> None:
    f = write(tmp_path / "f", b"pivot\n")
    assert hashing.hash_path(f) == "1482137060b1ea389c7ef941c5f87787" == xxh(b"pivot\n")
    assert hashing.hash_path(write(tmp_path / "e", b"")) == "99aa06d3014798d86001c324468d497f"
    assert StateCache(tmp_path / "s.db").hash_path(f) == xxh(b"pivot\n")


def test_directory_digest_matches_an_independent_implementation(tmp_path: Path) -> None:
    # "a/x" is walked after "b.txt" but sorts between "a.txt" and "b.txt" ('.' < '/')
    files = {**TREE, "b.txt": b"b", "a/x": b"x"}
    d = make_tree(tmp_path / "d", files)
    h = xxhash.xxh3_128()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + xxh(files[rel]).encode() + b"\n")
    expected = "d" + h.hexdigest()
    manifest = sorted((rel, xxh(data)) for rel, data in files.items())
    assert hashing.hash_path(d) == expected
    assert hashing.dir_entries(d) == manifest
    assert hashing.dir_digest(manifest) == expected
    assert hashing.dir_digest(manifest[::-1]) == expected
    assert StateCache(tmp_path / "s.db").hash_path(d) == expected


def test_a_link_to_nothing_in_a_folder_is_left_out_not_the_folder_missing(tmp_path: Path) -> None:
    """An editor's lock file (Emacs' `.#name`, a link to nothing), or a file gone between
    the walk and its read: the folder was "missing" and its stage failed for good."""
    d = make_tree(tmp_path / "d")
    expected = hashing.hash_path(d)
    (d / "sub" / ".#b.txt").symlink_to("user@host.1234:1700000000")
    assert hashing.hash_path(d) == expected
    assert StateCache(tmp_path / "s.db").hash_path(d) == expected
    assert StateCache(tmp_path / "s.db").hash_path(d) == expected  # (the rows known: the same)


# --- files ----------------------------------------------------------------------------------


def test_first_hash_reads_and_another_instance_reads_nothing(db: Path, tmp_path: Path) -> None:
    f = write(tmp_path / "f", b"hello")
    first = StateCache(db)  # real clock: an mtime of 2020 is long past
    assert first.hash_file(f) == xxh(b"hello")
    assert first.reads == 1
    assert first.hash_file(f) == xxh(b"hello")
    assert first.reads == 1
    first.close()
    other = StateCache(db)  # as another process would
    assert other.hash_file(f) == xxh(b"hello")
    assert other.hash_path(f) == xxh(b"hello")
    assert other.reads == 0


def test_a_batched_block_writes_its_rows_at_its_end_and_other_threads_at_once(db: Path, tmp_path: Path) -> None:
    files = [write(tmp_path / f"f{i}", f"data {i}".encode()) for i in range(3)]
    elsewhere = write(tmp_path / "g", b"other thread")
    cache = StateCache(db)
    other = StateCache(db)  # as another process would
    try:
        with cache.batched():
            with cache.batched():  # nested: the outer block writes
                digests = [cache.hash_file(f) for f in files[:2]]
            digests.append(cache.hash_path(files[2]))
            with ThreadPoolExecutor(1) as pool:
                pool.submit(cache.hash_file, elsewhere).result()
            assert [other.recorded(f) for f in files] == [None, None, None]
            assert other.recorded(elsewhere) == xxh(b"other thread")
        assert [other.recorded(f) for f in files] == digests == [xxh(f"data {i}".encode()) for i in range(3)]
    finally:
        cache.close()
        other.close()


def test_a_snapshot_block_answers_each_path_once_and_only_in_its_own_thread(cache: StateCache, tmp_path: Path) -> None:
    f = write(tmp_path / "f", b"one")
    missing = tmp_path / "missing"
    with cache.batched(snapshot=True):
        assert cache.hash_path(f) == xxh(b"one")
        assert cache.hash_path(missing) is None
        write(f, b"three", OLD + 1)
        missing.write_bytes(b"now")
        assert cache.hash_path(f) == xxh(b"one")  # the block's view: one stat and hash per path
        assert cache.hash_path(missing) is None
        assert cache.reads == 1
        with ThreadPoolExecutor(1) as pool:  # another thread sees the files as they are
            assert pool.submit(cache.hash_path, f).result() == xxh(b"three")
    assert cache.hash_path(f) == xxh(b"three")
    assert cache.hash_path(missing) == xxh(b"now")
    with cache.batched():  # no snapshot: each call looks again
        write(f, b"fourth", OLD + 2)
        assert cache.hash_path(f) == xxh(b"fourth")


def test_a_bounded_block_reads_small_files_only_and_stores_nothing(cache: StateCache, db: Path, tmp_path: Path) -> None:
    small, big = write(tmp_path / "small", b"s" * 100), write(tmp_path / "big", b"b" * 5000)
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")  # reading it would block the caller forever
    with cache.reading_at_most(1000):
        assert cache.hash_path(small) == xxh(b"s" * 100)
        for path in (big, tmp_path / "folder", tmp_path / "fifo"):
            with pytest.raises(statecache.NeedsRead):
                cache.hash_path(path)
        assert cache.hash_path(tmp_path / "missing") is None
    assert StateCache(db).recorded(small) is None  # nothing written from the block
    assert cache.hash_path(big) == xxh(b"b" * 5000)  # outside: read, and its row stored
    with cache.reading_at_most(0):  # a file whose stat matches its row is not read
        assert cache.hash_path(big) == xxh(b"b" * 5000)
        with ThreadPoolExecutor(1) as pool:  # the bound is this thread's
            assert pool.submit(cache.hash_path, tmp_path / "folder").result() is not None
    assert cache.reads == 2


def test_a_bounded_block_in_a_batch_holds_its_rows_for_its_caller_to_store(cache: StateCache, db: Path, tmp_path: Path) -> None:
    """The pool's loop decides in a bounded block and hands the rows on (`take_held`):
    dropped, every file it read was read again by the next check."""
    small = write(tmp_path / "small", b"s" * 100)
    with cache.batched(), cache.reading_at_most(1000):
        assert cache.hash_path(small) == xxh(b"s" * 100)
        rows = cache.take_held()
    assert [row[0] for row in rows] == [str(small)]
    assert StateCache(db).recorded(small) is None  # held, not written
    assert StateCache(db).keep_notes([], rows)
    fresh = StateCache(db)
    assert fresh.hash_path(small) == xxh(b"s" * 100)
    assert fresh.reads == 0


def test_forgetting_a_folder_drops_the_rows_a_batch_holds_under_it(cache: StateCache, db: Path, tmp_path: Path) -> None:
    """A folder output's commit forgets the folder's rows (outputs.py `_record`); rows
    of its old files held in the worker's batch would otherwise be written after."""
    folder = make_tree(tmp_path / "out", {"a.txt": b"a", "sub/b.txt": b"b"})
    beside = write(tmp_path / "out.txt", b"beside")
    with cache.batched():
        cache.hash_path(folder)
        cache.hash_path(beside)
        cache.forget(folder)
    fresh = StateCache(db)
    assert not fresh.known(folder)
    assert fresh.recorded(beside) == xxh(b"beside")  # (not under it: kept)


def test_size_change_is_a_new_digest(cache: StateCache, db: Path, tmp_path: Path) -> None:
    f = write(tmp_path / "f", b"one")
    cache.hash_file(f)
    write(f, b"three", OLD)  # same inode and mtime, other size
    fresh = StateCache(db, clock=Clock(LATER))
    assert fresh.hash_file(f) == xxh(b"three")
    assert fresh.reads == 1
    assert cache.hash_file(f) == xxh(b"three")


def test_same_size_rewrite_with_a_new_inode_is_a_new_digest(
    cache: StateCache, db: Path, tmp_path: Path
) -> None:
    f = write(tmp_path / "f", b"one")
    cache.hash_file(f)
    new = write(tmp_path / "f.tmp", b"two", OLD)  # exists alongside f: another inode
    os.replace(new, f)
    assert f.stat().st_mtime_ns == OLD
    assert StateCache(db, clock=Clock(LATER)).hash_file(f) == xxh(b"two")
    assert cache.hash_file(f) == xxh(b"two")


def test_same_size_rewrite_in_the_racy_window_is_detected(db: Path, tmp_path: Path) -> None:
    f = write(tmp_path / "f", b"one")
    clock = Clock(OLD + 5_000_000)  # hashed 5 ms after the write: racy
    racy = StateCache(db, clock=clock)
    assert racy.hash_file(f) == xxh(b"one")
    rewrite_in_place(f, b"two", OLD)  # identical stat, as a rewrite in the same tick leaves
    clock.now = LATER
    assert racy.hash_file(f) == xxh(b"two")
    assert racy.reads == 2
    assert StateCache(db, clock=Clock(LATER)).hash_file(f) == xxh(b"two")


def test_racy_row_is_rehashed_then_trusted(db: Path, tmp_path: Path) -> None:
    f = write(tmp_path / "f", b"one")
    clock = Clock(OLD + 5_000_000)
    c = StateCache(db, clock=clock)
    c.hash_file(f)
    c.hash_file(f)
    assert c.reads == 2  # a racy row is never trusted
    clock.now = LATER
    c.hash_file(f)
    assert c.reads == 3  # re-hashed with a later hashed_at ...
    assert c.hash_file(f) == xxh(b"one")
    assert c.reads == 3  # ... and trusted from then on
    other = StateCache(db, clock=Clock(LATER))
    assert other.hash_file(f) == xxh(b"one")
    assert other.reads == 0


def test_an_old_row_with_an_identical_stat_is_trusted(
    cache: StateCache, db: Path, tmp_path: Path
) -> None:
    # The documented limit: a same-size, same-inode rewrite that restores an mtime hashed
    # long after it was set is not seen.
    f = write(tmp_path / "f", b"one")
    cache.hash_file(f)
    rewrite_in_place(f, b"two", OLD)
    assert StateCache(db, clock=Clock(LATER)).hash_file(f) == xxh(b"one")


@pytest.mark.parametrize(
    ("mtime_ns", "window"),
    [
        (1_600_000_000 * 10**9, 2_020_000_000),  # whole seconds: FAT, ext3, HFS+
        (1_600_000_000_120_000_000, 120_000_000),  # whole ms: exFAT
        (1_600_000_000_123_456_000, 21_000_000),  # whole us
        (OLD, 20_000_000),  # nanoseconds
    ],
)
def test_racy_window_boundary(db: Path, tmp_path: Path, mtime_ns: int, window: int) -> None:
    assert racy_window_ns(mtime_ns) == window
    f = write(tmp_path / "f", b"x", mtime_ns)
    clock = Clock(mtime_ns + window - 1)
    StateCache(db, clock=clock).hash_file(f)
    just_racy = StateCache(db, clock=clock)
    just_racy.hash_file(f)
    assert just_racy.reads == 1
    clock.now = mtime_ns + window  # this re-hash writes a row exactly at the window
    just_racy.hash_file(f)
    trusted = StateCache(db, clock=clock)
    trusted.hash_file(f)
    assert trusted.reads == 0


def test_touch_with_the_same_content_costs_one_read(cache: StateCache, tmp_path: Path) -> None:
    f = write(tmp_path / "f", b"same")
    digest = cache.hash_file(f)
    os.utime(f, ns=(OLD + 10**9, OLD + 10**9))
    assert cache.hash_file(f) == digest
    assert cache.reads == 2
    assert cache.hash_file(f) == digest
    assert cache.reads == 2


def test_missing_file(cache: StateCache, tmp_path: Path) -> None:
    assert cache.hash_path(tmp_path / "nope") is None
    assert cache.hash_path(tmp_path / "no" / "such" / "dir") is None
    under_a_file = write(tmp_path / "data", b"a file") / "x.csv"
    assert cache.hash_path(under_a_file) is None
    with pytest.raises(FileNotFoundError):
        cache.hash_file(tmp_path / "nope")


def test_deleted_file_is_none_after_being_cached(cache: StateCache, tmp_path: Path) -> None:
    f = write(tmp_path / "f", b"x")
    assert cache.hash_path(f) == xxh(b"x")
    f.unlink()
    assert cache.hash_path(f) is None


def test_record_then_lookup_reads_nothing(db: Path, tmp_path: Path) -> None:
    f = write(tmp_path / "out.bin", b"model")
    StateCache(db, clock=Clock(LATER)).record(f, "recorded")  # not the real digest: proves no read
    later = StateCache(db, clock=Clock(LATER))
    assert later.hash_file(f) == "recorded"
    assert later.reads == 0


def test_record_of_a_just_written_file_is_read_once(db: Path, tmp_path: Path) -> None:
    f = write(tmp_path / "out.bin", b"model")
    StateCache(db, clock=Clock(OLD + 1_000_000)).record(f, "recorded")  # 1 ms later: racy
    assert StateCache(db, clock=Clock(LATER)).hash_file(f) == xxh(b"model")


def test_forget(db: Path, cache: StateCache, tmp_path: Path) -> None:
    f = write(tmp_path / "f", b"x")
    d = make_tree(tmp_path / "d")
    cache.hash_file(f)
    cache.hash_path(d)
    cache.forget(f)
    cache.forget(d)
    cache.hash_file(f)
    assert cache.reads == 2 + len(TREE)  # gone from memory and from the database
    fresh = StateCache(db, clock=Clock(LATER))
    fresh.hash_path(d)
    assert fresh.reads == len(TREE)  # everything under the directory is gone too


def test_symlinks_to_a_directory_and_to_a_file(cache: StateCache, tmp_path: Path) -> None:
    real = make_tree(tmp_path / "real")
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    (tmp_path / "flink").symlink_to(real / "a.txt")
    assert cache.hash_file(tmp_path / "alias" / "a.txt") == xxh(b"a")
    assert cache.hash_file(real / "a.txt") == xxh(b"a")
    assert cache.hash_file(tmp_path / "flink") == xxh(b"a")
    assert cache.reads == 2  # directories are resolved; a symlinked file has its own row
    assert cache.hash_path(tmp_path / "alias") == hashing.hash_path(real)
    assert cache.reads == 1 + len(TREE)  # the walk of the alias used real/a.txt's row


def test_rows_written_by_another_instance_after_loading_are_used(db: Path, tmp_path: Path) -> None:
    f = write(tmp_path / "f", b"x")
    early = StateCache(db, clock=Clock(LATER))
    early.hash_file(write(tmp_path / "g", b"g"))  # loads every row there is: none for f
    writer = StateCache(db, clock=Clock(LATER))
    writer.hash_file(f)
    assert early.hash_file(f) == xxh(b"x")
    assert early.reads == 1  # g only: f came from the row the other instance wrote


# --- directories ----------------------------------------------------------------------------


def test_directory_digest_equals_hashing(cache: StateCache, db: Path, tmp_path: Path) -> None:
    d = make_tree(tmp_path / "d")
    (d / "sub" / "link.txt").symlink_to(d / "a.txt")
    (d / "dirlink").symlink_to(d / "sub", target_is_directory=True)  # not descended into
    expected = hashing.hash_path(d)
    assert expected is not None and expected.startswith("d")
    assert cache.hash_path(d) == expected
    assert cache.reads == len(TREE) + 1
    fresh = StateCache(db, clock=Clock(LATER))
    assert fresh.hash_path(d) == expected
    assert fresh.reads == 0
    assert hashing.dir_entries(d, fresh) == hashing.dir_entries(d)


@pytest.mark.parametrize("change", ["add", "remove", "rename", "edit", "move_between_dirs"])
def test_directory_change_changes_the_digest(db: Path, tmp_path: Path, change: str) -> None:
    d = make_tree(tmp_path / "d")
    before = StateCache(db, clock=Clock(LATER)).hash_path(d)
    if change == "add":
        write(d / "sub" / "new.txt", b"")
    elif change == "remove":
        (d / "a.txt").unlink()
    elif change == "rename":
        (d / "a.txt").rename(d / "y.txt")
    elif change == "edit":
        write(d / "sub" / "b.txt", b"BBB")
    else:
        (d / "sub" / "b.txt").rename(d / "z" / "b.txt")
    c = StateCache(db, clock=Clock(LATER))
    after = c.hash_path(d)
    assert after != before
    assert after == hashing.hash_path(d)
    assert c.reads == (0 if change == "remove" else 1)  # only the new or changed path is read


def test_file_replaced_by_a_directory_and_back(cache: StateCache, tmp_path: Path) -> None:
    p = write(tmp_path / "p", b"a")
    assert cache.hash_path(p) == xxh(b"a")
    p.unlink()
    make_tree(p)
    assert cache.hash_path(p) == hashing.hash_path(p)
    assert str(cache.hash_path(p)).startswith("d")
    for rel in TREE:
        (p / rel).unlink()
    for sub in ("sub/deeper", "sub", "z", ""):
        (p / sub).rmdir()
    write(p, b"a")
    assert cache.hash_path(p) == xxh(b"a")


def test_empty_directory(cache: StateCache, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert cache.hash_path(tmp_path / "empty") == hashing.hash_path(tmp_path / "empty")


# --- concurrency and damage -----------------------------------------------------------------


def test_threads_share_one_instance_and_one_db(db: Path, tmp_path: Path) -> None:
    d = make_tree(tmp_path / "d", {f"s{i % 7}/f{i}": bytes([i]) * i for i in range(200)})
    expected = hashing.hash_path(d)
    shared = StateCache(db)
    start = threading.Barrier(8)

    def work(i: int) -> list[str | None]:
        own = StateCache(db)
        start.wait(timeout=10)
        out = [shared.hash_path(d) if i % 2 else own.hash_path(d) for _ in range(5)]
        out.append((shared if i % 2 else own).hash_path(d / "s1" / "f8"))
        own.close()
        return out

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    shared.close()
    assert all(r[:5] == [expected] * 5 and r[5] == xxh(bytes([8]) * 8) for r in results)
    assert StateCache(db).hash_path(d) == expected


def test_busy_db_falls_back_to_hashing(db: Path, tmp_path: Path) -> None:
    f = write(tmp_path / "f", b"x")
    StateCache(db).hash_file(write(tmp_path / "warm", b"w"))  # creates the db in WAL mode
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the write lock
    try:
        busy = StateCache(db, busy_timeout_ms=10)
        assert busy.hash_file(f) == xxh(b"x")
        assert busy.hash_path(make_tree(tmp_path / "d")) == hashing.hash_path(tmp_path / "d")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    after = StateCache(db)
    assert after.hash_file(f) == xxh(b"x")
    assert after.reads == 1  # the busy instance could not store its rows


@pytest.mark.parametrize(
    "garbage", [b"not a database at all" * 100, b"SQLite format 3\0" + b"\xff" * 4000]
)
def test_corrupt_db_is_moved_aside(db: Path, tmp_path: Path, garbage: bytes) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(garbage)
    f = write(tmp_path / "f", b"x")
    c = StateCache(db)
    assert c.hash_file(f) == xxh(b"x")
    assert db.with_name(db.name + ".corrupt").read_bytes() == garbage
    fresh = StateCache(db)
    assert fresh.hash_file(f) == xxh(b"x")
    assert fresh.reads == 0


def test_db_damaged_after_it_was_written_is_moved_aside(db: Path, tmp_path: Path) -> None:
    d = make_tree(tmp_path / "d", {f"f{i}": b"x" * i for i in range(300)})
    with StateCache(db) as first:
        expected = first.hash_path(d)  # closing the last connection checkpoints into db
    with open(db, "r+b") as f:  # a valid header, damaged table pages
        f.seek(4096)
        f.write(b"\xa5" * 16384)
    damaged = StateCache(db)
    assert damaged.hash_path(d) == expected
    assert db.with_name(db.name + ".corrupt").exists()
    fresh = StateCache(db)
    assert fresh.hash_path(d) == expected
    assert fresh.reads == 0  # the damaged instance wrote its rows into the new database


def test_unusable_db_location_falls_back_to_hashing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = write(tmp_path / "blocker", b"a file where the db folder should be")
    f = write(tmp_path / "f", b"x")
    c = StateCache(blocker / "state.db")
    with caplog.at_level(logging.WARNING, logger=statecache.__name__):
        assert c.hash_file(f) == xxh(b"x")
        assert c.hash_file(f) == xxh(b"x")
        assert c.hash_path(make_tree(tmp_path / "d")) == hashing.hash_path(tmp_path / "d")
    assert c.reads == 1 + len(TREE)  # f still remembered in memory
    (warning,) = caplog.records  # given up once, not retried for every file
    assert warning.getMessage().startswith(f"cannot use the state cache {blocker / 'state.db'}")


def test_connection_is_not_used_after_fork(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = write(tmp_path / "f", b"x")
    c = StateCache(db)
    c.hash_file(write(tmp_path / "g", b"g"))  # opens this thread's connection
    inherited = len(statecache._INHERITED)
    real_pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: real_pid + 1)  # as in a forked child
    assert c.hash_file(f) == xxh(b"x")
    assert len(statecache._INHERITED) == inherited + 1  # the parent's connection set aside
    monkeypatch.undo()
    assert StateCache(db).hash_file(f) == xxh(b"x")


def test_close_then_reuse(db: Path, tmp_path: Path) -> None:
    f = write(tmp_path / "f", b"x")
    c = StateCache(db)
    c.hash_file(f)
    c.close()
    c.close()
    assert c.hash_file(f) == xxh(b"x")
    assert c.reads == 1


def test_still_tells_a_file_changed_since_it_was_hashed_without_recording_anything(
    cache: StateCache, tmp_path: Path
) -> None:
    big = STILL_READ_BYTES + 1
    old = write(tmp_path / "dep.txt", b"b" * big)
    digest = cache.hash_path(old)
    assert digest is not None and cache.still(old, digest)
    reads = cache.reads
    write(old, b"a" * big, mtime_ns=OLD + 10**9)  # rewritten while a stage ran
    assert not cache.still(old, digest)
    assert cache.recorded(old) == digest, "still() recorded the new content"
    assert cache.reads == reads  # the stat told it: no content read
    small = write(tmp_path / "small.txt", b"before")  # read: cheaper than asking the store
    small_digest = cache.hash_path(small)
    assert small_digest is not None and cache.still(small, small_digest)
    write(small, b"after!", mtime_ns=OLD)  # same size, same mtime: only its content tells
    assert not cache.still(small, small_digest)
    assert cache.recorded(small) == small_digest
    fresh = tmp_path / "fresh.txt"
    fresh.write_bytes(b"just written")  # mtime now: the stat alone cannot be trusted
    fresh_digest = cache.hash_path(fresh)
    assert fresh_digest is not None and cache.still(fresh, fresh_digest)  # its content says so
    assert not cache.still(tmp_path / "gone.txt", digest)


def test_refresh_stores_racy_rows_once_their_window_passed_and_nothing_else(db: Path, tmp_path: Path) -> None:
    """What a pool does before it exits: the outputs it recorded moments after writing
    them are hashed again once their window passed, so the next check trusts them."""
    clock = Clock(OLD + 1_000_000)  # 1 ms after the writes: every row racy
    racy = write(tmp_path / "racy.txt", b"out")
    big = write(tmp_path / "big.txt", b"x" * 100)
    changed = write(tmp_path / "changed.txt", b"one")
    fresh = write(tmp_path / "fresh.txt", b"new", mtime_ns=OLD + 9_990 * 10**6)
    with StateCache(db, clock=clock) as c:
        for path in (racy, big, changed, fresh):
            c.record(path, xxh(path.read_bytes()))
        rewrite_in_place(changed, b"two", OLD + 5_000_000)  # changed since its row
        clock.now = OLD + 10 * 10**9  # 10 s later; `fresh` was written 10 ms ago
        assert c.refresh([str(p) for p in (racy, big, changed, fresh, tmp_path / "gone.txt")], max_bytes=50) == 1
    with StateCache(db, clock=Clock(LATER)) as other:  # the next check, in another process
        assert other.hash_path(racy) == xxh(b"out")
        assert other.reads == 0  # trusted: not read
        for path in (big, changed, fresh):
            assert other.hash_path(path) == xxh(path.read_bytes())
        assert other.reads == 3  # left racy (or stale): read again


def test_refresh_finds_the_racy_rows_other_processes_stored_after_it_loaded(db: Path, tmp_path: Path) -> None:
    """A pool's exit: its workers (other instances) recorded the outputs moments after
    writing them, after the pool had loaded its rows; more of them than one query asks
    for. Each racy row is found in the store and stored again, trusted."""
    outs = [write(tmp_path / "out" / f"s{i}.txt", f"out {i}".encode()) for i in range(1_234)]
    clock = Clock(OLD + 1_000_000)  # 1 ms after the writes: racy
    with StateCache(db, clock=clock) as pool:
        assert pool.hash_path(write(tmp_path / "in.txt", b"in", mtime_ns=OLD - 10**10)) == xxh(b"in")  # loaded
        with StateCache(db, clock=clock) as worker:
            for path in outs:
                worker.record(path, xxh(path.read_bytes()))
        rewrite_in_place(outs[7], b"out X", OLD + 5_000_000)  # changed since its row: left
        clock.now = LATER  # the exit, once their window passed
        assert pool.refresh([str(p) for p in outs], max_bytes=50) == len(outs) - 1
        assert pool.reads == 1 + len(outs) - 1
    with StateCache(db, clock=Clock(LATER + 10**9)) as check:  # the next no-op
        for path in outs:
            assert check.hash_path(path) == xxh(path.read_bytes())
        assert check.reads == 1  # all but the changed one trusted


def test_notes_are_kept_read_by_another_instance_and_dropped_by_prefix(db: Path) -> None:
    with StateCache(db) as writer:
        assert writer.keep_notes([("log:a", b"# a: ran\n"), ("run-log:k1", b"# a: ran\n"), ("run-log:k2", b"b")])
        assert writer.keep_notes([("log:a", b"# a: ran again\n")])  # replaced
        assert writer.keep_notes([])  # nothing to keep: kept
    with StateCache(db) as reader:
        assert reader.note("log:a") == b"# a: ran again\n"
        assert reader.note("run-log:k2") == b"b"
        assert reader.note("log:nothing") is None
        reader.drop_notes("run-log:")
        assert reader.note("run-log:k1") is None and reader.note("run-log:k2") is None
        assert reader.note("log:a") == b"# a: ran again\n"  # another prefix stays
        with pytest.raises(ValueError):
            reader.drop_notes("")


def test_notes_kept_in_a_batched_block_take_its_rows_along_in_one_transaction(db: Path, tmp_path: Path) -> None:
    f, g = write(tmp_path / "f.txt", b"f"), write(tmp_path / "g.txt", b"g")
    writer = StateCache(db)
    with writer.batched():
        writer.record(f, "digest-f")
        assert not StateCache(db).known(f)  # held until the block ends...
        assert writer.keep_notes([("log:a", b"# a: ran\n")])
        assert StateCache(db).known(f)  # ... or until a note goes, with it
        writer.record(g, "digest-g")
    assert StateCache(db).known(g)
    # A note the database cannot take leaves the rows to the block's end.
    busy = StateCache(db, busy_timeout_ms=10)
    with busy.batched():
        busy.record(f, "digest-f2")
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another writer holds the write lock
        try:
            assert not busy.keep_notes([("log:b", b"x")])
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    assert StateCache(db).recorded(f) == "digest-f2"
    assert StateCache(db).note("log:b") is None


def test_a_writer_waits_for_another_writers_transaction_then_writes(db: Path) -> None:
    StateCache(db).keep_notes([("log:a", b"old")])  # (the database made)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's transaction holds the write lock
    writer = StateCache(db)
    done: list[bool] = []
    thread = threading.Thread(target=lambda: done.append(writer.keep_notes([("log:a", b"new")])))
    thread.start()
    try:
        wait_for(lambda: writer.write_waits > 0, 10.0, "the writer to wait for the lock")
        assert not done
    finally:
        holder.execute("COMMIT")
        holder.close()
    thread.join(10.0)
    assert done == [True] and StateCache(db).note("log:a") == b"new"


def test_notes_that_cannot_be_kept_say_so(db: Path, tmp_path: Path) -> None:
    StateCache(db).keep_notes([("log:a", b"old")])
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the write lock
    try:
        assert not StateCache(db, busy_timeout_ms=10).keep_notes([("log:a", b"new")])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert StateCache(db).note("log:a") == b"old"
    blocker = write(tmp_path / "blocker", b"a file where the db folder should be")
    assert not StateCache(blocker / "state.db").keep_notes([("log:a", b"x")])


def test_a_same_tick_rewrite_during_the_read_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The row's time is taken before the read: the read returns the first bytes, and the
    # file is rewritten (same size, same mtime) as it goes; a row stamped after the read
    # would pass the second content for the first.
    f = write(tmp_path / "f", b"one")
    clock = Clock(OLD + 5_000_000)  # 5 ms after the write: within the window
    real = hashing.hash_file

    def slow_read(path: str) -> str:
        digest = real(path)
        rewrite_in_place(f, b"two", OLD)
        clock.now = LATER  # and the read took long
        return digest

    monkeypatch.setattr(statecache.hashing, "hash_file", slow_read)
    c = StateCache(tmp_path / "s.db", clock=clock)
    assert c.hash_file(f) == xxh(b"one")
    monkeypatch.undo()
    assert c.hash_file(f) == xxh(b"two")
    assert StateCache(tmp_path / "s.db", clock=Clock(LATER)).hash_file(f) == xxh(b"two")


def test_a_record_of_what_was_read_is_timed_before_the_read(tmp_path: Path) -> None:
    # `record` of a file its caller read (a worker committing an output): a rewrite of the
    # same size in the first one's clock tick, after the read, must not pass for it.
    f = write(tmp_path / "f", b"one")
    st = os.stat(f)
    digest = xxh(f.read_bytes())
    rewrite_in_place(f, b"two", OLD)
    with StateCache(tmp_path / "s.db", clock=Clock(LATER)) as late:
        late.record(f, digest, st, read_at_ns=OLD + 5_000_000)
    with StateCache(tmp_path / "s.db", clock=Clock(LATER)) as fresh:
        assert fresh.hash_file(f) == xxh(b"two")


def test_still_reads_a_large_racy_file_whose_stat_is_unchanged(tmp_path: Path) -> None:
    big = STILL_READ_BYTES + 1
    clock = Clock(OLD + 5_000_000)
    c = StateCache(tmp_path / "s.db", clock=clock)
    f = write(tmp_path / "dep.bin", b"a" * big)
    digest = c.hash_path(f)
    assert digest is not None and c.still(f, digest)
    rewrite_in_place(f, b"b" * big, OLD)  # same inode, size and mtime: only the content tells
    clock.now = LATER
    assert not c.still(f, digest)
    c.close()


def test_a_folder_link_pointed_elsewhere_gives_the_new_targets_digests(tmp_path: Path) -> None:
    # The cache keeps each folder's real path (`_key`): a link retargeted since must not
    # answer for the old target's file of the same name, size and mtime.
    a = write(tmp_path / "A" / "f", b"in a")
    write(tmp_path / "B" / "f", b"in b")
    alias = tmp_path / "alias"
    alias.symlink_to(tmp_path / "A")
    with StateCache(tmp_path / "s.db", clock=Clock(LATER)) as c:
        assert c.hash_path(alias / "f") == xxh(b"in a")
        alias.unlink()
        alias.symlink_to(tmp_path / "B")
        assert c.hash_path(alias / "f") == xxh(b"in b")
        assert c.hash_path(a) == xxh(b"in a")
