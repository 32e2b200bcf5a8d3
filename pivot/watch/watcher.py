"""The watcher: tells the broker which project files changed, and never waits for it.

    OS (inotify, or a polling scan) --> RustNotify thread (watchfiles; accumulates events)
                                              |
                      Watcher.run loop: rn.watch(debounce, step 5 ms, timeout, stop)
                        - absolute paths -> project-relative POSIX paths
                        - .pivotignore / pyvenv.cfg changes update the rules first
                        - ignored paths dropped; a new folder is scanned (see below)
                        - everything goes into `pending` (a set: coalesced, deduplicated)
                        - flush: unless .git/index.lock exists, send sorted `pending` as
                          FilesChanged over PUSH with NOBLOCK; on zmq.Again keep it for
                          the next iteration (later changes merge in)
                                              |
                                              v
                                  broker PULL `changes` endpoint

`WatcherReady(pid)` is sent right after RustNotify is constructed (the OS watch is then
registered) and before any FilesChanged. The loop's timeout is the next thing it has to
do: retry a blocked send (50 ms), look at `.git/index.lock` again (100 ms), a poll-mode
re-check; with nothing to do it waits for changes only. `stop()` (any thread, or a
signal handler) sets an event RustNotify checks every step, so `run()` returns within
a few milliseconds.

A folder that appears (created, or moved in) is scanned: inotify only watches a new
folder once notify has seen it, so files written into it right away, or a whole tree
moved in with one rename, produce no events of their own. A folder that is deleted or
moved out is reported as the folder alone when the OS reports no events for what was
inside it: a reported path stands for everything under it.

A "modified" event on a folder (its mtime or attributes) is dropped: what changed
inside it is reported path by path.

Poll mode (`poll=True`: Docker Desktop mounts, network file systems) scans every 300 ms
and compares modification times in whole seconds only (watchfiles 1.3: not size, not
inode), so a rewrite in the same second as the change it last saw is missed. So about
one second after each batch it sends, the watcher stats those paths again and reports
any whose (size, mtime_ns, inode) differs from what it recorded when it sent them (and
re-checks that batch in turn; it stops once the paths are quiet).

Transient paths (a temp file written then renamed) are reported too: the watcher does
not guess the order of events inside one batch, and the broker sees they do not exist.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import zmq
from watchfiles._rust_notify import RustNotify

from pivot.protocol.codec import encode
from pivot.protocol.messages import FilesChanged, Message, WatcherReady
from pivot.transport.sockets import make_socket
from pivot.watch.rules import IgnoreRules

__all__ = ["DEFAULT_DEBOUNCE_MS", "Watcher"]

log = logging.getLogger(__name__)

SENDER = "watcher"
STEP_MS = 5  # MEASURED.md: debounce 50 / step 5 detects in ~9 ms at 0.4% idle CPU
DEFAULT_DEBOUNCE_MS = 50
POLL_DELAY_MS = 300
RETRY_MS = 50  # a send that hit the high-water mark is retried this often
GIT_CHECK_MS = 100  # while held by .git/index.lock, look again this often
GIT_HOLD_MAX_S = 30.0  # an index.lock older than this is taken as stale (git crashed)
RECHECK_S = 1.0  # poll mode: stat reported paths again this long after sending them
DEFAULT_SNDHWM = 100
BATCH_BYTES = 1 << 20  # paths per FilesChanged, in bytes (far below MAXMSGSIZE)
_ADDED, _MODIFIED = 1, 2  # watchfiles.Change

Signature = tuple[int, int, int] | None  # (size, mtime_ns, inode); None = missing


class Watcher:
    """Watches `root` and pushes `FilesChanged` to `changes`.

    `changes` is the broker's endpoint (the watcher then owns a context and a PUSH
    socket it creates in `run()`), or a PUSH socket the watcher takes over (closed when
    `run()` returns; its context is left alone). Use the socket only from the thread
    that calls `run()`.
    """

    def __init__(
        self,
        root: Path | str,
        changes: str | zmq.Socket[bytes],
        *,
        poll: bool = False,
        debounce_ms: int = DEFAULT_DEBOUNCE_MS,
        sndhwm: int = DEFAULT_SNDHWM,
        git_hold_max_s: float = GIT_HOLD_MAX_S,
    ) -> None:
        self.root = Path(os.path.realpath(root))
        self.changes = changes
        self.poll = poll
        self.debounce_ms = max(1, debounce_ms)
        self.sndhwm = sndhwm
        self.git_hold_max_s = git_hold_max_s
        self.rules = IgnoreRules(self.root)
        self.ready = threading.Event()  # set once the OS watch is registered
        self._stop = threading.Event()
        self._prefix = str(self.root).rstrip("/") + "/"
        self._index_lock = _index_lock_path(self.root)
        self._lock = threading.Lock()  # guards _pending (read by pending_paths())
        self._pending: set[str] = set()
        self._ready_unsent = True
        self._blocked = False
        self._hold_since: float | None = None
        self._hold_warned = False
        self._rechecks: deque[tuple[float, dict[str, Signature]]] = deque()

    # --- API -----------------------------------------------------------------------

    def stop(self) -> None:
        """Make `run()` return promptly. Thread-safe; fine in a signal handler."""
        self._stop.set()

    def pending_paths(self) -> list[str]:
        """Paths seen but not yet handed to the socket (blocked or held), sorted."""
        with self._lock:
            return sorted(self._pending)

    def run(self) -> None:
        """Watch until `stop()`. Closes the watch and the socket before returning."""
        ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        if isinstance(self.changes, str):
            ctx = zmq.Context()
            sock = make_socket(ctx, zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, self.sndhwm)
            sock.connect(self.changes)
        else:
            sock = self.changes
        try:
            notify = RustNotify([str(self.root)], False, self.poll, POLL_DELAY_MS, True, True)
            try:
                # The OS watch is registered now: anything written after this is seen.
                self._flush(sock, time.monotonic())
                self.ready.set()
                self._loop(notify, sock)
            finally:
                notify.close()
        finally:
            sock.close(linger=0)
            if ctx is not None:
                ctx.term()  # bounded: the only socket is closed with linger 0

    # --- the loop ------------------------------------------------------------------

    def _loop(self, notify: RustNotify, sock: zmq.Socket[bytes]) -> None:
        while not self._stop.is_set():
            timeout = self._timeout_ms(time.monotonic())
            result = notify.watch(self.debounce_ms, STEP_MS, timeout, self._stop)
            if result in ("stop", "signal"):
                return
            if not isinstance(result, str):
                self._take(result)
            now = time.monotonic()
            if self._rechecks:
                self._recheck(now)
            self._flush(sock, now)

    def _timeout_ms(self, now: float) -> int:
        """Milliseconds until the loop has something to do; 0 = only changes wake it."""
        waits: list[float] = []
        if self._ready_unsent or self._pending:
            waits.append(GIT_CHECK_MS if self._hold_since is not None else RETRY_MS)
        if self._rechecks:
            waits.append((self._rechecks[0][0] - now) * 1000)
        return max(1, int(min(waits))) if waits else 0

    def _take(self, changes: set[tuple[int, str]]) -> None:
        events: dict[str, int] = {}
        for change, path in changes:
            if path.startswith(self._prefix):
                rel = path[len(self._prefix) :]
                # Keep "added" when a path has several events: it triggers the scan.
                events[rel] = _ADDED if change == _ADDED else events.get(rel, change)
        for rel in events:
            self.rules.note_change(rel)  # .pivotignore first: it decides this batch too
        found: list[str] = []
        for rel, change in events.items():
            is_dir = _is_dir(self._prefix + rel)
            if is_dir and change == _MODIFIED:
                continue  # a folder's mtime: what changed inside is reported by itself
            if self.rules.ignored(rel, is_dir):
                continue
            found.append(rel)
            if is_dir and change == _ADDED:
                found.extend(self._scan(rel))
        if found:
            with self._lock:
                self._pending.update(found)

    def _scan(self, rel_dir: str) -> Iterator[str]:
        """Every path under a new folder that the rules keep (symlinks not followed)."""
        stack = [rel_dir]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(self._prefix + folder))
            except OSError:
                continue  # gone again, or unreadable: its own events say the rest
            for entry in entries:
                rel = f"{folder}/{entry.name}"
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                if self.rules.ignored(rel, is_dir):
                    continue
                yield rel
                if is_dir:
                    stack.append(rel)

    # --- sending -------------------------------------------------------------------

    def _flush(self, sock: zmq.Socket[bytes], now: float) -> None:
        if self._ready_unsent:
            if not _try_send(sock, WatcherReady(os.getpid())):
                return
            self._ready_unsent = False
        if not self._pending or self._git_holds(now):
            return
        for batch in _batches(self.pending_paths()):
            recorded = {p: _signature(self.root / p) for p in batch} if self.poll else None
            if not _try_send(sock, FilesChanged(batch)):
                if not self._blocked:
                    log.info("broker not reading: holding %d changed paths", len(self._pending))
                self._blocked = True
                return
            with self._lock:
                self._pending.difference_update(batch)
            if recorded is not None:
                self._rechecks.append((now + RECHECK_S, recorded))
        self._blocked = False

    def _git_holds(self, now: float) -> bool:
        """True while a git checkout/rebase holds the index: send nothing yet."""
        if not os.path.exists(self._index_lock):
            self._hold_since = None
            self._hold_warned = False
            return False
        if self._hold_since is None:
            self._hold_since = now
            log.info("%s exists: holding changes until git is done", self._index_lock)
        if now - self._hold_since < self.git_hold_max_s:
            return True
        if not self._hold_warned:
            self._hold_warned = True
            log.warning(
                "%s has existed for %.0f s; taking it as stale (a crashed git?) and "
                "reporting changes anyway. Remove it if no git command is running.",
                self._index_lock,
                now - self._hold_since,
            )
        return False

    def _recheck(self, now: float) -> None:
        """Poll mode: report paths whose stat changed since they were sent."""
        changed: list[str] = []
        while self._rechecks and self._rechecks[0][0] <= now:
            _, recorded = self._rechecks.popleft()
            changed += [p for p, sig in recorded.items() if _signature(self.root / p) != sig]
        if changed:
            log.debug("poll re-check found %d paths the scan missed", len(changed))
            with self._lock:
                self._pending.update(changed)


def _try_send(sock: zmq.Socket[bytes], msg: Message) -> bool:
    """Queue `msg` without blocking; False when the high-water mark is reached."""
    try:
        sock.send(encode(msg, sender=SENDER), zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return False
    return True


def _batches(paths: list[str]) -> Iterable[list[str]]:
    """Sorted paths cut into messages of at most ~BATCH_BYTES of path text."""
    batch: list[str] = []
    size = 0
    for path in paths:
        if batch and size + len(path) > BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += len(path) + 1
    if batch:
        yield batch


def _is_dir(path: str) -> bool | None:
    """Whether `path` is a folder (symlinks not followed); None when it is gone."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return None


def _signature(path: Path) -> Signature:
    """What the poll-mode re-check compares. A folder's mtime is left out: it moves
    whenever an entry inside changes, and those entries are reported by themselves."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return (-1, -1, st.st_ino)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _index_lock_path(root: Path) -> Path:
    """Where git puts the index lock: `.git/index.lock`, or in the git dir that a `.git`
    file points to (worktrees, submodules). Read once, when the watcher starts."""
    dot_git = root / ".git"
    if dot_git.is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError, IndexError):
            first = dot_git.read_text().splitlines()[0]
            if first.startswith("gitdir:"):
                return (root / first.removeprefix("gitdir:").strip()) / "index.lock"
    return dot_git / "index.lock"
