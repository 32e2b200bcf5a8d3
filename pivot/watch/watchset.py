"""The OS watches of a `WatchPlan`: watchfiles' RustNotify instances, read as one.

watchfiles takes one `recursive` flag per RustNotify, so a plan needs two instances:
one over the recursive roots, one over the flat folders. RustNotify cannot add or drop
a path, so a changed list means a new instance.

`apply(plan)` builds the instance for each list that changed *before* dropping the old
one, so no folder is unwatched in between (its watches are then registered twice for a
moment). The old one is not closed at once: it still holds what it saw while the new
one was built, so it is read once more, and closed after that read ("retiring"). In poll
mode a new instance takes its first scan as the baseline and reports nothing from it,
so the old one keeps scanning for two more poll periods to report changes made just
before that baseline.

`wait()` asks each instance in turn (RustNotify.watch with a 1 ms timeout returns after
one step when it has nothing), each for a share of STEP_MS (3 ms for two), so that a
change is seen about as soon as with one instance. That costs wake-ups: idle CPU about
doubled (0.6 -> 1.3% measured on a 2-core machine), write -> report stayed ~9-10 ms.
Once one instance has changes, all are read again, each after its notify thread has
read what the kernel queued for it: a change is never reported after a later one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from pivot.watch.notify import load_rust_notify
from pivot.watch.plan import WatchPlan, abs_path, abs_paths, under_any

if TYPE_CHECKING:
    from watchfiles._rust_notify import RustNotify

__all__ = ["RESCAN", "Changes", "Waker", "WatchSet"]

log = logging.getLogger(__name__)

Changes = set[tuple[int, str]]
# Not one of watchfiles' codes (1 added, 2 modified, 3 deleted): "look at everything under
# this folder again", for a batch of events that was lost.
RESCAN = 0
RETIRE_POLLS = 2  # poll mode: an old instance keeps scanning this many poll periods
SETTLE_MAX_S = 0.1  # longest wait for a notify thread to read its queued events


class Waker(Protocol):
    """What `wait()` sleeps on between steps (`fd`), and asks whether to return "wake"."""

    fd: int

    def wait_ms(self, step_ms: int) -> int: ...

    def wake(self) -> bool: ...

    def fresh(self) -> bool: ...


@dataclass
class _Feed:
    notify: RustNotify
    rels: frozenset[str]
    inotify_fd: int | None  # its kernel queue, when known (inotify mode, Linux)
    retire_at: float | None = None  # closed after the first read that starts after this
    closed: bool = False


class WatchSet:
    """RustNotify instances for the current plan (and old ones being retired).
    Not thread-safe: use it from the thread that runs the watcher's loop."""

    def __init__(self, root: Path, *, poll: bool, poll_delay_ms: int, step_ms: int) -> None:
        self.root = root
        self.poll = poll
        self.poll_delay_ms = poll_delay_ms
        self.step_ms = step_ms
        self.plan = WatchPlan()
        self._recursive: _Feed | None = None
        self._flat: _Feed | None = None
        self._retiring: list[_Feed] = []
        self._turn = 0  # which instance wait() reads next

    def apply(self, plan: WatchPlan, renew: Iterable[str] = ()) -> None:
        """Register `plan`'s watches: rebuild each instance whose list changed, or that
        lists a folder in or under `renew` (project-relative folders that appeared: one
        deleted and made again has the same path but lost its watch with the old folder).

        In poll mode a folder that vanished since it was planned raises
        FileNotFoundError (the inotify watcher just skips it): plan again."""
        started = time.monotonic()
        renew = list(renew)
        self._recursive = self._replace(self._recursive, plan.recursive, renew, recursive=True)
        self._flat = self._replace(self._flat, plan.flat, renew, recursive=False)
        self.plan = plan
        log.debug(
            "watching %d recursive roots and %d flat folders (%.0f ms)",
            len(plan.recursive),
            len(plan.flat),
            (time.monotonic() - started) * 1000,
        )

    def wait(
        self, debounce_ms: int, timeout_ms: int, stop: threading.Event,
        wake: Waker | None = None,
    ) -> Changes | Literal["stop", "timeout", "wake"]:
        """Changes, or "timeout" after `timeout_ms` (0: no timeout), or "stop" once
        `stop` is set (or a signal handler raised), or "wake" when `wake.wake()`, asked after
        every step without changes, says so.

        With a `wake`, each step is spent waiting on its file descriptor (the
        completions reader's inotify queue: a write wakes it at once), and then every
        instance is read for a 1 ms step, unless a burst just began (`wake.fresh()`). Without one, the instances are read in turn,
        one step each, for about STEP_MS in all. Once one has changes, every one
        is read once more, briefly, so that a change is never reported after one
        made later, whichever instances saw them, as with a single instance (the tests
        prove "never reported" with a sentinel written after the ignored write)."""
        deadline = None if timeout_ms == 0 else time.monotonic() + timeout_ms / 1000
        while True:
            feeds = self._feeds()
            if not feeds:
                if stop.wait(self.step_ms / 1000):
                    return "stop"
            elif wake is not None:
                woke = _readable(wake.fd, wake.wait_ms(self.step_ms))
                if wake.wake():
                    return "wake"
                if stop.is_set():
                    return "stop"
                if woke and wake.fresh():
                    # A burst just began (a writer opened a file): its end comes next.
                    # Reading watchfiles now would keep this thread in its quiet window.
                    continue
                for feed in feeds:
                    result = self._read(feed, debounce_ms, 1, stop)
                    if result != "timeout":
                        return self._gather(result, feeds, debounce_ms, stop)
            else:
                first = feeds[self._turn % len(feeds)]
                self._turn += 1
                step = -(-self.step_ms // len(feeds))  # ceil: together about one STEP_MS
                result = self._read(first, debounce_ms, step, stop)
                if result != "timeout":
                    return self._gather(result, feeds, debounce_ms, stop)
            if deadline is not None and time.monotonic() >= deadline:
                return "timeout"

    def close(self) -> None:
        for feed in self._feeds():
            feed.notify.close()
        self._recursive = self._flat = None
        self._retiring.clear()

    # --- internals -----------------------------------------------------------------

    def _feeds(self) -> list[_Feed]:
        current = [f for f in (self._flat, self._recursive) if f is not None]
        return current + self._retiring

    def _replace(
        self, old: _Feed | None, rels: frozenset[str], renew: list[str], *, recursive: bool
    ) -> _Feed | None:
        if old is not None and old.rels == rels and not any(under_any(r, renew) for r in rels):
            return old
        started = time.monotonic()
        new = self._build(rels, recursive=recursive) if rels else None
        if old is not None:
            self._retire(old, build_s=time.monotonic() - started)
        return new

    def _build(self, rels: frozenset[str], *, recursive: bool) -> _Feed:
        # ignore_permission_denied=True: watchfiles then skips any path it cannot watch
        # (unreadable, or deleted since it was planned) instead of failing them all.
        paths = abs_paths(self.root, rels)
        before = set() if self.poll else _inotify_fds()
        notify = load_rust_notify()(paths, False, self.poll, self.poll_delay_ms, recursive, True)
        new_fds = set() if self.poll else _inotify_fds() - before
        return _Feed(notify, rels, new_fds.pop() if len(new_fds) == 1 else None)

    def _retire(self, feed: _Feed, *, build_s: float) -> None:
        now = time.monotonic()
        if self.poll:
            feed.retire_at = now + RETIRE_POLLS * (self.poll_delay_ms / 1000 + build_s)
        else:
            feed.retire_at = now  # the next read drains it
        self._retiring.append(feed)

    def _gather(
        self,
        found: Changes | Literal["stop"],
        feeds: list[_Feed],
        debounce_ms: int,
        stop: threading.Event,
    ) -> Changes | Literal["stop"]:
        """`found` plus what every instance holds now. Each instance has its own kernel
        queue and notify thread: an event queued before those in `found` may not have
        been read yet (a busy machine), so wait while its queue holds unread events.
        The one that found the changes is read again too: its quiet window (one 3 ms
        step) is shorter than a single instance's 5 ms, and a write's "modified" event
        arriving just after it would otherwise come as a batch of its own."""
        if found == "stop":
            return "stop"
        for feed in feeds:
            if feed.closed:
                continue  # a retiring one, drained and closed by the read that found
            _settle(feed, stop)
            more = self._read(feed, debounce_ms, 1, stop)
            if more == "stop":
                return "stop"
            if more != "timeout":
                found |= more
        return found

    def _read(
        self, feed: _Feed, debounce_ms: int, step_ms: int, stop: threading.Event
    ) -> Changes | Literal["stop", "timeout"]:
        read_at = time.monotonic()
        # A 1 ms timeout: back after one step when the instance has nothing.
        try:
            result = feed.notify.watch(debounce_ms, step_ms, 1, stop)
        except RuntimeError as exc:  # watchfiles' own error: a name it cannot decode
            return self._lost_batch(feed, exc)
        if feed.retire_at is not None and read_at >= feed.retire_at:
            self._close(feed)
        if result in ("stop", "signal"):
            return "stop"
        return result if isinstance(result, set) else "timeout"

    def _lost_batch(self, feed: _Feed, exc: RuntimeError) -> Changes:
        """watchfiles cannot hand over a path that is not UTF-8, and keeps failing on it:
        its whole batch is lost. Start that instance anew and have everything under its
        folders looked at again (the broker's check finds what really changed)."""
        log.warning("%s: a file name that is not UTF-8 is ignored; checking %d watched "
                    "folder(s) again", exc, len(feed.rels))
        if feed is self._recursive:
            self._recursive = self._build(feed.rels, recursive=True)
        elif feed is self._flat:
            self._flat = self._build(feed.rels, recursive=False)
        else:
            self._retiring.remove(feed)
        feed.notify.close()
        feed.closed = True
        return {(RESCAN, abs_path(self.root, rel)) for rel in feed.rels}

    def _close(self, feed: _Feed) -> None:
        feed.notify.close()
        feed.closed = True
        self._retiring.remove(feed)


def _inotify_fds() -> set[int]:
    """This process's inotify file descriptors (Linux; empty elsewhere)."""
    found: set[int] = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:inotify":
                found.add(int(name))
    return found


def _settle(feed: _Feed, stop: threading.Event) -> None:
    """Wait (at most SETTLE_MAX_S) until the feed's notify thread has read every event
    the kernel queued for it: then what happened before now is in its changes."""
    if feed.inotify_fd is None:
        return
    deadline = time.monotonic() + SETTLE_MAX_S
    while _readable(feed.inotify_fd) and time.monotonic() < deadline:
        if stop.wait(0.001):
            return


def _readable(fd: int, wait_ms: int = 0) -> bool:
    """Whether `fd` has something to read, waiting up to `wait_ms` for it."""
    poller = select.poll()  # not select(): file descriptors above 1023
    poller.register(fd, select.POLLIN)
    try:
        return any(mask & select.POLLIN for _, mask in poller.poll(wait_ms))
    except OSError:
        return False
