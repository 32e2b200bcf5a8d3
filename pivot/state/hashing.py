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
import re
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from pivot.state.rawread import read_chunks

if TYPE_CHECKING:
    from pivot.state.statecache import StateCache

__all__ = [
    "TMP_PREFIX", "dir_digest", "dir_entries", "folder_stats", "hash_dir", "hash_file", "hash_path", "temp_of",
]

# What Pivot writes beside an output it places, then renames in (pivot/state/cache.py):
# no part of a folder's content. One a killed process left (a partial copy) is removed
# before a stage reading the folder runs (pivot/runtime/worker.py); counted, it made
# the folder's digest that of a folder no clean run would see.
TMP_PREFIX = ".pivot-tmp-"
_TEMP_NAME = re.compile(r"\.pivot-tmp-(\d+)-[0-9a-f]{12}")  # (cache.py's `_temp_file_name`)


def temp_of(name: str) -> int | None:
    """The pid of the process that made `name`, if it is one of Pivot's temporary names
    (exactly: a user's file that merely begins so is content like any other)."""
    if not name.startswith(TMP_PREFIX):
        return None
    found = _TEMP_NAME.fullmatch(name)
    return int(found.group(1)) if found else None


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
        dirnames[:] = sorted(d for d in dirnames if temp_of(d) is None)
        rel_dir = dirpath[prefix_len:]
        if os.sep != "/":
            rel_dir = rel_dir.replace(os.sep, "/")
        for name in filenames:
            if temp_of(name) is not None:
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            files.append((rel, os.path.join(dirpath, name)))
    return files


def folder_stats(path: str, leftovers: list[str] | None = None) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime) of every file of a folder's digest (`_walk_files`) and of the
    folder and each folder under it ("" and "sub/"): a file made and removed again
    changes its folder's mtime. Two of them differ when anything in it was written,
    also when it was then put back as it was. The temporary entries (`temp_of`) it
    passes go to `leftovers` (their paths)."""
    top = path
    prefix_len = len(top) if top.endswith(os.sep) else len(top) + 1
    found: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if leftovers is not None:
            leftovers += [os.path.join(dirpath, n) for n in (*dirnames, *filenames) if temp_of(n) is not None]
        dirnames[:] = [d for d in dirnames if temp_of(d) is None]
        rel_dir = dirpath[prefix_len:].replace(os.sep, "/")
        names = [n for n in filenames if temp_of(n) is None]
        for rel, full in ((f"{rel_dir}/" if rel_dir else "", dirpath),
                          *((f"{rel_dir}/{n}" if rel_dir else n, os.path.join(dirpath, n)) for n in names)):
            try:
                st = os.stat(full)
            except OSError:
                continue
            found[rel] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


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
