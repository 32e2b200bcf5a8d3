"""LockPrefetch (pivot/state/lock.py): every lock read in a thread while the loader runs,
each handed out once; what it could not use is read (and explained) as before."""

from __future__ import annotations

from pathlib import Path

from pivot.state.hashing import hash_path
from pivot.state.lock import LockPrefetch, StageLock, lock_path, read_lock, write_lock
from pivot.state.outputs import ProjectState


def lock(stage: str, code: str = "c1") -> StageLock:
    return StageLock(stage, code, {"n": 1}, {"in.txt": "d1"}, {"out.txt": "o1"}, {})


def test_it_hands_out_each_lock_once_and_reads_the_rest_from_disk(tmp_path: Path) -> None:
    for name in ("a", "sub/dvc.yaml:b"):
        write_lock(tmp_path, lock(name))
    lock_path(tmp_path, "broken").write_text("{not json")
    read = LockPrefetch(tmp_path).reader()
    assert read(tmp_path, "a") == lock("a")
    assert read(tmp_path, "sub/dvc.yaml:b") == lock("sub/dvc.yaml:b")  # its escaped file name
    assert read(tmp_path, "broken") is None and read(tmp_path, "never") is None
    # Handed out once: a lock written since is read from disk, never an old copy.
    write_lock(tmp_path, lock("a", "c2"))
    assert read(tmp_path, "a") == lock("a", "c2") == read_lock(tmp_path, "a")


def test_a_project_that_never_ran_has_nothing_to_prefetch(tmp_path: Path) -> None:
    read = LockPrefetch(tmp_path).reader()
    assert read(tmp_path, "a") is None


def test_with_the_state_cache_it_hashes_the_files_the_locks_name(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("input\n")
    (tmp_path / "out.txt").write_text("output\n")
    (tmp_path / "other.txt").write_text("other\n")
    write_lock(tmp_path, lock("a"))  # names in.txt and out.txt
    state = ProjectState.open(tmp_path)
    try:
        prefetch = LockPrefetch(tmp_path, state.hashes)
        hasher = prefetch.hasher(state.hashes)
        named = {str(tmp_path / "in.txt"), str(tmp_path / "out.txt")}
        assert set(prefetch.digests) == named
        for path in named:
            assert prefetch.digests[path] == hash_path(Path(path))
        before = state.hashes.reads
        assert hasher.hash_path(str(tmp_path / "in.txt")) == hash_path(tmp_path / "in.txt")
        assert state.hashes.reads == before  # answered from what the thread hashed
        # A file no lock names is hashed when asked, as the state cache would.
        assert hasher.hash_path(str(tmp_path / "other.txt")) == hash_path(tmp_path / "other.txt")
        assert hasher.hash_path(str(tmp_path / "gone.txt")) is None
    finally:
        state.close()


def test_without_the_state_cache_it_hashes_nothing(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("input\n")
    write_lock(tmp_path, lock("a"))
    prefetch = LockPrefetch(tmp_path)
    prefetch.join()
    assert prefetch.digests == {}


def test_a_fifo_a_lock_names_is_left_to_the_decision_not_read(tmp_path: Path) -> None:
    """Every lock's files are hashed ahead, a removed stage's too: one naming a fifo made
    `pivot status` wait for a writer for good."""
    import os

    (tmp_path / "in.txt").write_text("input\n")
    (tmp_path / "out.txt").write_text("output\n")
    os.mkfifo(tmp_path / "pipe")
    write_lock(tmp_path, lock("a"))
    write_lock(tmp_path, StageLock("gone", "c1", {}, {"pipe": "d1"}, {}, {}))
    state = ProjectState.open(tmp_path)
    try:
        prefetch = LockPrefetch(tmp_path, state.hashes)
        prefetch.thread.join(10)
        if prefetch.thread.is_alive():  # let it go: a writer opens and closes the fifo
            os.close(os.open(tmp_path / "pipe", os.O_WRONLY | os.O_NONBLOCK))
        assert not prefetch.thread.is_alive(), "the prefetch waited on the fifo"
        assert set(prefetch.digests) == {str(tmp_path / "in.txt"), str(tmp_path / "out.txt")}
    finally:
        prefetch.join()
        state.close()
