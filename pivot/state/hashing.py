"""Content hashes of files and directories (xxh3-128, hex)."""

from __future__ import annotations

import os
from pathlib import Path

import xxhash

__all__ = ["hash_path"]

_CHUNK = 1 << 20


def hash_file(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def hash_dir(path: Path) -> str:
    """A directory's hash is the hash of its sorted (relative path, file hash) manifest."""
    h = xxhash.xxh3_128()
    entries = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in filenames:
            full = Path(dirpath) / name
            entries.append((full.relative_to(path).as_posix(), hash_file(full)))
    for rel, digest in sorted(entries):
        h.update(f"{rel}\0{digest}\n".encode())
    return "d" + h.hexdigest()


def hash_path(path: Path) -> str | None:
    """The content hash of a file or directory, or None when it does not exist."""
    try:
        if path.is_dir():
            return hash_dir(path)
        return hash_file(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
