"""A project module's cached bytecode read only when it cannot be stale.

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
later second. An extra stat a module import; every module outside the project is
imported as before.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import marshal
import os
import sys
from importlib.abc import PathEntryFinder
from types import CodeType

__all__ = ["guard_project_bytecode", "guarded"]

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
    second_ends = (source.st_mtime_ns // _SECOND_NS + 1) * _SECOND_NS
    return cached.st_mtime_ns < second_ends + _TICK_NS


class _FreshSourceLoader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname: str) -> CodeType | None:
        path = self.get_filename(fullname)
        if not may_be_stale(path):
            return super().get_code(fullname)
        stat = os.stat(path)  # (before the read, as CPython does: a save meanwhile is newer)
        code = self.source_to_code(self.get_data(path), path)
        if not sys.dont_write_bytecode:
            # Written again (as CPython would have, had the header not matched): once
            # that happens after the source's second, the next import trusts it.
            header = b"".join((
                importlib.util.MAGIC_NUMBER, bytes(4),  # (flags 0: checked by timestamp)
                (int(stat.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little"),
                (stat.st_size & 0xFFFFFFFF).to_bytes(4, "little"),
            ))
            with contextlib.suppress(OSError, NotImplementedError):
                self.set_data(importlib.util.cache_from_source(path), header + marshal.dumps(code))
        return code


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
