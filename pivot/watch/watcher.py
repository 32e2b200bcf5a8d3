"""The watcher: tells the broker which project files changed, and never waits for it.

    OS (inotify, or a polling scan) --> RustNotify threads (watchfiles; accumulate events)
                                              |
                      Watcher.run loop: WatchSet.wait(debounce, timeout, stop)
                        - absolute paths -> project-relative POSIX paths
                        - .pivotignore / pyvenv.cfg changes update the rules first
                        - ignored paths dropped; a new folder is watched and scanned
                        - everything goes into `pending` (a set: coalesced, deduplicated)
                        - flush: unless .git/index.lock exists, send sorted `pending` as
                          FilesChanged over PUSH with NOBLOCK; on zmq.Again keep it for
                          the next iteration (later changes merge in)
                                              |
                                              v
                                  broker PULL `changes` endpoint

Only folders the rules keep are watched (pivot/watch/plan.py): the folders with nothing
ignored under them recursively, the others one by one, so `.venv/`, `.git/`,
`node_modules/` or a `.pivotignore`d data folder cost no inotify watch and wake nothing.
The plan is made again, and the changed RustNotify instance rebuilt
(pivot/watch/watchset.py), when the rules change (`.pivotignore`, a `pyvenv.cfg`), when
a kept folder appears where notify does not watch new folders by itself (in a folder
watched alone), and when an ignored folder appears under a recursive watch (notify
watched it). A full plan walks every kept folder, and a rebuilt recursive instance
walks its roots again: a cost that grows with the project's kept folders, paid at
start and when the rules change. A folder that appears in a flat folder is planned on
its own (WatchPlan.with_new_folders) and costs about its own size.

`WatcherReady(pid)` is sent once the watches of every kept folder are registered (and a
folder that appeared in a flat-watched folder during that is planned too) and before
any FilesChanged. The loop's timeout is the next thing it has to do: retry a blocked
send (50 ms), look at `.git/index.lock` again (100 ms), a poll-mode re-check; with
nothing to do it waits for changes only. `stop()` (any thread, or a signal handler) sets
an event RustNotify checks every step, so `run()` returns within a few milliseconds.

A folder that appears (created, or moved in) is scanned once its watch exists: inotify
only watches a new folder once notify (or the plan) has seen it, so files written into
it right away, or a whole tree moved in with one rename, produce no events of their
own. A folder that is deleted or moved out is reported as the folder alone when the OS
reports no events for what was inside it: a reported path stands for everything under
it. A folder that a `.pivotignore` edit stops ignoring is watched once the edit is
read; of what it holds, only files changed since the edit (by ctime) are reported: they
were written before the folder's watch existed. Nothing inside an ignored folder is
seen, though: a virtual environment that loses its `pyvenv.cfg` (the folder kept) stays
ignored until the folder itself goes or comes back, or `.pivotignore` changes.

A "modified" event on a folder (its mtime or attributes) is dropped: what changed
inside it is reported path by path.

Poll mode (`poll=True`: Docker Desktop mounts, network file systems) scans every 300 ms
and compares modification times in whole seconds only (watchfiles 1.3: not size, not
inode), so a rewrite in the same second as the change it last saw is missed. So about
one second after each batch it sends, the watcher stats those paths again and reports
any whose (size, mtime_ns, inode) differs from what it recorded when it sent them (and
re-checks that batch in turn; it stops once the paths are quiet). At start it does the
same for every kept file, recorded before the scanner's first pass: a file never
reported yet could otherwise be edited unseen within the second that pass saw.

Transient paths (a temp file written then renamed) are reported too: the watcher does
not guess the order of events inside one batch, and the broker sees they do not exist.

Beside RustNotify, a reader of our own (pivot/watch/completions.py) sees when a write
completes: a file still open for writing is held back until closed, and a burst of
completed writes is sent as soon as it is over, marked settled (a lone save then skips
the broker's quiet window). The loop sleeps on that reader's queue between steps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import zmq

from pivot.protocol.codec import encode
from pivot.protocol.messages import FilesChanged, Message, WatcherReady
from pivot.transport.sockets import make_socket
from pivot.watch.completions import Completions, open_completions
from pivot.watch.plan import WatchPlan, plan_watches, under_any
from pivot.watch.rules import IGNORE_FILE, IgnoreRules
from pivot.watch.watchset import RESCAN, Changes, WatchSet

__all__ = ["DEFAULT_DEBOUNCE_MS", "Watcher"]

log = logging.getLogger(__name__)

SENDER = "watcher"
STEP_MS = 5  # MEASURED.md: debounce 50 / step 5 detects in ~9 ms at 0.4% idle CPU
DEFAULT_DEBOUNCE_MS = 50
POLL_DELAY_MS = 300
RETRY_MS = 50  # a send that hit the high-water mark is retried this often
READY_RETRY_MS = 5
GIT_CHECK_MS = 100  # while held by .git/index.lock, look again this often
GIT_HOLD_MAX_S = 30.0  # an index.lock older than this is taken as stale (git crashed)
RECHECK_S = 1.0  # poll mode: stat reported paths again this long after sending them
DEFAULT_SNDHWM = 100
BATCH_BYTES = 1 << 20  # paths per FilesChanged, in bytes (far below MAXMSGSIZE)
MAX_REPLANS = 10  # folders still appearing while being planned: give up after this
GROW_MAX = 500  # folders planned one by one (WatchPlan.with_new_folders) before a full plan
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
        keys: Any = None,
        completions: bool = True,
    ) -> None:
        self.root = Path(os.path.realpath(root))
        self.changes = changes
        self.poll = poll
        self.debounce_ms = max(1, debounce_ms)
        self.sndhwm = sndhwm
        self.git_hold_max_s = git_hold_max_s
        self.rules = IgnoreRules(self.root)
        self.ready = threading.Event()  # set once the OS watches are registered
        self._watches = WatchSet(self.root, poll=poll, poll_delay_ms=POLL_DELAY_MS, step_ms=STEP_MS)
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
        # Started by `pivot up` beside its broker: it connects before the broker binds.
        self.early_connect = False
        self._retarget: str | None = None  # a new broker's changes endpoint, from retarget()
        self._keys: Any = keys  # CURVE keys for the PUSH socket (pivot.transport.curve)
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self.max_wait_ms = 0  # >0: wake at least this often (to see a retarget promptly)
        self._use_completions = completions and not poll
        self._fast: Completions | None = None  # completed writes (pivot/watch/completions.py)

    # --- API -----------------------------------------------------------------------

    def stop(self) -> None:
        """Make `run()` return promptly. Thread-safe; fine in a signal handler."""
        self._stop.set()

    def retarget(self, changes: str, keys: Any = None) -> None:
        """Report to `changes` from now on (a new broker), starting with `watcher_ready`
        (it could not see what changed before). Thread-safe."""
        with self._lock:
            self._retarget = changes
            self._keys = keys

    def pending_paths(self) -> list[str]:
        """Paths seen but not yet handed to the socket (blocked or held), sorted."""
        with self._lock:
            return sorted(self._pending)

    def run(self) -> None:
        """Watch until `stop()`. Closes the watch and the socket before returning."""
        ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        if isinstance(self.changes, str):
            ctx = zmq.Context()
            self._ctx = ctx
            sock = self._push(self.changes)
        else:
            sock = self.changes
        if self._use_completions:
            self._fast = open_completions(self.root, self.rules)
        try:
            try:
                # Poll mode: the scanner's first pass is its baseline, in whole seconds.
                # A file edited again within the second it had then would never be
                # reported: its signature, taken before that pass, is checked once more.
                baseline = self._kept_files() if self.poll else None
                self._rewatch()
                if baseline:
                    self._rechecks.append((time.monotonic() + RECHECK_S, baseline))
                # Every kept folder is watched now: anything written after this is seen.
                self._flush(sock, time.monotonic())
                self.ready.set()
                self._loop(sock)
            finally:
                self._watches.close()
                if self._fast is not None:
                    self._fast.close()
        finally:
            sock.close(linger=0)
            if ctx is not None:
                ctx.term()  # bounded: the only socket is closed with linger 0

    # --- the loop ------------------------------------------------------------------

    def _push(self, endpoint: str) -> zmq.Socket[bytes]:
        assert self._ctx is not None, "retarget() needs a watcher that owns its socket"
        sock = make_socket(self._ctx, zmq.PUSH, steady=self.early_connect)
        sock.setsockopt(zmq.SNDHWM, self.sndhwm)
        if self._keys is not None:
            self._keys.apply(sock)
        sock.connect(endpoint)
        return sock

    def _loop(self, sock: zmq.Socket[bytes]) -> None:
        try:
            self._loop_on(sock)
        finally:
            self._sock_in_use.close(linger=0)

    def _loop_on(self, sock: zmq.Socket[bytes]) -> None:
        self._sock_in_use = sock
        while not self._stop.is_set():
            with self._lock:
                target, self._retarget = self._retarget, None
            if target is not None:
                log.info("reporting to a new broker at %s", target)
                sock.close(linger=0)
                sock = self._sock_in_use = self._push(target)
                self._ready_unsent = True
            timeout = self._timeout_ms(time.monotonic())
            result = self._watches.wait(self.debounce_ms, timeout, self._stop, self._fast)
            if result == "stop":
                return
            if not isinstance(result, str):
                self._take(result)
            now = time.monotonic()
            if self._rechecks:
                self._recheck(now)
            self._flush(sock, now, settled=self._settled(now))

    def _settled(self, now: float) -> bool:
        """Whether a burst of completed writes is over: its paths join `pending`, to be
        sent at once, marked settled (the broker skips its quiet window for a lone
        save)."""
        fast = self._fast
        if fast is None:
            return False
        burst = fast.burst(now)
        if burst == "unsure":
            fast.forget_burst()
        if burst != "settled":
            return False
        paths = [p for p in fast.take(now) if _utf8(p)]
        with self._lock:
            self._pending.update(paths)
            # What the reader cannot vouch for (a folder it does not watch) goes with
            # it, unsettled.
            going = [p for p in self._pending if not fast.withholds(p, now)]
        return all(fast.watches(p) for p in going)

    def _timeout_ms(self, now: float) -> int:
        """Milliseconds until the loop has something to do; 0 = only changes wake it."""
        waits: list[float] = []
        if self._ready_unsent:
            # The broker may not have bound yet (`pivot up` starts us beside it): the
            # first wave waits for this message, so it is retried often.
            waits.append(READY_RETRY_MS)
        elif self._pending:
            waits.append(GIT_CHECK_MS if self._hold_since is not None else RETRY_MS)
        if self._fast is not None and (release := self._fast.next_release(now)) is not None:
            waits.append(release * 1000)  # an open file stops being held then
        if self._rechecks:
            waits.append((self._rechecks[0][0] - now) * 1000)
        if self.max_wait_ms:
            waits.append(self.max_wait_ms)
        return max(1, int(min(waits))) if waits else 0

    def _take(self, changes: Changes) -> None:
        fast = self._fast
        if fast is not None:
            fast.drain(time.monotonic())  # before echo(): every earlier event is read
        events: dict[str, int] = {}
        rescan: list[str] = []
        for change, path in changes:
            if change == RESCAN:
                rel = "" if path == self._prefix.rstrip("/") else path[len(self._prefix):]
                rescan.append(rel)
            elif path.startswith(self._prefix):
                rel = path[len(self._prefix) :]
                # Keep "added" when a path has several events: it triggers the scan.
                events[rel] = _ADDED if change == _ADDED else events.get(rel, change)
        replan = False
        for rel in events:
            # .pivotignore first: it decides this batch too
            replan = self.rules.note_change(rel) or replan
        before = self._watches.plan
        found: list[str] = []
        new_folders: list[str] = []
        for rel, change in events.items():
            is_dir = _is_dir(self._prefix + rel)
            if is_dir and change == _MODIFIED:
                continue  # a folder's mtime: what changed inside is reported by itself
            ignored = self.rules.ignored(rel, is_dir)
            if is_dir and change == _ADDED:
                if not ignored:
                    new_folders.append(rel)
                elif self._watches.plan.auto_watched(rel):
                    replan = True  # notify watches an ignored folder: drop that watch
            if not ignored:
                found.append(rel)
        found += self._scan_new(new_folders, replan=replan)
        for rel in rescan:
            found += self._scan(rel)[0]
        if IGNORE_FILE in events:
            found += self._catch_up(before)
        if fast is not None:
            now = time.monotonic()
            found = [rel for rel in found if not fast.echo(rel, now)]
        if found:
            with self._lock:
                self._pending.update(found)

    def _scan_new(self, folders: list[str], *, replan: bool) -> list[str]:
        """Scan new folders, each once it is watched. Notify already watches those that
        appeared under a recursive root (an ignored folder found in one means planning
        again, to drop its watch); the others ("appeared") are planned and watched first.
        """
        found: list[str] = []
        appeared: list[str] = []
        for rel in folders:
            if self._watches.plan.auto_watched(rel):
                paths, saw_ignored = self._scan(rel)
                found += paths
                replan = replan or saw_ignored
            else:
                appeared.append(rel)
        if replan or appeared:
            self._rewatch(_topmost(appeared), full=replan)
        for rel in appeared:
            found += self._scan(rel)[0]
        return found

    def _rewatch(self, appeared: list[str] | None = None, *, full: bool = True) -> None:
        """Plan the watches (`full`: the whole project, else only the `appeared`
        folders) and register them. Again while a newly planned flat folder gained a
        folder between its listing and its watch (no event announces that one), or
        (poll mode) a planned folder no longer exists."""
        appeared = appeared or []
        before = self._watches.plan
        for _ in range(MAX_REPLANS):
            plan = self._next_plan(appeared, full=full)
            try:
                self._watches.apply(plan, renew=appeared)
            except FileNotFoundError:
                full = True  # a plan grown one folder at a time still lists deleted ones
                continue
            fresh = [f for f in plan.flat if f not in before.flat or under_any(f, appeared)]
            if not plan.unplanned_folders(self.root, fresh):
                if self._fast is not None:
                    self._fast.sync(plan)
                return
        log.warning("folders kept appearing while planning the watches; some may be unwatched")

    def _next_plan(self, appeared: list[str], *, full: bool) -> WatchPlan:
        plan = self._watches.plan
        incremental = (
            not full
            and plan.added < GROW_MAX
            and all(rel.rpartition("/")[0] in plan.flat for rel in appeared)
        )
        if incremental:
            return plan.with_new_folders(self.root, self.rules, appeared)
        return plan_watches(self.root, self.rules)

    def _catch_up(self, before: WatchPlan) -> list[str]:
        """Files that a `.pivotignore` edit stopped ignoring and that changed after the
        edit: written before their folder's new watch existed, no event reports them."""
        since = _edited_ns(self.root)
        plan = self._watches.plan
        kept = [f for f in plan.flat | plan.recursive if not before.covers(f)]
        found: list[str] = []
        for top in _topmost(kept):
            for rel in self._scan(top)[0]:
                with contextlib.suppress(OSError):
                    st = os.lstat(self._prefix + rel)
                    # ctime: also moved when a copy keeps an old mtime
                    if not stat.S_ISDIR(st.st_mode) and st.st_ctime_ns >= since:
                        found.append(rel)
        return found

    def _scan(self, rel_dir: str) -> tuple[list[str], bool]:
        """Every path under a new folder that the rules keep (symlinks not followed), and
        whether an ignored folder is under it."""
        found: list[str] = []
        saw_ignored = False
        stack = [rel_dir]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(self._prefix + folder))
            except OSError:
                continue  # gone again, or unreadable: its own events say the rest
            for entry in entries:
                if not _utf8(entry.name):
                    continue  # a name the protocol cannot carry (nor a stage declare)
                rel = f"{folder}/{entry.name}" if folder else entry.name
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                if self.rules.ignored(rel, is_dir):
                    saw_ignored = saw_ignored or is_dir
                    continue
                found.append(rel)
                if is_dir:
                    stack.append(rel)
        return found, saw_ignored

    # --- sending -------------------------------------------------------------------

    def _flush(self, sock: zmq.Socket[bytes], now: float, *, settled: bool = False) -> None:
        """Send what is pending; `settled`: a burst over, every path in it complete."""
        if self._ready_unsent:
            if not _try_send(sock, WatcherReady(os.getpid())):
                return
            self._ready_unsent = False
        if not self._pending or self._git_holds(now):
            return
        paths = self.pending_paths()
        fast = self._fast
        if fast is not None:  # files being written, a burst going on
            paths = [p for p in paths if not fast.withholds(p, now)]
        for batch in _batches(paths):
            recorded = {p: _signature(self.root / p) for p in batch} if self.poll else None
            if not _try_send(sock, FilesChanged(batch, settled=settled)):
                if not self._blocked:
                    log.info("broker not reading: holding %d changed paths", len(self._pending))
                self._blocked = True
                return
            with self._lock:
                self._pending.difference_update(batch)
            if self._fast is not None:
                self._fast.reported(batch)
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

    def _kept_files(self) -> dict[str, Signature]:
        """Every file the rules keep, with its signature (a walk that never enters an
        ignored folder)."""
        found: dict[str, Signature] = {}
        for folder, subdirs, files in os.walk(self.root):
            rel_dir = os.path.relpath(folder, self.root)
            prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            subdirs[:] = [d for d in subdirs if not self.rules.ignored(prefix + d, is_dir=True)]
            for name in files:
                rel = prefix + name
                if not self.rules.ignored(rel, is_dir=False):
                    found[rel] = _signature(self.root / rel)
        return found

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


def _topmost(folders: list[str]) -> list[str]:
    """`folders` without those inside another one of them."""
    tops: list[str] = []
    for rel in sorted(folders, key=len):  # a folder before anything inside it
        if not under_any(rel, tops):
            tops.append(rel)
    return tops


def _edited_ns(root: Path) -> int:
    """When `.pivotignore` was last written (or, deleted, when the root last changed)."""
    for path in (root / IGNORE_FILE, root):
        with contextlib.suppress(OSError):
            return os.stat(path).st_mtime_ns
    return 0


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


def _utf8(name: str) -> bool:
    """Whether a name from the file system is valid UTF-8 (Python decodes the others with
    surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
