"""The lock reader the `pivot` script forks beside the loader for a project with many
locks (pivot/launch/early.py `fork_lock_reader`): `LockPrefetch` takes its answer, which
must be what its own thread would have read and hashed, and reads them itself when the
reader failed; one no command takes is killed."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pivot.launch import early
from pivot.state.lock import LockPrefetch, StageLock, read_lock, write_lock
from pivot.state.outputs import ProjectState

# Params of every type a lock holds: the decision compares their types (1 is not 1.0).
PARAMS: dict[str, Any] = {"n": 1, "lr": 0.5, "whole": 1.0, "flag": True, "none": None,
                          "xs": [1, 2.0, "three"], "nested": {"a": {"b": [False]}}}


def _project(root: Path, params: dict[str, Any] = PARAMS) -> dict[str, StageLock]:
    locks = {}
    # Two stages of one function share their code's parts, a third has its own: the
    # reader sends each distinct map once.
    for name, parts in (("a", {"pipeline.f": "x"}), ("sub/dvc.yaml:b", {"pipeline.f": "x"}),
                        ("c", {"pipeline.g": "y", "pipeline.f": "x"})):
        dep, out = root / f"{name[-1]}.in", root / f"{name[-1]}.out"
        dep.write_text(f"{name} in\n")
        out.write_text(f"{name} out\n")
        locks[name] = StageLock(name, "c1", params, {dep.name: "d"}, {out.name: "o"}, parts)
        write_lock(root, locks[name])
    (root / ".pivot" / "stages" / "broken.lock").write_text("{not json")
    return locks


@pytest.fixture
def reader_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path.resolve()
    yield root
    early.discard()  # (a reader a failing test left untaken)


def _prefetched(root: Path) -> tuple[dict[str, StageLock | None], dict[str, str | None], set[str]]:
    """What a LockPrefetch hands out (the stages whose locks came from a reader)."""
    state = ProjectState.open(root)
    try:
        prefetch = LockPrefetch(root, state.hashes)
        prefetch.join()
        from_reader = set(prefetch.fields)
        read = prefetch.reader()
        locks = {name: read(root, name) for name in ("a", "sub/dvc.yaml:b", "c", "broken", "never")}
        return locks, dict(prefetch.digests), from_reader
    finally:
        state.close()


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _types(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_types(item) for item in value]
    return type(value).__name__


def _fork(root: Path) -> early.EarlyLocks:
    reader = early.fork_lock_reader(str(root))
    assert reader is not None
    return reader


def test_a_forked_reader_answers_what_the_thread_would_read(reader_root: Path) -> None:
    written = _project(reader_root)
    by_thread, thread_digests, _ = _prefetched(reader_root)
    assert by_thread == {**written, "broken": None, "never": None}

    reader = _fork(reader_root)
    by_reader, reader_digests, from_reader = _prefetched(reader_root)
    assert early.take_locks(str(reader_root)) is None  # taken by the prefetch
    with pytest.raises(ChildProcessError):
        os.waitpid(reader.pid, os.WNOHANG)  # and reaped
    assert from_reader == {"a", "sub/dvc.yaml:b", "c", "broken"}  # its answer was used
    assert by_reader == by_thread
    for name in ("a", "sub/dvc.yaml:b", "c"):
        lock = by_reader[name]
        assert lock is not None
        assert _types(lock.params) == _types(PARAMS)  # (1 == 1.0 == True: equality does not tell)
    a, b = by_reader["a"], by_reader["sub/dvc.yaml:b"]
    assert a is not None and b is not None and a.code_parts is not b.code_parts  # each its own map
    assert reader_digests == thread_digests and len(reader_digests) == 6
    assert all(digest is not None for digest in reader_digests.values())


def test_a_reader_that_died_leaves_the_reading_to_the_thread(reader_root: Path) -> None:
    written = _project(reader_root)
    os.kill(_fork(reader_root).pid, signal.SIGKILL)
    locks, digests, from_reader = _prefetched(reader_root)
    assert from_reader == set()
    assert locks == {**written, "broken": None, "never": None}
    assert len(digests) == 6


def test_a_lock_the_reader_cannot_send_leaves_the_reading_to_the_thread(reader_root: Path) -> None:
    """msgpack has no integer wider than 64 bits; JSON (a lock) has."""
    written = _project(reader_root, {**PARAMS, "seed": 2**70})
    _fork(reader_root)
    locks, digests, from_reader = _prefetched(reader_root)
    assert from_reader == set()
    assert locks == {**written, "broken": None, "never": None}
    assert locks["a"] == read_lock(reader_root, "a") and len(digests) == 6


def test_a_process_forked_from_the_command_does_not_inherit_its_reader(reader_root: Path) -> None:
    """Its pool is forked: a reader it took for its own (or killed at its exit, after the
    command reaped it) would be another process's."""
    _project(reader_root)
    reader = _fork(reader_root)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0 if early.take_locks(str(reader_root)) is None else 1)
    _, status = os.waitpid(pid, 0)
    assert status == 0, "the forked process found the command's reader"
    assert early.take_locks(str(reader_root)) is reader
    assert len(reader.answer()) > 0


def test_a_reader_no_command_takes_is_killed(reader_root: Path) -> None:
    _project(reader_root)
    pid = _fork(reader_root).pid
    assert early.take_locks(str(reader_root / "elsewhere")) is None  # another root: killed
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped already
    pid = _fork(reader_root).pid
    early.discard()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_a_reader_told_to_follow_a_process_begins_once_it_has_exited(reader_root: Path) -> None:
    """The `pivot` script's reader of a few hundred locks waits for the loader's exit
    (pivot/launch/early.py): the two shared a core, and the command had the other less."""
    written = _project(reader_root)
    gate_r, gate_w = os.pipe()
    held = os.fork()
    if held == 0:  # pragma: no cover - the child: exits once the gate is written
        os.close(gate_w)
        os.read(gate_r, 1)
        os._exit(0)
    os.close(gate_r)
    pidfd = os.pidfd_open(held)
    try:
        reader = early.fork_lock_reader(str(reader_root), after=pidfd)
        assert reader is not None
        ready, _, _ = select.select([reader.read_fd], [], [], 0.3)
        assert ready == [], "the reader answered before the process it follows exited"
        os.write(gate_w, b"x")
        os.waitpid(held, 0)
        locks, digests, from_reader = _prefetched(reader_root)
        assert from_reader == {"a", "sub/dvc.yaml:b", "c", "broken"}
        assert locks == {**written, "broken": None, "never": None} and len(digests) == 6
    finally:
        os.close(gate_w)
        os.close(pidfd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(held, 0)


def test_what_the_readers_state_cache_said_is_said_by_the_command(reader_root: Path) -> None:
    """A corrupt state cache is moved aside and recreated by whoever opens it first: the
    reader, which has no one to tell. The command says it, as it did reading itself."""
    from pivot.state.notices import stored_state_notices

    written = _project(reader_root)
    (reader_root / ".pivot" / "state.db").write_bytes(b"not a database" * 1000)
    _fork(reader_root)
    said: list[str] = []
    with stored_state_notices(said.append):
        locks, digests, from_reader = _prefetched(reader_root)
    assert from_reader == {"a", "sub/dvc.yaml:b", "c", "broken"}
    assert locks == {**written, "broken": None, "never": None} and len(digests) == 6
    assert any("is corrupt" in line for line in said), said
    assert (reader_root / ".pivot" / "state.db.corrupt").exists()


def test_a_ctrl_c_during_the_forks_is_raised_once_they_are_recorded() -> None:
    """pivot/launch/early.py holds SIGINT back across its forks: raised inside an at-fork
    hook, Python ignores it (and logging's lock stayed held). The `pivot` script has one
    thread then; this test's process may have more, which a SIGINT to the process would
    reach: it goes to this thread."""
    got: list[str] = []
    with pytest.raises(KeyboardInterrupt), early._sigint_held():
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        got.append("still in the block")
    assert got == ["still in the block"]
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # released
