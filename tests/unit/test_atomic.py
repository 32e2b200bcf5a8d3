"""write_atomic (pivot/state/atomic.py): the old content or the new, never half, and no
temp file left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pivot.state.atomic import write_atomic


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
