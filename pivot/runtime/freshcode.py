"""A project module's code: its cached bytecode read only when it cannot be stale, and
the digest of the source it is, to check against the code fingerprint a stage runs under.

CPython takes a module from its `__pycache__` file when the file's header holds the
source's mtime in whole seconds and its size. A source saved twice within one second
with the same size (a constant changed, a formatter's rewrite right after the editor's
save) keeps both: bytecode written between the two saves (by any process that imported
it then: a loader, the user's test runner) passes for the second version, and a stage
would run the first (docs/architecture.md, "Reloading modules in live workers").

For modules under the project root, bytecode written less than a second (and the
kernel's clock tick) after the start of its source's mtime second is not read: the
module is compiled from its source, and its bytecode written again as CPython writes it
(unless bytecode writing is off). Bytecode written later is exact: any later save has a
later second. Every module outside the project is imported as before.

The source is read at every import of a project module, and its digest kept: a worker
imports the pipeline after the loader that fingerprinted it, and a save in between (or
during a stage's own late import) would otherwise run code the lock and the run cache
then describe with the earlier version's fingerprint (`differing`; pivot/runtime/worker.py).
A loader keeps the source too (`keep_sources`): its code fingerprint is taken from the
source it imported, not from the file read again a moment later. A save between the two
once made a manifest of one version's stages with another's fingerprints (a stage added
by the save missing, and the stages before it looking current).
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import marshal
import os
import sys
from collections.abc import Mapping
from types import CodeType
from typing import TYPE_CHECKING

import xxhash

if TYPE_CHECKING:  # (importlib.abc imports importlib.resources, tempfile, shutil: ~4 ms of a loader)
    from importlib.abc import PathEntryFinder

__all__ = ["differing", "guard_project_bytecode", "guarded", "imported_source", "keep_sources"]

_SECOND_NS = 1_000_000_000
_TICK_NS = 20_000_000  # the kernel's coarse clock stamps files (pivot/state/statecache.py)


def may_be_stale(source_path: str) -> bool:
    """Whether the bytecode cached for `source_path` could belong to another version
    of it with the same size and mtime second."""
    try:
        source = os.stat(source_path)
        cached = os.stat(importlib.util.cache_from_source(source_path))
    except (OSError, NotImplementedError, ValueError):
        return False  # no bytecode: compiled from the source anyway
    return _written_in_second(cached, source)


def _written_in_second(cached: os.stat_result, source: os.stat_result) -> bool:
    second_ends = (source.st_mtime_ns // _SECOND_NS + 1) * _SECOND_NS
    return cached.st_mtime_ns < second_ends + _TICK_NS


# The real path of each project module's file this process imported -> the digest of the
# source its code was compiled from (the digest the code fingerprint takes: codeindex.py).
_imported: dict[str, str] = {}
# ... and, in a loader (`keep_sources`), that source itself: the fingerprint is taken from
# the code imported, never from the file read again (a save in between mixed versions).
_sources: dict[str, bytes] = {}
_keeping: list[bool] = []


def keep_sources() -> None:
    """From now on, keep the source of each project module imported (`imported_source`)."""
    _keeping[:] = [True]


def imported_source(path: str) -> tuple[str, bytes] | None:
    """(digest, source) of the project module file at real path `path` as this process
    imported it, if it kept it."""
    data = _sources.get(path)
    return None if data is None else (_imported[path], data)


class _FreshSourceLoader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname: str) -> CodeType | None:
        path = self.get_filename(fullname)
        # The source is read whatever the bytecode: its digest is what this process's
        # code is, checked against the fingerprint a stage is run under (`differing`).
        with open(path, "rb") as f:
            before = os.fstat(f.fileno())
            data = f.read()
            steady = _same(before, os.fstat(f.fileno()))  # (else written while read)
        code = _cached_code(path, before) if steady else None
        if code is None:
            code = self.source_to_code(data, path)
            if steady and not sys.dont_write_bytecode:
                # Written again (as CPython would have, had the header not matched): once
                # that happens after the source's second, the next import trusts it.
                header = b"".join((
                    importlib.util.MAGIC_NUMBER, bytes(4),  # (flags 0: checked by timestamp)
                    (int(before.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little"),
                    (before.st_size & 0xFFFFFFFF).to_bytes(4, "little"),
                ))
                with contextlib.suppress(OSError, NotImplementedError):
                    self.set_data(importlib.util.cache_from_source(path), header + marshal.dumps(code))
        real = os.path.realpath(path)
        _imported[real] = xxhash.xxh3_128_hexdigest(data)
        if _keeping:
            _sources[real] = data
        return code


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_mtime_ns, a.st_size, a.st_ino) == (b.st_mtime_ns, b.st_size, b.st_ino)


def _cached_code(path: str, source: os.stat_result) -> CodeType | None:
    """The bytecode cached for the source `path` had when it was `source`, if its header
    names that version and it cannot be another one's (`may_be_stale`)."""
    try:
        with open(importlib.util.cache_from_source(path), "rb") as f:
            if _written_in_second(os.fstat(f.fileno()), source):
                return None
            data = f.read()
    except (OSError, NotImplementedError, ValueError):
        return None
    if len(data) < 16 or data[:4] != importlib.util.MAGIC_NUMBER or data[4:8] != bytes(4):
        return None  # another Python's, or hash-checked: compiled from the source
    if (int.from_bytes(data[8:12], "little") != int(source.st_mtime) & 0xFFFFFFFF
            or int.from_bytes(data[12:16], "little") != source.st_size & 0xFFFFFFFF):
        return None
    try:
        code = marshal.loads(memoryview(data)[16:])
    except (EOFError, ValueError, TypeError):
        return None
    return code if isinstance(code, CodeType) else None


def differing(root: str, expected: Mapping[str, str], *, on_disk: bool = False) -> tuple[list[str], dict[str, str]]:
    """The files of `expected` (project-relative paths -> the digest of the source a
    code fingerprint was taken from) whose code in this process is another version: the
    source it imported or, for a file it has not imported, the file now. And the entries
    of those it has not imported: a stage may import them as it runs (check them again
    after).

    `on_disk`: for code another process runs (a command stage's script, in its own
    interpreter or a warm fork that dropped the project's modules): every file as it is
    now, whatever this process imported (pipeline.py may import the module the script
    does), and every one of them to check again after."""
    top = _real_root(root)
    found: list[str] = []
    later: dict[str, str] = {}
    for rel, digest in expected.items():
        path = os.path.join(top, rel)
        got = None if on_disk else _imported.get(path)
        if got is None:
            later[rel] = digest
            try:
                with open(path, "rb") as f:
                    got = xxhash.xxh3_128_hexdigest(f.read())
            except OSError:
                got = ""
        if got != digest:
            found.append(rel)
    return found, later


_real_roots: dict[str, str] = {}


def _real_root(root: str) -> str:
    top = _real_roots.get(root)
    if top is None:
        top = _real_roots[root] = os.path.realpath(root)
    return top


_guarded: list[str] = []


def guarded(root: str) -> bool:
    """Whether modules under `root` are imported this way in this process."""
    return os.path.realpath(root) in _guarded


def guard_project_bytecode(root: str) -> None:
    """From now on, modules found in folders under `root` are imported this way (once
    per process; folders already looked in are looked in again)."""
    top = os.path.realpath(root)
    if top in _guarded:
        return
    _guarded.append(top)
    machinery = importlib.machinery
    make = machinery.FileFinder.path_hook(
        (machinery.ExtensionFileLoader, machinery.EXTENSION_SUFFIXES),
        (_FreshSourceLoader, machinery.SOURCE_SUFFIXES),
        (machinery.SourcelessFileLoader, machinery.BYTECODE_SUFFIXES),
    )

    def under(path: str) -> bool:
        full = os.path.realpath(path or ".")
        return full == top or full.startswith(top + os.sep)

    def hook(path: str) -> PathEntryFinder:
        if not under(path):
            raise ImportError(f"{path} is not in the project")  # the next hook finds it
        return make(path)

    sys.path_hooks.insert(0, hook)
    # Each cached folder resolved as realpath would, one lstat per folder in all: a
    # process holding scikit-learn has ~160 of them, and realpath one by one took 7-10
    # ms in a forked loader or worker, on a code edit's way to its stage.
    real: dict[str, str] = {}
    for path in [p for p in sys.path_importer_cache if isinstance(p, str)]:
        full = _resolved(path or ".", real)
        if full == top or full.startswith(top + os.sep):
            del sys.path_importer_cache[path]


def _resolved(path: str, real: dict[str, str]) -> str:
    """os.path.realpath(path), with the folders it resolved kept in `real`."""
    if ".." in path.split(os.sep):  # ("a/link/.." is not "a": realpath follows the link)
        return os.path.realpath(path)
    path = os.path.abspath(path)
    found = real.get(path)
    if found is None:
        parent, name = os.path.split(path)
        if not name:
            found = path
        else:
            joined = os.path.join(_resolved(parent, real), name)
            found = os.path.realpath(joined) if os.path.islink(joined) else joined
        real[path] = found
    return found
