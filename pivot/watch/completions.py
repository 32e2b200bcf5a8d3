"""Which writes are complete: the watcher's own inotify reader, beside watchfiles.

watchfiles (notify) reports that a file was modified, not that its writer closed it. So
a saved file waited for a quiet window (the watcher's step, then the broker's 20 ms), and
a file still being written (a slow writer pausing, a large copy) was hashed as final when
a pause outlasted that window: its stages ran on half a file, then again.

This reader watches the same kept folders (one more kernel watch per folder; inotify's
limit is per user, 192k here) and sorts what it sees:

- a file *open* for writing (modified, or just created and not closed since) is
  withheld from the watcher's reports until its writer closes it, for at most
  OPEN_HOLD_S (a log kept open for hours is then reported as it grows, as before);
- a *completed* path (closed after writing, renamed into place or away, deleted, linked)
  joins the current burst. Once no event has come for SETTLE_S, the burst is over: the
  watcher reports it at once, marked settled, and the broker checks it without its quiet
  window when it is a lone save (a few paths: broker/state.py). A copy of many files is
  more than a save, so the broker's window still groups it whatever pauses the copier
  took. A burst is not over while a file beside one of its paths (in the same folder,
  not the project's root), whose writing began around the burst's (BESIDE_S), is still
  open: the next file of a `cp -r`, a slow writer beside a save. A stage reading the
  folder, or both files, ran on the half-written one, then again once it was closed.
- a folder created, moved or deleted, a `.pivotignore` or `pyvenv.cfg`, or a queue
  overflow makes the burst *unsure*: it goes the old way (watchfiles' report, the
  watcher's scan, the broker's window).

watchfiles stays the source of truth: it sees what this reader misses (folders not yet
watched here, the poll mode, other systems). It reports the same paths a few
milliseconds later; a path reported here and not touched since (no event here after the
report) is dropped from its report (`echo`), and watchfiles' reports of paths in a burst
still going here are withheld (at most BURST_HOLD_S) so that an unsettled report does not
make the broker wait for everything after it.

Linux only, via ctypes (libc's inotify calls; no dependency). Anything unavailable leaves
the watcher as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import select
import stat
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pivot.watch.plan import WatchPlan, abs_path, under_any
from pivot.watch.rules import IgnoreRules

__all__ = ["Completions", "open_completions"]

log = logging.getLogger(__name__)

SETTLE_S = 0.003  # a burst's events come closer than this (a copy: tens of microseconds)
OPEN_HOLD_S = 5.0  # a file open for writing longer than this is reported as it changes
BESIDE_S = 1.0  # a file being written holds a burst beside it if begun this soon before it
BURST_HOLD_S = 5.0  # a burst that goes on longer is reported as watchfiles sees it (the
# broker's longest wait: a stream of changes still starts a wave every 5 s)
_CONFIG_NAMES = frozenset({"params.yaml", "dvc.yaml", ".pivotignore"})
WATCH_SHARE = 4  # of the user's inotify watches, this reader takes at most a quarter
DEFAULT_BUDGET = 2048  # when the limit cannot be read (Linux's old default: 8192)
IDLE_STEPS = 3  # the watcher reads watchfiles every IDLE_STEPS steps while all is quiet
FRESH_S = 0.02  # a burst this young is followed here only (watchfiles is read after)
ECHO_S = 2.0  # watchfiles reports within its debounce (50 ms); forget older reports

_MODIFY, _ATTRIB, _CLOSE_WRITE = 0x2, 0x4, 0x8
_MOVED_FROM, _MOVED_TO, _CREATE, _DELETE = 0x40, 0x80, 0x100, 0x200
_DELETE_SELF, _MOVE_SELF = 0x400, 0x800
_Q_OVERFLOW, _IGNORED, _ISDIR = 0x4000, 0x8000, 0x40000000
_ONLYDIR, _DONT_FOLLOW, _EXCL_UNLINK = 0x01000000, 0x02000000, 0x04000000
_MASK = (
    _MODIFY | _ATTRIB | _CLOSE_WRITE | _MOVED_FROM | _MOVED_TO | _CREATE | _DELETE
    | _DELETE_SELF | _MOVE_SELF | _ONLYDIR | _DONT_FOLLOW | _EXCL_UNLINK
)
_NONBLOCK, _CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC  # IN_NONBLOCK, IN_CLOEXEC on Linux
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len
_READ = 1 << 16


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.init1 = libc.inotify_init1
        self.init1.argtypes = [ctypes.c_int]
        self.add = libc.inotify_add_watch
        self.add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.rm = libc.inotify_rm_watch
        self.rm.argtypes = [ctypes.c_int, ctypes.c_int]


def open_completions(root: Path, rules: IgnoreRules) -> Completions | None:
    """A reader for `root`, or None where inotify is not available (it is only an aid)."""
    try:
        libc = _Libc()
    except (OSError, AttributeError):
        return None
    fd = libc.init1(_NONBLOCK | _CLOEXEC)
    if fd < 0:
        log.info("no inotify instance for completed writes (%s): saves wait for the "
                 "quiet window", os.strerror(ctypes.get_errno()))
        return None
    return Completions(root, rules, libc, fd, budget=_watch_budget())


def _watch_budget() -> int:
    """How many folders this reader may watch: a quarter of the user's inotify watches
    (fs.inotify.max_user_watches, shared by every process of the user), so that it never
    takes the watches watchfiles needs to see changes at all."""
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as f:
            return max(0, int(f.read()) // WATCH_SHARE)
    except (OSError, ValueError):
        return DEFAULT_BUDGET


class Completions:
    """One inotify instance over the kept folders. Use from the watcher's loop thread."""

    def __init__(self, root: Path, rules: IgnoreRules, libc: _Libc, fd: int, *, budget: int) -> None:
        self.root = root
        self.budget = budget  # folders at most (see _watch_budget)
        self._warned_budget = False
        self.rules = rules
        self.fd = fd
        self._libc = libc
        self._wds: dict[int, str] = {}  # watch descriptor -> project-relative folder
        self._folders: dict[str, int] = {}
        self._roots: frozenset[str] = frozenset()  # the plan's, as last synced
        self._flat: frozenset[str] = frozenset()
        self.open: dict[str, float] = {}  # path -> when its writer first modified it
        self.changed: dict[str, None] = {}  # since the last take(), in order
        self._unsure = False  # this burst had something only the watcher's scan can tell
        self._last_event = 0.0
        self._burst_began = 0.0  # when the first event after a quiet SETTLE_S came
        self._burst_start = 0.0  # when the first of `changed` came
        self._sent: dict[str, float] = {}  # reported by take(), untouched since
        self._poller = select.poll()  # not select(): descriptors above 1023
        self._poller.register(fd, select.POLLIN)

    # --- watches -------------------------------------------------------------------

    def sync(self, plan: WatchPlan) -> None:
        """Watch the folders `plan` keeps: its flat folders, and every folder under its
        recursive roots (walked when a root is new; folders made in one later are
        watched as their events come)."""
        roots, flat = plan.recursive, plan.flat
        dropped = [
            rel for rel in self._folders
            if (rel in self._flat or under_any(rel, self._roots - roots))
            and rel not in flat and not under_any(rel, roots)
        ]
        for rel in dropped:
            self._unwatch(rel)
        for rel in sorted(flat - self._flat):
            self._watch(rel)
        for top in sorted(roots - self._roots):
            for rel in self._walk(top):
                self._watch(rel)
        self._roots, self._flat = roots, flat

    def watches(self, rel: str) -> bool:
        """Whether the folder holding `rel` is watched here."""
        return rel.rpartition("/")[0] in self._folders

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self._wds.clear()
        self._folders.clear()

    # --- events --------------------------------------------------------------------

    def drain(self, now: float) -> bool:
        """Read every queued event; True when there was any."""
        got = False
        while True:
            try:
                data = os.read(self.fd, _READ)
            except BlockingIOError:
                return got
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                return got
            if now - self._last_event > SETTLE_S:
                self._burst_began = now
            got = True
            self._last_event = now
            self._parse(data, now)

    def burst(self, now: float) -> Literal["none", "going", "settled", "unsure"]:
        """Where the burst of completed paths is: "going" (an event within SETTLE_S),
        "settled" (over: report it now), "unsure" (over, but it held something only the
        watcher's scan can tell: leave it to watchfiles' report). Waits up to SETTLE_S
        for a next event when the last one is that recent. Files still open are not in
        it: each is reported once its writer closes it."""
        if not self.changed and not self._unsure:
            return "none"
        quiet = self._last_event + SETTLE_S - now
        if quiet > 0 and self._poller.poll(int(quiet * 1000) + 1):
            self.drain(time.monotonic())
            return "going"
        if self._unsure:
            return "unsure"
        return "going" if self._held_beside(now) else "settled"

    def _held_beside(self, now: float) -> bool:
        """Whether a file in the folder of one of the burst's paths (below the project's
        root), begun around it (at most BESIDE_S before its first path) and open for
        less than OPEN_HOLD_S, is still being written: the burst ends once it is closed
        (a log written for long beside saves does not hold them)."""
        if not self.open or not self.changed:
            return False
        # (Not the project's own folder: it holds the pipeline's files beside files of
        # every kind, and a stage reads no more than some files of it.)
        folders = {path.rpartition("/")[0] for path in self.changed} - {""}
        began = self._burst_start - BESIDE_S
        return any(
            since >= began and now - since < OPEN_HOLD_S and path.rpartition("/")[0] in folders
            for path, since in self.open.items()
        )

    # The watcher's WatchSet.wait() sleeps on `fd` between steps (see Waker):

    def wait_ms(self, step_ms: int) -> int:
        """How long to sleep on `fd` at most: IDLE_STEPS steps (an event here wakes it at
        once; what only watchfiles sees, in a folder not watched here yet, waits that
        long), or until a burst turns quiet."""
        if not self.changed and not self._unsure:
            return step_ms * IDLE_STEPS
        now = time.monotonic()
        quiet = self._last_event + SETTLE_S - now
        if quiet <= 0 and not self._unsure and self._held_beside(now):
            return step_ms  # its writer's next event (a close) wakes it sooner
        return max(0, min(step_ms, int(quiet * 1000) + 1))

    def wake(self) -> bool:
        """Read the queue; True when a burst is over (quiet for SETTLE_S)."""
        now = time.monotonic()
        self.drain(now)
        if not (self.changed or self._unsure) or now - self._last_event < SETTLE_S:
            return False
        return self._unsure or not self._held_beside(now)  # (held: the close wakes it)

    def fresh(self) -> bool:
        """Whether the current burst began less than FRESH_S ago: the watcher then
        listens here only, rather than sit in watchfiles' own quiet window (a save's
        close comes within microseconds of its first write)."""
        return time.monotonic() - self._burst_began < FRESH_S

    def reported(self, paths: Iterable[str]) -> None:
        """The watcher sent these paths (watchfiles saw them): no need to again."""
        for path in paths:
            self.changed.pop(path, None)

    def withholds(self, rel: str, now: float) -> bool:
        """Whether watchfiles' report of `rel` waits: its file is open for writing (for
        at most OPEN_HOLD_S), or a burst is going on here (for at most BURST_HOLD_S),
        which this reader reports whole once it is over. watchfiles reports a long
        burst in batches tens of milliseconds apart, and the broker's quiet window
        would close between two of them: one burst, several waves. Code and params are
        not held: a code change must stop the stages that would start on old code."""
        since = self.open.get(rel)
        if since is not None:
            return now - since < OPEN_HOLD_S
        if not self.changed or now - self._burst_start >= BURST_HOLD_S:
            return False
        return not (rel.endswith(".py") or rel.rpartition("/")[2] in _CONFIG_NAMES)

    def next_release(self, now: float) -> float | None:
        """Seconds until a withheld path is released (the watcher wakes for it)."""
        # A file open longer is let go: its next write holds it again.
        self.open = {p: since for p, since in self.open.items() if now - since < OPEN_HOLD_S}
        due = [since + OPEN_HOLD_S for since in self.open.values()]
        if self.changed and now < self._burst_start + BURST_HOLD_S:
            due.append(self._burst_start + BURST_HOLD_S)
        return min(due) - now if due else None

    def take(self, now: float) -> list[str]:
        """The changed paths, to be reported now; remembered until touched again."""
        paths = list(self.changed)
        self.changed.clear()
        self._sent = {p: t for p, t in self._sent.items() if now - t < ECHO_S}
        for path in paths:
            self._sent[path] = now
        return paths

    def forget_burst(self) -> None:
        """The burst goes the slow way (the watcher's quiet window): start over."""
        self.changed.clear()
        self._unsure = False

    def echo(self, rel: str, now: float) -> bool:
        """Whether watchfiles' report of `rel` repeats one already made here: nothing
        happened to it since (drain() first: an event watchfiles has read is queued
        here too, the kernel queues it to every instance in the same call)."""
        sent = self._sent.get(rel)
        return sent is not None and now - sent < ECHO_S

    # --- internals -----------------------------------------------------------------

    def _parse(self, data: bytes, now: float) -> None:
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, _cookie, size = _HEADER.unpack_from(data, offset)
            raw = data[offset + _HEADER.size : offset + _HEADER.size + size]
            offset += _HEADER.size + size
            if mask & _Q_OVERFLOW:
                self._lost()
                continue
            folder = self._wds.get(wd)
            if folder is None:
                continue
            if mask & _IGNORED:
                self._wds.pop(wd, None)
                if self._folders.get(folder) == wd:
                    del self._folders[folder]
                continue
            if mask & (_DELETE_SELF | _MOVE_SELF):
                self._unsure = True
                continue
            name = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            rel = f"{folder}/{name}" if folder else name
            self._event(rel, mask, now)

    def _event(self, rel: str, mask: int, now: float) -> None:
        self._sent.pop(rel, None)
        if mask & _ISDIR:
            # A folder came, went or moved: the watcher plans and scans those.
            self._unsure = True
            if mask & (_CREATE | _MOVED_TO) and not self.rules.ignored(rel, is_dir=True):
                for sub in self._walk(rel):
                    self._watch(sub)
            elif mask & (_DELETE | _MOVED_FROM):
                for sub in [f for f in self._folders if f == rel or f.startswith(rel + "/")]:
                    self._unwatch(sub)
            return
        if self.rules.is_rule_file(rel):
            self._unsure = True  # the watcher reads the rules again, then reports
            return
        if self.rules.ignored(rel, is_dir=False):
            return
        if mask & _MODIFY or (mask & _CREATE and self._being_written(rel)):
            self.open.setdefault(rel, now)  # being written: not complete any more
            self.changed.pop(rel, None)
            return
        if mask & _ATTRIB and rel in self.open:
            return  # a chmod while it is written: it stays open
        # Closed after writing, renamed into place or away, deleted, a new link, or its
        # attributes changed: complete.
        self.open.pop(rel, None)
        if not self.changed:
            self._burst_start = now
        self.changed[rel] = None

    def _being_written(self, rel: str) -> bool:
        """A file just created was opened to be written (its close comes), also when it
        has bytes already: a copy (`cp`, `shutil.copyfile`) fills it in one call, whose
        only modify event comes at its end, and it was reported complete, half copied.
        A link, a fifo, or a file moved in by a hard link (whose ctime the link moved
        past its mtime) is complete as it comes."""
        try:
            st = os.lstat(abs_path(self.root, rel))
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return False
        return st.st_size == 0 or st.st_ctime_ns == st.st_mtime_ns

    def _over_budget(self) -> None:
        if not self._warned_budget:
            self._warned_budget = True
            log.info("completed writes: %d folders watched, no more (the user's inotify "
                     "watches are shared with watchfiles); saves in the others wait for "
                     "the quiet window", len(self._folders))

    def _lost(self) -> None:
        log.info("the kernel dropped file events (queue overflow): saves wait for the "
                 "quiet window until the watcher's rescan")
        self.open.clear()
        self._sent.clear()
        self._unsure = True

    def _walk(self, top: str) -> Iterable[str]:
        """`top` and the folders under it, symlinks not followed, ignored ones skipped."""
        stack = [top]
        while stack:
            rel = stack.pop()
            yield rel
            with contextlib.suppress(OSError):
                for entry in os.scandir(abs_path(self.root, rel)):
                    child = f"{rel}/{entry.name}" if rel else entry.name
                    with contextlib.suppress(OSError):
                        if entry.is_dir(follow_symlinks=False) and not self.rules.ignored(child, is_dir=True):
                            stack.append(child)

    def _watch(self, rel: str) -> None:
        if rel not in self._folders and len(self._folders) >= self.budget:
            self._over_budget()
            return
        wd = self._libc.add(self.fd, os.fsencode(abs_path(self.root, rel)), _MASK)
        if wd < 0:
            if ctypes.get_errno() == errno.ENOSPC:
                self._over_budget()
            return  # gone again, or not readable: the watcher's own watch decides
        old = self._wds.get(wd)
        if old is not None and old != rel:
            self._folders.pop(old, None)  # the same folder under a new name (moved)
        self._wds[wd] = rel
        self._folders[rel] = wd

    def _unwatch(self, rel: str) -> None:
        wd = self._folders.pop(rel, None)
        if wd is None:
            return
        self._wds.pop(wd, None)
        self._libc.rm(self.fd, wd)
