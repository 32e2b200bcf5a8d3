"""Which of the jobs queued in a worker's pipe it may still begin.

A worker holds the stage it runs and the next ones its pool sent behind it
(workers/processes.py): it starts each as soon as it has answered the one before. When
the stage it runs is long and another worker is idle, the pool takes back those it has
not begun and gives them to the idle one: a short stage queued behind a training stage
would otherwise wait minutes for it, with a core idle.

Jobs are numbered in each worker's order. Both sides share a 16-byte file per worker,
mapped, under a POSIX record lock: BEGUN, the number of the last job the worker began,
written by the worker; FENCE, written by the pool: every job numbered up to it is
withdrawn, moved only while the worker's last begun job is the one just before those
the pool takes back. Each reads and writes them under the lock, so a job is either
begun by its worker or withdrawn by its pool, never both. (~1.6 us a job here.
multiprocessing's semaphores are named and registered with its resource tracker, which
warns of every one a pool that ends in `os._exit` leaves behind.)
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct

__all__ = ["JobClaims"]

_LAYOUT = struct.Struct("qq")  # begun, fence


class JobClaims:
    def __init__(self, path: str, create: bool = False) -> None:
        self.path = path
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        self.fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(self.fd, _LAYOUT.size)
            self.map = mmap.mmap(self.fd, _LAYOUT.size)
        except BaseException:
            os.close(self.fd)
            raise

    def begin(self, number: int) -> bool:
        """The worker's: False if job `number` was withdrawn (it must not run it)."""
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            _, fence = _LAYOUT.unpack_from(self.map)
            if number <= fence:
                return False
            _LAYOUT.pack_into(self.map, 0, number, fence)
            return True
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def withdraw(self, head: int, last: int) -> bool:
        """The pool's: withdraw every job after `head` up to `last` (the worker's queue),
        if `head` is the last job it began (what it runs, or ran and is answering);
        False, nothing withdrawn, if it began one of them or has not begun `head` yet.
        (What lies between `head` and `last` was sent after `head`, or withdrawn before.)"""
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            begun, fence = _LAYOUT.unpack_from(self.map)
            if begun != head:
                return False
            _LAYOUT.pack_into(self.map, 0, begun, max(fence, last))
            return True
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def close(self, remove: bool = False) -> None:
        self.map.close()
        os.close(self.fd)
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
