"""What counts as a change in `pivot up` (broker/changes.py), against a real state cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from broker.changes import SourceReaders, confirm
from pivot.pipeline.manifest import Manifest, StageSpec
from pivot.state.lock import StageLock, write_lock
from pivot.state.statecache import StateCache

OLD = 1_600_000_000_000_000_000


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, ns=(OLD, OLD))


def test_only_real_content_changes_count(tmp_path: Path) -> None:
    cache = StateCache(tmp_path / ".pivot" / "state.db")
    write(tmp_path / "a.csv", "1\n")
    write(tmp_path / "raw" / "x.csv", "x\n")
    cache.hash_path(tmp_path / "a.csv")
    cache.hash_path(tmp_path / "raw")
    assert confirm(tmp_path, cache, ("a.csv",)) == []  # unchanged
    (tmp_path / "a.csv").write_text("1\n")  # same bytes, new mtime
    assert confirm(tmp_path, cache, ("a.csv",)) == []
    (tmp_path / "a.csv").write_text("2\n")
    assert confirm(tmp_path, cache, ("a.csv",)) == ["a.csv"]
    assert confirm(tmp_path, cache, ("a.csv",)) == []  # recorded: the same save again is nothing
    assert confirm(tmp_path, cache, ("new.csv",)) == []  # missing and never seen: an editor temp
    write(tmp_path / "new.csv", "n\n")
    assert confirm(tmp_path, cache, ("new.csv",)) == ["new.csv"]  # a new file
    (tmp_path / "a.csv").unlink()
    assert confirm(tmp_path, cache, ("a.csv",)) == ["a.csv"]  # a known file deleted
    shutil.rmtree(tmp_path / "raw")
    assert confirm(tmp_path, cache, ("raw",)) == ["raw"]  # a folder with known files deleted
    cache.close()


def test_a_fifo_is_never_read(tmp_path: Path) -> None:
    cache = StateCache(tmp_path / ".pivot" / "state.db")
    os.mkfifo(tmp_path / "pipe")
    assert confirm(tmp_path, cache, ("pipe",)) == []  # would block forever if opened
    cache.close()


def _spec(name: str, deps: tuple[str, ...] = (), outs: tuple[str, ...] = ()) -> StageSpec:
    return StageSpec(name=name, module="pipeline", func=f"pipeline.{name}", deps=deps, outs=outs, metrics=(),
                     params={}, fingerprint="0" * 16)


def _ran(root: Path, cache: StateCache, stage: str, deps: tuple[str, ...], outs: tuple[str, ...] = ()) -> None:
    """The lock a run of `stage` on the files as they are now would leave."""
    def digest(path: str) -> str:
        found = cache.hash_path(root / path)
        assert found is not None
        return found

    write_lock(root, StageLock(stage, "c", {}, {d: digest(d) for d in deps}, {o: digest(o) for o in outs}))


# `t` and `s` read a.csv; `t` writes t.out, which `u` reads; `f` reads the folder raw/.
READERS = SourceReaders(Manifest((
    _spec("t", deps=("a.csv",), outs=("t.out",)),
    _spec("s", deps=("a.csv",), outs=("s.out",)),
    _spec("u", deps=("t.out",), outs=("u.out",)),
    _spec("f", deps=("raw/",), outs=("f.out",)),
)))


def _project(root: Path, cache: StateCache) -> None:
    for path, text in (("a.csv", "1\n"), ("t.out", "t\n"), ("s.out", "s\n"), ("u.out", "u\n"), ("f.out", "f\n"),
                       ("raw/x.csv", "x\n"), ("raw/sub/y.csv", "y\n")):
        write(root / path, text)
    _ran(root, cache, "t", ("a.csv",), ("t.out",))
    _ran(root, cache, "s", ("a.csv",), ("s.out",))
    _ran(root, cache, "u", ("t.out",), ("u.out",))
    _ran(root, cache, "f", ("raw/",), ("f.out",))


def test_a_save_another_process_recorded_first_is_still_a_change_for_the_stages_that_read_it(tmp_path: Path) -> None:
    # A `pivot status` (or a pool deciding `s`) hashes the saved file before the broker
    # checks it: the row holds the new digest, the readers' locks the one they read.
    cache = StateCache(tmp_path / ".pivot" / "state.db")
    _project(tmp_path, cache)
    (tmp_path / "a.csv").write_text("2\n")
    (tmp_path / "raw" / "sub" / "y.csv").write_text("z\n")
    other = StateCache(tmp_path / ".pivot" / "state.db")
    other.hash_path(tmp_path / "a.csv")
    other.hash_path(tmp_path / "raw")
    other.close()
    assert confirm(tmp_path, cache, ("a.csv", "raw/sub/y.csv")) == []  # the row alone: hidden
    assert confirm(tmp_path, cache, ("a.csv", "raw/sub/y.csv"), READERS) == ["a.csv", "raw/sub/y.csv"]
    # One reader ran on the new content, the other did not: still a change (for `t`).
    _ran(tmp_path, cache, "s", ("a.csv",), ("s.out",))
    assert confirm(tmp_path, cache, ("a.csv",), READERS) == ["a.csv"]
    _ran(tmp_path, cache, "t", ("a.csv",), ("t.out",))  # both on it: nothing left to run
    assert confirm(tmp_path, cache, ("a.csv",), READERS) == []
    cache.close()


def test_readers_leave_identical_saves_outputs_and_unread_files_to_the_row(tmp_path: Path) -> None:
    cache = StateCache(tmp_path / ".pivot" / "state.db")
    _project(tmp_path, cache)
    (tmp_path / "a.csv").write_text("1\n")  # the bytes every reader read
    (tmp_path / "raw" / "x.csv").write_text("x\n")
    assert confirm(tmp_path, cache, ("a.csv", "raw/x.csv"), READERS) == []
    # What a failed (or cancelled) run of its producer left of an output, its row
    # recorded (`settle`), lock unchanged, is no change: it starts no wave.
    (tmp_path / "t.out").write_text("T\n")
    cache.hash_path(tmp_path / "t.out")
    assert confirm(tmp_path, cache, ("t.out",), READERS, unsettled=frozenset({"t"})) == []
    # What its producer's run wrote and recorded (row and lock) is none either.
    _ran(tmp_path, cache, "t", ("a.csv",), ("t.out",))
    assert confirm(tmp_path, cache, ("t.out",), READERS) == []
    write(tmp_path / "notes.txt", "n\n")  # read by no stage: the row (a new file)
    assert confirm(tmp_path, cache, ("notes.txt",), READERS) == ["notes.txt"]
    cache.close()


def test_a_source_file_deleted_is_a_change_for_its_readers_whatever_the_row(tmp_path: Path) -> None:
    cache = StateCache(tmp_path / ".pivot" / "state.db")
    _project(tmp_path, cache)
    (tmp_path / "a.csv").unlink()
    cache.forget(tmp_path / "a.csv")  # as a process that found it gone may leave the row
    assert confirm(tmp_path, cache, ("a.csv",)) == []
    assert confirm(tmp_path, cache, ("a.csv",), READERS) == ["a.csv"]
    cache.close()


def test_an_output_edited_by_hand_is_a_change_once_another_process_recorded_it(tmp_path: Path) -> None:
    """A hand edit of an output while a wave ran, the row written meanwhile by a
    `pivot status` (its row then matched): no wave started, the edit stayed and its
    readers were left stale. Its producer's lock says otherwise; in a folder output too."""
    cache = StateCache(tmp_path / ".pivot" / "state.db")
    _project(tmp_path, cache)
    folder = SourceReaders(Manifest((_spec("g", outs=("made/",)), _spec("h", deps=("made/",), outs=("h.out",)))))
    write(tmp_path / "made" / "m.txt", "m\n")
    write_lock(tmp_path, StageLock("g", "c", {}, {}, {"made/": cache.hash_path(tmp_path / "made") or ""}))
    (tmp_path / "t.out").write_text("hand\n")
    (tmp_path / "made" / "m.txt").write_text("hand\n")
    other = StateCache(tmp_path / ".pivot" / "state.db")
    other.hash_path(tmp_path / "t.out")
    other.hash_path(tmp_path / "made")
    other.close()
    assert confirm(tmp_path, cache, ("t.out",)) == []  # the row alone: hidden
    assert confirm(tmp_path, cache, ("t.out",), READERS) == ["t.out"]
    assert confirm(tmp_path, cache, ("made/m.txt",), folder) == ["made/m.txt"]
    assert confirm(tmp_path, cache, ("made/m.txt",), folder, unsettled=frozenset({"g"})) == []
    cache.close()


def test_a_path_its_reader_recorded_as_changed_while_it_ran_is_a_change_whatever_it_holds(tmp_path: Path) -> None:
    """A stage's dependency (here another stage's output, and a file of a folder it
    reads) written while it ran and put back: its lock says `changed while the stage
    ran`, `pivot status` says stale, and under `pivot up` nothing ran it again: the row
    and the producer's lock matched the file."""
    from pivot.state.lock import CHANGED_WHILE_RUNNING, read_lock

    cache = StateCache(tmp_path / ".pivot" / "state.db")
    _project(tmp_path, cache)
    (tmp_path / "t.out").write_text("t\n")  # put back: same bytes, new stat
    (tmp_path / "raw" / "x.csv").write_text("x\n")
    assert confirm(tmp_path, cache, ("t.out", "raw/x.csv"), READERS) == []
    for stage, dep in (("u", "t.out"), ("f", "raw/")):
        lock = read_lock(tmp_path, stage)
        assert lock is not None
        write_lock(tmp_path, StageLock(stage, lock.code, {}, {**lock.deps, dep: CHANGED_WHILE_RUNNING}, lock.outs))
    assert confirm(tmp_path, cache, ("t.out", "raw/x.csv"), READERS) == ["t.out", "raw/x.csv"]
    cache.close()
