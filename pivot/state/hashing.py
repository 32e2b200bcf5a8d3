"""Content hashes of files and directories (xxh3-128, hex).

A file's digest is the xxh3-128 hexdigest of its bytes. A directory's digest is "d" followed
by the xxh3-128 of its manifest: the lines f"{rel}\\0{digest}\\n" of every file under it
(relative POSIX path, file digest), sorted by path. Lock files store these digests, so they
must never change.

`dir_entries` is the one implementation of the manifest; given a `StateCache` it asks the
cache for the file digests instead of reading every file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from pivot.state.rawread import read_chunks

if TYPE_CHECKING:
    from pivot.state.statecache import StateCache

__all__ = ["dir_digest", "dir_entries", "hash_dir", "hash_file", "hash_path"]


def hash_file(path: str | os.PathLike[str]) -> str:
    """The digest of a file's contents (reads the whole file)."""
    h = xxhash.xxh3_128()
    for chunk in read_chunks(path):
        h.update(chunk)
    return h.hexdigest()


def _walk_files(path: Path) -> list[tuple[str, str]]:
    """(relative POSIX path, file-system path) of every file under a directory, in walk order.

    `os.walk` semantics: symlinks to files are files, symlinks to directories are not
    descended into, unreadable subdirectories are skipped.
    """
    top = str(path)
    prefix_len = len(top) if top.endswith(os.sep) else len(top) + 1
    files: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        rel_dir = dirpath[prefix_len:]
        if os.sep != "/":
            rel_dir = rel_dir.replace(os.sep, "/")
        for name in filenames:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            files.append((rel, os.path.join(dirpath, name)))
    return files


def dir_entries(path: Path, cache: StateCache | None = None) -> list[tuple[str, str]]:
    """The sorted (relative POSIX path, file digest) manifest of a directory.

    With a cache, only files whose stat changed since they were last hashed are read. A
    file gone between the walk and its read (a folder being rewritten: a tar extraction,
    a script replacing its files), or a symbolic link to nothing (an editor's lock file:
    Emacs' `.#name`), holds nothing a stage can read: it is left out. Either made the
    whole folder "missing" (its stage failed "dependency missing", the folder there).
    """
    files = _walk_files(path)
    if cache is not None:
        return sorted(cache.hash_files(path, files))
    entries = []
    for rel, full in files:
        try:
            entries.append((rel, hash_file(full)))
        except FileNotFoundError:
            continue
    return sorted(entries)


def dir_digest(entries: list[tuple[str, str]]) -> str:
    """The directory digest of a manifest as returned by `dir_entries`."""
    h = xxhash.xxh3_128()
    for rel, digest in sorted(entries):
        h.update(f"{rel}\0{digest}\n".encode())
    return "d" + h.hexdigest()


def hash_dir(path: Path) -> str:
    """A directory's hash is the hash of its sorted (relative path, file hash) manifest."""
    return dir_digest(dir_entries(path))


def hash_path(path: Path) -> str | None:
    """The content hash of a file or directory, or None when it does not exist."""
    try:
        if path.is_dir():
            return hash_dir(path)
        return hash_file(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
