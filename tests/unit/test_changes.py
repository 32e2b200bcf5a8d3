"""What counts as a change in `pivot up` (broker/changes.py), against a real state cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from broker.changes import confirm
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
