"""Writing a small file so a crash leaves the old content or the new, never half."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import threading
from collections.abc import Callable

__all__ = ["link_atomic", "replace_small", "write_atomic"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int | None = None) -> None:
    """Write `data` to a temp file beside `path` (a hidden `.NAME.*.tmp`), then rename it
    over `path`. `mode` None gives 0600, as mkstemp did. Raises OSError; no temp file is
    left."""
    # Named for this process and thread, so no other writer uses it: no random name to
    # draw and no exclusive create to retry (mkstemp took a third of a small write), and
    # the folder is made only when it is missing.
    tmp = _temp_beside(path)
    try:
        fd = os.open(tmp, _FLAGS, 0o600)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        fd = os.open(tmp, _FLAGS, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if mode is not None:
            os.fchmod(fd, mode)
        os.close(fd)
        fd = -1
        replace_small(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def link_atomic(src: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """`path` becomes a hard link to `src` (made whole: locks and logs are replaced by a
    rename, never written in place), replacing what was there. A link is atomic by
    itself, so where `path` is absent (a run's first entry) it is made there at once:
    one call where a temp, a check and a rename took four. Raises OSError (no hard
    links on this file system: the caller copies); no temp file is left."""
    try:
        try:
            os.link(src, path)
            return
        except FileNotFoundError:  # its folder is missing (or `src` is: raised again)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.link(src, path)
            return
    except FileExistsError:
        if os.path.samefile(src, path):  # that link already (a rename would leave the temp)
            return
    tmp = _temp_beside(path)
    try:
        os.link(src, tmp)
        replace_small(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _temp_beside(path: str | os.PathLike[str]) -> str:
    """A hidden `.NAME.PID.THREAD.tmp` beside `path`: named for this process and thread,
    so no other writer uses it (strings: a stage writes two, and pathlib's parses cost
    as much as the writes)."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")


def replace_small(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """`os.replace(tmp, path)` for Pivot's own small files (locks, run-cache entries,
    logs), without ext4's flush of `tmp`'s data when `path` exists (auto_da_alloc: a
    rename over a file costs 80-190 us here, against 5 us): on Linux the two are swapped
    (renameat2 RENAME_EXCHANGE), then the old content, now at `tmp`, is removed. As
    atomic as os.replace: `path` holds the old content or the new at every moment. Like
    every file Pivot writes without fsync (pivot/state/cache.py), an OS crash just after
    may leave it empty: a lock or run-cache entry that cannot be read makes its stage run
    again. Anything but a regular file at `path`, or a file system that cannot swap,
    gets os.replace."""
    exchange = _exchanger()
    if exchange is not None:
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                exchange(tmp, path)
                with contextlib.suppress(OSError):  # a stray hidden temp, not a failed write
                    os.unlink(tmp)
                return
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, *_CANNOT_SWAP):
                raise
            if exc.errno in _CANNOT_SWAP:
                _no_exchange()
    os.replace(tmp, path)


_CANNOT_SWAP = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM)


def _load_exchange() -> _Exchange | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+
    except (OSError, AttributeError):
        return None
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2

    def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), os.fspath(b))

    return exchange


_Exchange = Callable[[str | os.PathLike[str], str | os.PathLike[str]], None]
_UNLOADED: _Exchange = os.replace  # a marker: looked up on first use (ctypes costs every process)
_exchange: _Exchange | None = _UNLOADED


def _exchanger() -> _Exchange | None:
    global _exchange
    if _exchange is _UNLOADED:
        _exchange = _load_exchange()
    return _exchange


def _no_exchange() -> None:
    """This file system (or kernel) cannot swap: plain renames from now on, in this process."""
    global _exchange
    _exchange = None
