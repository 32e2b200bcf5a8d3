"""Whole files read with os calls (pivot/state/rawread.py): locks and hashed files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash

from pivot.state.hashing import hash_file
from pivot.state.rawread import read_chunks, read_whole


def test_a_file_larger_than_one_chunk_is_read_whole_and_hashed_whole(tmp_path: Path) -> None:
    data = os.urandom(1 << 16) * 40 + b"tail"  # 2.5 MiB: three reads of 1 MiB, then the end
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert [len(c) for c in read_chunks(path)] == [1 << 20, 1 << 20, len(data) - (2 << 20)]
    assert read_whole(path) == data
    assert hash_file(path) == xxhash.xxh3_128(data).hexdigest()


def test_an_empty_file_and_a_name_relative_to_an_open_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "small.lock").write_bytes(b"{}\n")
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_whole("empty", dir_fd=folder) == b""
        assert read_whole("small.lock", dir_fd=folder) == b"{}\n"
    finally:
        os.close(folder)


def test_a_missing_file_or_a_folder_raises_as_open_does(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_whole(tmp_path / "missing")
    with pytest.raises(IsADirectoryError):
        read_whole(tmp_path)
    with pytest.raises(FileNotFoundError):
        hash_file(tmp_path / "missing")
