"""What counts as a change: a path whose content differs from what the state cache
recorded. Runs in a thread of the broker so hashing never blocks the broker's loop.

A path whose (inode, size, mtime_ns) still matches its recorded row is unchanged
without being read; otherwise it is hashed and compared with the recorded digest. So a
save with identical content, or an output the pipeline itself just committed (recorded
by the worker), is no change. Every checked path is recorded, so the next save of the
same content is recognised too. A path that no longer exists counts as changed only if
something was recorded for it or under it (a deleted dep, output or folder of them); an
editor's temp file, gone after the save's rename, is not a change.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

import zmq

from pivot.state.statecache import StateCache

__all__ = ["ChangeChecker", "confirm"]

log = logging.getLogger(__name__)


def confirm(root: Path, cache: StateCache, paths: tuple[str, ...]) -> list[str]:
    """The subset of `paths` (project-relative) whose content changed."""
    changed = []
    for rel in paths:
        full = root / rel
        try:
            if full.is_dir():
                continue  # its files report themselves
            if full.exists() and not full.is_file():
                continue  # a fifo or device: reading it could block the checker forever
            before = cache.recorded(full)
            now = cache.hash_path(full)
        except OSError as exc:
            log.debug("checking %s: %s", rel, exc)
            changed.append(rel)
            continue
        if now is None:
            if cache.known(full):
                changed.append(rel)
        elif now != before:
            changed.append(rel)
    return changed


class ChangeChecker:
    """A thread answering `submit(paths)` with ["ok", *changed paths] on an inproc pair."""

    def __init__(self, root: Path, ctx: zmq.Context[zmq.Socket[bytes]], addr: str) -> None:
        self.root = root
        self.ctx = ctx
        self.addr = addr
        self.todo: queue.SimpleQueue[tuple[str, ...] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="change-checker", daemon=True)
        self.thread.start()

    def submit(self, paths: tuple[str, ...]) -> None:
        self.todo.put(paths)

    def stop(self) -> None:
        self.todo.put(None)
        self.thread.join(5.0)

    def _run(self) -> None:
        out = self.ctx.socket(zmq.PAIR)
        out.setsockopt(zmq.LINGER, 0)
        out.connect(self.addr)
        cache = StateCache(self.root / ".pivot" / "state.db")
        try:
            while (paths := self.todo.get()) is not None:
                try:
                    changed = confirm(self.root, cache, paths)
                except Exception:  # never leave the broker waiting for an answer
                    log.exception("checking changed files failed; treating all as changed")
                    changed = list(paths)
                out.send_multipart([b"ok", *(p.encode() for p in changed)])
        finally:
            cache.close()
            out.close(linger=0)
