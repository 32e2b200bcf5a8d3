"""write_atomic (pivot/state/atomic.py): the old content or the new, never half, and no
temp file left behind."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from pivot.state import atomic
from pivot.state.atomic import link_atomic, write_atomic


def test_it_replaces_the_content_with_the_mode_asked_and_makes_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "lock.json"
    write_atomic(path, b"one")
    assert path.read_bytes() == b"one" and stat.S_IMODE(path.stat().st_mode) == 0o600
    inode = path.stat().st_ino
    write_atomic(path, b"two" * 100_000, mode=0o644)
    assert path.read_bytes() == b"two" * 100_000 and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.stat().st_ino != inode  # a new file renamed over it, never rewritten in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["lock.json"]


def test_a_failed_write_leaves_the_old_content_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "lock.json"
    write_atomic(path, b"old")
    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):
        write_atomic(tmp_path / "taken", b"new")  # a folder where the file goes: the rename fails
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lock.json", "taken"]
    os.chmod(tmp_path, 0o500)
    try:
        if os.geteuid() != 0:  # root writes anywhere
            with pytest.raises(PermissionError):
                write_atomic(path, b"new")
            assert path.read_bytes() == b"old"
    finally:
        os.chmod(tmp_path, 0o700)


def test_a_replaced_file_stays_whole_for_its_other_names_and_readers(tmp_path: Path) -> None:
    """Swapped in (pivot/state/atomic.py `replace_small`), not rewritten: a hard link to
    the old file (a log kept beside its run-cache entry) and a reader that opened it keep
    the old content."""
    path = tmp_path / "s.log"
    write_atomic(path, b"first run\n")
    os.link(path, tmp_path / "kept.log")
    with open(path, "rb") as reader:
        write_atomic(path, b"second run\n")
        assert reader.read() == b"first run\n"
    assert path.read_bytes() == b"second run\n"
    assert (tmp_path / "kept.log").read_bytes() == b"first run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.log", "s.log"]


def test_a_file_system_that_cannot_swap_gets_plain_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(a: object, b: object) -> None:  # as renameat2 on a file system without RENAME_EXCHANGE
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(atomic, "_exchange", refuse)
    path = tmp_path / "lock.json"
    write_atomic(path, b"old")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert atomic._exchange is None  # not tried again in this process
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lock.json"]


@pytest.mark.parametrize("swap", [True, False], ids=["exchange", "plain-rename"])
def test_a_link_is_made_in_place_when_absent_and_replaces_what_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: bool
) -> None:
    if not swap:  # a plain rename between two names of one file does nothing
        monkeypatch.setattr(atomic, "_exchange", None)
    first, second = tmp_path / "first.lock", tmp_path / "second.lock"
    first.write_bytes(b"one")
    second.write_bytes(b"two")
    entry = tmp_path / "ab" / "entry.json"  # its folder is made too
    link_atomic(first, entry)
    assert entry.stat().st_ino == first.stat().st_ino
    link_atomic(second, entry)  # replaced, the first file untouched
    link_atomic(second, entry)  # already that link
    assert entry.stat().st_ino == second.stat().st_ino and first.read_bytes() == b"one"
    assert sorted(p.name for p in entry.parent.iterdir()) == ["entry.json"]
    with pytest.raises(FileNotFoundError):
        link_atomic(tmp_path / "absent", entry)
    assert entry.read_bytes() == b"two" and sorted(p.name for p in entry.parent.iterdir()) == ["entry.json"]
