"""A state cache so an unchanged file is never read twice.

    hash_path(p) ──stat──> key(p) ──> in-memory rows (all rows, loaded with one SELECT)
                                        │ miss, stale or racy
                                        v
                                      SELECT one row (another process may have hashed it)
                                        │ miss, stale or racy
                                        v
                          hashed_at = clock(); read + xxh3; INSERT OR REPLACE

One SQLite file (Pivot uses `<root>/.pivot/state.db`) in WAL mode is shared by every Pivot
process and thread; each thread of each process has its own connection. A row is
(path, inode, size, mtime_ns, digest, hashed_at_ns), keyed by the absolute path whose
directory part is resolved (`os.path.realpath`, once per directory and instance); the file
name itself is not resolved, just as a directory walk lists a symlinked file by its own
name. A row answers a lookup when the file's current (inode, size, mtime_ns) equal the
stored ones and the row is not racy. Rows are self-validating: a stale row (in memory or
on disk) can only cost a re-read, never a wrong digest, so the in-memory copy needs no
invalidation across processes. The key only names a row: the row is checked against the
stat of the file actually opened, so even a stale resolved directory (a directory symlink
retargeted while an instance lives) costs re-reads, not wrong digests (barring two file
systems that give different files the same inode, size and mtime_ns).

Racy rows. A file rewritten with the same size in the same timestamp tick as an earlier
write keeps an identical stat. That can only happen to a row whose mtime lies within the
timestamp granularity of the moment the file was hashed, so such a row is never trusted:
it is valid only if `hashed_at_ns - mtime_ns >= racy_window_ns(mtime_ns)`. `hashed_at_ns`
is read from the clock *before* the contents are read, so a write during the read stamps
the file with a later mtime and the row no longer matches. A racy row is re-hashed on the
next lookup; the new row has a later hashed_at and becomes trusted. The window is the file
system's timestamp granularity plus the clock tick the kernel stamps files with (Linux
uses a coarse clock that lags `time.time_ns()` by up to one jiffy, 10 ms at HZ=100;
Windows' system time advances in 15.6 ms steps), so the two sides round down differently
by at most granularity + tick. The granularity is inferred from the mtime itself:

    mtime_ns divisible by   typical file systems                         window
    10**9 (whole seconds)   FAT (2 s), ext3, HFS+, ISO 9660, SMB1, tar   2 s + 20 ms
    10**6 (whole ms)        exFAT (10 ms), ms-granular network mounts    100 ms + 20 ms
    10**3 (whole us)        UDF, us-granular NFS/FUSE, 1 in 10 NTFS      1 ms + 20 ms
    otherwise (ns)          ext4, XFS, Btrfs, ZFS, APFS, tmpfs, NTFS     20 ms

A ns-granular file system yields a whole-ms mtime one time in a million, so a too-wide
guess only costs one extra read of a file written in the last ~0.1 s; a too-narrow one
would trust a stale digest. Known limits: a row that is *not* racy is trusted, so a
same-size rewrite that restores the old mtime and keeps the inode (e.g. `touch -r`, or
`os.utime` with the old times) is not seen; a network file system whose server clock
lags this machine's clock can make a recent write look old.

Concurrency. WAL lets readers proceed during a write; a writer waits up to 5 s for the
write lock, in steps from 50 us (SQLite's own busy handler sleeps a millisecond first);
writes are single statements or one short transaction per directory.
A cache that stays busy or is read-only makes the call fall back to hashing without
caching (logged at debug); a database that cannot be opened at all is given up until
`close()` (logged once as a warning): the cache never fails a run. A database that
SQLite reports as corrupt (or not a database at all) is moved aside to `<name>.corrupt`
and recreated. A connection is only used by the thread and process (checked with
`os.getpid()`) that opened it; connections inherited through fork are never used or
closed in the child.

Why an in-memory dict: measured with 5000 cached files of a no-op, a lookup costs ~5 us
with the dict (walk and stat alone are ~3.6 us) against ~11 us with one SELECT per path,
and filling the dict is one SELECT of every row (~5 ms for 5000 rows) on first use. A miss
in the dict still asks the database before reading, so rows written by other processes
since the load are used. Keys resolve each directory once per instance (`os.path.realpath`
alone would cost ~18 us per path).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

from pivot.state import hashing

__all__ = ["NeedsRead", "StateCache", "racy_window_ns", "settled_rows"]

log = logging.getLogger(__name__)

_TABLE = "file_state_v1"  # bump when the schema or the digest changes; old tables are ignored
_BUSY_TIMEOUT_MS = 5000
_FIRST_PAUSE_S, _LAST_PAUSE_S = 50e-6, 5e-3  # the waits for another writer (`_writing`)
_CLOCK_TICK_NS = 20_000_000
STILL_READ_BYTES = 16 * 1024  # `still` reads a file this small rather than query the store
_SELECT_ALL = f"SELECT path, inode, size, mtime_ns, digest, hashed_at_ns FROM {_TABLE}"
_SELECT_ONE = f"SELECT inode, size, mtime_ns, digest, hashed_at_ns FROM {_TABLE} WHERE path = ?"
_SELECT_MANY = f"SELECT path, inode, size, mtime_ns, digest, hashed_at_ns FROM {_TABLE} WHERE path IN ({{}})"
_SELECT_CHUNK = 500  # (SQLite takes up to 32,766 parameters a statement since 3.32; older, 999)
_UPSERT = f"INSERT OR REPLACE INTO {_TABLE} VALUES (?, ?, ?, ?, ?, ?)"
_DELETE = f"DELETE FROM {_TABLE} WHERE path IN (?, ?) OR (path >= ? AND path < ?)"
_ANY_UNDER = f"SELECT 1 FROM {_TABLE} WHERE path >= ? AND path < ? LIMIT 1"
_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {_TABLE} ("
    "path TEXT PRIMARY KEY, inode INTEGER NOT NULL, size INTEGER NOT NULL,"
    " mtime_ns INTEGER NOT NULL, digest TEXT NOT NULL, hashed_at_ns INTEGER NOT NULL"
    ") WITHOUT ROWID"
)
_NOTES = "notes_v1"
_NOTES_SCHEMA = f"CREATE TABLE IF NOT EXISTS {_NOTES} (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID"
_NOTE_UPSERT = f"INSERT OR REPLACE INTO {_NOTES} VALUES (?, ?)"
_NOTE_SELECT = f"SELECT value FROM {_NOTES} WHERE key = ?"
_NOTES_DELETE = f"DELETE FROM {_NOTES} WHERE key >= ? AND key < ?"

# Absolute paths whose `_key` an instance remembers: a 10,000-stage pipeline names 25,000.
_KEYS_MAX = 500_000

# (inode, size, mtime_ns, digest, hashed_at_ns)
_Row = tuple[int, int, int, str, int]

# Connections inherited through fork: closing one in the child could release the parent's
# POSIX locks or checkpoint its WAL, so they are kept referenced and never finalized.
_INHERITED: list[sqlite3.Connection] = []


def racy_window_ns(mtime_ns: int) -> int:
    """How long after `mtime_ns` a file must have been hashed for its row to be trusted."""
    if mtime_ns % 1_000_000_000 == 0:
        granularity = 2_000_000_000
    elif mtime_ns % 1_000_000 == 0:
        granularity = 100_000_000
    elif mtime_ns % 1_000 == 0:
        granularity = 1_000_000
    else:
        granularity = 0
    return granularity + _CLOCK_TICK_NS


def settled_rows(rows: list[tuple[str, int, int, int, str, int]]) -> list[tuple[str, int, int, int, str, int]]:
    """Those of `rows` (as `take_held` gives them) that a later lookup can trust: not
    hashed within the timestamp window of their file's write."""
    return [row for row in rows if row[5] - row[3] >= racy_window_ns(row[3])]


def _trusted(row: _Row, st: os.stat_result) -> bool:
    inode, size, mtime_ns, _, hashed_at_ns = row
    return (
        inode == st.st_ino
        and size == st.st_size
        and mtime_ns == st.st_mtime_ns
        and hashed_at_ns - mtime_ns >= racy_window_ns(mtime_ns)
    )


def _is_corrupt(exc: sqlite3.Error) -> bool:
    return _primary_code(exc) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _is_busy(exc: sqlite3.Error) -> bool:
    return _primary_code(exc) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


class NeedsRead(Exception):
    """In a `reading_at_most()` block: answering needs a larger read or a folder's walk."""


class _Local(threading.local):
    conn: sqlite3.Connection | None = None
    pid = 0
    generation = -1
    inode = 0  # of the database file this connection opened
    held: list[tuple[str, int, int, int, str, int]] | None = None  # rows of a `batched()` block
    memo: dict[str, str | None] | None = None  # path -> digest in a `batched(snapshot=True)` block
    max_read: int | None = None  # in a `reading_at_most()` block: the largest file it reads
    files_only = False  # in a `files_and_folders_only()` block


class StateCache:
    """File digests keyed by (path, inode, size, mtime_ns), shared through a SQLite file.

    Safe to use from several threads and processes at once. `clock` (ns since the epoch, as
    file mtimes) is injectable for tests; `busy_timeout_ms` bounds the wait for another
    writer before this call gives up caching. `reads` counts the files whose
    contents this instance read. `close()` closes the connections of this process; do not
    call it while other threads still use the instance (using it afterwards reconnects).
    """

    def __init__(
        self,
        db_path: Path,
        *,
        clock: Callable[[], int] = time.time_ns,
        busy_timeout_ms: int = _BUSY_TIMEOUT_MS,
    ) -> None:
        self.db_path = Path(db_path)
        self._busy_timeout_ms = busy_timeout_ms
        self.reads = 0
        self.write_waits = 0  # pauses for another process's write lock (`_writing`)
        self._clock = clock
        self._local = _Local()
        self._lock = threading.Lock()
        self._conns: list[tuple[int, sqlite3.Connection]] = []
        self._generation = 0
        self._rows: dict[str, _Row] | None = None
        self._dirs: dict[str, str] = {}  # absolute directory -> its realpath
        self._keys: dict[str, str] = {}  # absolute path -> `_key` (bounded by _KEYS_MAX)
        self._unusable = False  # the database cannot be opened: stop trying until close()

    # --- public API ---------------------------------------------------------------------

    def hash_file(self, path: Path) -> str:
        """The digest of a file, read only when its stat changed. FileNotFoundError if missing."""
        fs_path = os.fspath(path)
        st = os.stat(fs_path)
        digest, row = self._digest(self._key(fs_path), fs_path, st)
        if row is not None:
            self._store([row])
        return digest

    def hash_path(self, path: str | os.PathLike[str]) -> str | None:
        """Like `hashing.hash_path` (same digests), reading only files whose stat changed."""
        memo = self._local.memo
        if memo is not None:
            key = os.fspath(path)
            if key in memo:
                return memo[key]
            memo[key] = digest = self._hash_path(path)
            return digest
        return self._hash_path(path)

    def _hash_path(self, path: str | os.PathLike[str]) -> str | None:
        try:
            st = os.stat(path)
            if stat.S_ISDIR(st.st_mode):
                if self._local.max_read is not None:
                    raise NeedsRead(os.fspath(path))
                return hashing.dir_digest(hashing.dir_entries(Path(path), self))
            fs_path = os.fspath(path)
            digest, row = self._digest(self._key(fs_path), fs_path, st)
        except (FileNotFoundError, NotADirectoryError):
            return None
        # A `reading_at_most` block's caller must not wait on another writer: its rows are
        # stored only in a `batched()` block, whose rows it hands on (`take_held`).
        if row is not None and (self._local.max_read is None or self._local.held is not None):
            self._store([row])
        return digest

    def hash_files(self, root: Path, files: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """(relative path, digest) of the files found by walking `root` (relative path,
        `root`'s path joined with it, as `hashing.dir_entries` walks them) that are still
        there: one gone since the walk (or a link to nothing) is left out.

        The building block of `hashing.dir_entries`; new rows are written in one transaction.
        """
        top = os.fspath(root)
        real_top = os.path.realpath(top)
        new_rows: list[tuple[str, int, int, int, str, int]] = []
        found: list[tuple[str, str]] = []
        try:
            for rel, full in files:
                key = full if real_top == top else real_top + full[len(top) :]
                try:
                    digest, row = self._digest(key, full, os.stat(full))
                except FileNotFoundError:
                    continue
                found.append((rel, digest))
                if row is not None:
                    new_rows.append(row)
        finally:
            self._store(new_rows)
        return found

    def still(self, path: str | os.PathLike[str], digest: str, st: os.stat_result | None = None) -> bool:
        """Whether file `path` (whose stat is `st`, when the caller has it) still holds
        `digest`: a small file's content hashes to it (reading it costs less than asking
        the store, and an upstream output written moments ago is read either way); a
        larger one's row is that digest and its (inode, size, mtime) still match, or,
        when the stat alone cannot tell (a file written moments ago), its content hashes
        to it. Records nothing (the engine's change check must still see a change)."""
        fs_path = os.fspath(path)
        if st is None:
            try:
                st = os.stat(fs_path)
            except OSError:
                return False
        if st.st_size <= STILL_READ_BYTES:
            try:
                return self._read(fs_path) == digest
            except OSError:
                return False
        key = self._key(fs_path)
        row = self._select(key) or self._loaded_rows().get(key)
        if row is None or row[3] != digest:
            return False
        if _trusted(row, st):
            return True
        if (row[0], row[1], row[2]) != (st.st_ino, st.st_size, st.st_mtime_ns):
            return False
        try:
            return hashing.hash_file(fs_path) == digest
        except OSError:
            return False

    def recorded(self, path: str | os.PathLike[str]) -> str | None:
        """The digest last stored for `path` by any process (from the store, not from this
        instance's memory, which another process may have made stale), or None."""
        row = self._select(self._key(os.fspath(path)))
        return row[3] if row is not None else None

    def known(self, path: str | os.PathLike[str]) -> bool:
        """Whether the store has a row for `path` or for anything under it (a folder)."""
        if self.recorded(path) is not None:
            return True
        real = os.path.realpath(os.fspath(path))
        conn = self._conn()
        if conn is None:
            return True  # cannot tell: assume it mattered
        try:
            found = conn.execute(_ANY_UNDER, (real + os.sep, real + chr(ord(os.sep) + 1))).fetchone()
        except sqlite3.Error as exc:
            self._failed(exc, "reading the state cache")
            return True
        return found is not None

    def now(self) -> int:
        """This store's clock (ns): read it before reading a file to `record` (`read_at_ns`)."""
        return self._clock()

    def record(
        self, path: str | os.PathLike[str], digest: str, st: os.stat_result | None = None,
        read_at_ns: int | None = None,
    ) -> None:
        """Store `digest` as the hash of `path`'s current contents (the caller just hashed or
        wrote it and guarantees it has not changed since), or, given `st`, of the file
        `st` describes (taken before it was read: a change since makes them disagree). A
        file written within the racy window before this call (before `read_at_ns`, when
        the caller read the file itself: `now()` taken before its read) is still read once
        on its next lookup: a rewrite of the same size in the clock tick of the first,
        after the read, would otherwise pass for what was read."""
        fs_path = os.fspath(path)
        if st is None:
            st = os.stat(fs_path)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"record() takes files, not directories: {fs_path}")
        if not stat.S_ISREG(st.st_mode):
            return
        key = self._key(fs_path)
        row: _Row = (st.st_ino, st.st_size, st.st_mtime_ns, digest, self._clock() if read_at_ns is None else read_at_ns)
        self._loaded_rows()[key] = row
        self._store([(key, *row)])

    def refresh(self, paths: list[str], max_bytes: int) -> int:
        """Hash again the files of `paths` whose rows are racy (hashed within the file
        system's timestamp window of their write: a just-written output) and whose write
        is now older than that window, and store their rows, in one transaction: the next
        check trusts them instead of reading them (the first no-op after a cold run read
        every output again). Files over `max_bytes`, changed since their row, or written
        moments ago are left for the next check. Returns how many were hashed."""
        now = self._clock()
        candidates: list[tuple[str, str, os.stat_result]] = []
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
                continue
            if now - st.st_mtime_ns < racy_window_ns(st.st_mtime_ns):
                continue  # still racy once hashed now
            candidates.append((self._key(path), path, st))
        # The rows other processes (the workers) wrote since this one loaded, in a query
        # per chunk, not one each (a read lock each: ~0.1 ms a file of a 300-stage exit).
        loaded = self._loaded_rows()
        rows = self._select_many([key for key, _, _ in candidates if key not in loaded])
        fresh: list[tuple[str, int, int, int, str, int]] = []
        for key, path, st in candidates:
            row = loaded.get(key) or rows.get(key)
            if row is None or _trusted(row, st) or row[:3] != (st.st_ino, st.st_size, st.st_mtime_ns):
                continue
            hashed_at_ns = self._clock()  # before reading: a write during the read is caught
            try:
                digest = self._read(path)
            except OSError:
                continue
            new_row = (st.st_ino, st.st_size, st.st_mtime_ns, digest, hashed_at_ns)
            loaded[key] = new_row
            fresh.append((key, *new_row))
        self._store(fresh)
        return len(fresh)

    def forget(self, path: str | os.PathLike[str]) -> None:
        """Drop the rows of `path` and, for a directory, of everything under it (those
        this thread's `batched()` block holds too: written after, they would be back)."""
        fs_path = os.fspath(path)
        key, real = self._key(fs_path), os.path.realpath(fs_path)
        lo, hi = real + os.sep, real + chr(ord(os.sep) + 1)
        rows = self._rows
        if rows is not None:
            for k in list(rows):  # a copy: other threads may insert meanwhile
                if k in (key, real) or lo <= k < hi:
                    rows.pop(k, None)
        held = self._local.held
        if held:
            held[:] = [row for row in held if not (row[0] in (key, real) or lo <= row[0] < hi)]
        self._execute(_DELETE, (key, real, lo, hi))

    # --- notes: small values kept beside the rows, for other stores -----------------------

    def keep_notes(self, notes: list[tuple[str, bytes]], rows: Sequence[tuple[str, int, int, int, str, int]] = ()) -> bool:
        """Store each (key, value), in one transaction, with `rows` (rows `take_held`
        gave another process) and the rows this thread's `batched()` block holds. False
        when the notes could not be stored (no usable database, another writer past the
        busy timeout): the caller keeps them another way (the block's rows are still
        written at its end; `rows` are dropped: a cache). Used where a file of its own
        would cost an inode for a few bytes (pivot/state/stagelogs.py: the log of a run
        that printed nothing)."""
        if not notes:
            self._store(list(rows))
            return True
        conn = self._conn()
        if conn is None:
            return False
        sql, values = _NOTE_UPSERT + ", (?, ?)" * (len(notes) - 1), [v for note in notes for v in note]
        held = [*rows, *(self._local.held or ())]
        if held:  # the rows go with them: one transaction, not two
            if not self._transact(conn, lambda: (conn.executemany(_UPSERT, held), conn.execute(sql, values)),
                                  "writing a note to the state cache"):
                return False
            if self._local.held:
                self._local.held.clear()
            return True
        try:  # one statement, so one transaction without BEGIN and COMMIT: a third cheaper
            self._writing(conn, lambda: conn.execute(sql, values))
        except sqlite3.Error as exc:
            self._failed(exc, "writing a note to the state cache")
            return False
        return True

    def note(self, key: str) -> bytes | None:
        """The value kept for `key`, or None (none kept, or the database cannot be read)."""
        conn = self._conn()
        if conn is None:
            return None
        try:
            found = conn.execute(_NOTE_SELECT, (key,)).fetchone()
        except sqlite3.Error as exc:
            self._failed(exc, "reading a note from the state cache")
            return None
        return None if found is None else bytes(found[0])

    def drop_notes(self, prefix: str) -> None:
        """Forget every note whose key starts with `prefix` (not empty)."""
        if not prefix:
            raise ValueError("drop_notes() needs a prefix: it would forget every note")
        self._execute(_NOTES_DELETE, (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)))

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
            self._generation += 1
        pid = os.getpid()
        for owner, conn in conns:
            if owner == pid:
                conn.close()
            else:
                _INHERITED.append(conn)
        self._rows = None
        self._dirs = {}
        self._keys = {}
        self._unusable = False

    def __enter__(self) -> StateCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- lookups ------------------------------------------------------------------------

    def _key(self, fs_path: str) -> str:
        """The resolved directory joined with the file name: `os.path.realpath` costs ~3 us
        per path component, so directories are resolved once per instance. The name itself
        is not resolved (a symlinked file has its own row, as in a directory walk)."""
        key = self._keys.get(fs_path)
        if key is not None:
            return key
        parent, name = os.path.split(os.path.abspath(fs_path))
        real_parent = self._dirs.get(parent)
        if real_parent is None:
            real_parent = self._dirs[parent] = os.path.realpath(parent)
        key = os.path.join(real_parent, name)
        if fs_path.startswith("/") and len(self._keys) < _KEYS_MAX:  # a relative one moves with the cwd
            self._keys[fs_path] = key
        return key

    def _digest(
        self, key: str, fs_path: str, st: os.stat_result
    ) -> tuple[str, tuple[str, int, int, int, str, int] | None]:
        """The digest of one file and the row to store (None when nothing is to be stored)."""
        if not stat.S_ISREG(st.st_mode):  # fifos, devices, directories: never cached
            if self._local.max_read is not None or self._local.files_only:
                raise NeedsRead(fs_path)
            return self._read(fs_path), None
        rows = self._loaded_rows()
        row = rows.get(key)
        if row is not None and _trusted(row, st):
            return row[3], None
        hashed_at_ns = self._clock()  # before reading: a write during the read is caught
        # Another process may have hashed it since we loaded, unless it was written within
        # the racy window: then no row can be trusted yet (each was hashed before now), and
        # asking costs a query for nothing (an upstream output just written, every stage).
        if hashed_at_ns - st.st_mtime_ns >= racy_window_ns(st.st_mtime_ns):
            row = self._select(key)
            if row is not None:
                rows[key] = row
                if _trusted(row, st):
                    return row[3], None
        limit = self._local.max_read
        if limit is not None and st.st_size > limit:
            raise NeedsRead(fs_path)
        digest = self._read(fs_path)
        row = (st.st_ino, st.st_size, st.st_mtime_ns, digest, hashed_at_ns)
        rows[key] = row
        return digest, (key, *row)

    def _read(self, fs_path: str) -> str:
        digest = hashing.hash_file(fs_path)
        with self._lock:
            self.reads += 1
        return digest

    def _loaded_rows(self) -> dict[str, _Row]:
        rows = self._rows
        if rows is None:  # two threads may both load: harmless, rows are self-validating
            rows = {}
            conn = self._conn()
            if conn is not None:
                try:
                    rows = {r[0]: r[1:] for r in conn.execute(_SELECT_ALL)}
                except sqlite3.Error as exc:
                    self._failed(exc, "loading the state cache")
            self._rows = rows
        return rows

    def _select(self, key: str) -> _Row | None:
        conn = self._conn()
        if conn is None:
            return None
        try:
            found: _Row | None = conn.execute(_SELECT_ONE, (key,)).fetchone()
        except sqlite3.Error as exc:
            self._failed(exc, "reading the state cache")
            return None
        return found

    def _select_many(self, keys: list[str]) -> dict[str, _Row]:
        """The stored rows of `keys` (those it has), a query per chunk of them."""
        found: dict[str, _Row] = {}
        conn = self._conn() if keys else None
        if conn is None:
            return found
        try:
            for i in range(0, len(keys), _SELECT_CHUNK):
                chunk = keys[i : i + _SELECT_CHUNK]
                query = _SELECT_MANY.format(", ".join("?" * len(chunk)))
                found.update((r[0], r[1:]) for r in conn.execute(query, chunk))
        except sqlite3.Error as exc:
            self._failed(exc, "reading the state cache")
        return found

    @contextlib.contextmanager
    def files_and_folders_only(self) -> Iterator[None]:
        """Hashes in the block (this thread's) raise NeedsRead for what is neither a
        regular file nor a folder: reading a fifo waits for a writer, a device may never
        end. For a caller hashing ahead what may not be asked for (`LockPrefetch`: the
        files of every lock, a removed stage's too)."""
        before, self._local.files_only = self._local.files_only, True
        try:
            yield
        finally:
            self._local.files_only = before

    @contextlib.contextmanager
    def reading_at_most(self, size: int) -> Iterator[None]:
        """Hashes in the block (this thread's) read no file larger than `size` bytes (a
        file whose stat matches its row is not read at all); a larger one, a folder to
        walk or a fifo raises NeedsRead: for a caller that must not wait on I/O, such as
        the pool's loop. The rows of the files it read are stored only within a
        `batched()` block (then held, as any of its rows)."""
        before, self._local.max_read = self._local.max_read, size
        try:
            yield
        finally:
            self._local.max_read = before

    @contextlib.contextmanager
    def batched(self, snapshot: bool = False) -> Iterator[None]:
        """Rows this thread stores in the block are written at its end, in one
        transaction: a check of thousands of files written moments ago (racy rows, each
        hashed again: the first no-op after a cold run) would otherwise commit one
        transaction per file. Until then, other processes hash those files themselves.

        With `snapshot`, `hash_path` answers each path once in the block (an output is
        hashed again as the next stage's dep): for a block that writes none of them."""
        if self._local.held is not None:  # nested: the outer block writes
            yield
            return
        self._local.held = []
        self._local.memo = {} if snapshot else None
        try:
            yield
        finally:
            held, self._local.held, self._local.memo = self._local.held, None, None
            self._store(held)

    def take_held(self) -> list[tuple[str, int, int, int, str, int]]:
        """The rows this thread's `batched()` block holds, taken out of it: another
        process stores them (a pool's worker's, with its result: its pool, with other
        stages' in one transaction)."""
        held = self._local.held
        if not held:
            return []
        taken = list(held)
        held.clear()
        return taken

    # --- writes -------------------------------------------------------------------------

    def _store(self, rows: list[tuple[str, int, int, int, str, int]]) -> None:
        if self._local.held is not None:
            self._local.held.extend(rows)
            return
        if len(rows) == 1:
            self._execute(_UPSERT, rows[0])
        elif rows:
            conn = self._conn()
            if conn is not None:
                self._transact(conn, lambda: conn.executemany(_UPSERT, rows), "writing the state cache")

    def _transact(self, conn: sqlite3.Connection, work: Callable[[], object], doing: str) -> bool:
        """`work` in one transaction; False (rolled back, said) when it failed."""
        try:
            self._writing(conn, lambda: conn.execute("BEGIN IMMEDIATE"))
            work()
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.debug("rollback of the state cache failed", exc_info=True)
            self._failed(exc, doing)
            return False
        return True

    def _execute(self, sql: str, params: tuple[object, ...]) -> None:
        conn = self._conn()
        if conn is None:
            return
        try:
            self._writing(conn, lambda: conn.execute(sql, params))
        except sqlite3.Error as exc:
            self._failed(exc, "writing the state cache")

    def _writing(self, conn: sqlite3.Connection, take: Callable[[], object]) -> None:
        """`take` (a statement that takes the write lock: BEGIN IMMEDIATE, or a write of
        its own), waiting for another writer in steps from 50 us, not SQLite's own: its
        first wait is a millisecond, and two workers' 40-us transactions met in one stage
        of twenty (cold 1000-stage run: 50-60 waits of 1.1 ms). Up to the busy timeout."""
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            pause, deadline = _FIRST_PAUSE_S, 0.0
            while True:
                try:
                    take()
                    return
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc):
                        raise
                    now = time.monotonic()
                    deadline = deadline or now + self._busy_timeout_ms / 1000
                    if now >= deadline:
                        raise
                with self._lock:
                    self.write_waits += 1
                time.sleep(pause)
                pause = min(pause * 2, _LAST_PAUSE_S)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")

    def _failed(self, exc: sqlite3.Error, doing: str) -> None:
        """Carry on without the cache for this call; a corrupt database is moved aside."""
        if _is_corrupt(exc):
            log.warning("state cache %s is corrupt (%s); recreating it", self.db_path, exc)
            self._recover()
        else:
            log.debug("%s %s failed (%s); hashing without it", doing, self.db_path, exc)

    # --- connections --------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection | None:
        local = self._local
        pid = os.getpid()
        if local.conn is not None:
            if local.pid == pid and local.generation == self._generation:
                return local.conn
            if local.pid != pid:
                _INHERITED.append(local.conn)
            local.conn = None
        if self._unusable:
            return None
        before = self._db_inode()
        try:
            try:
                conn, inode = self._open()
            except sqlite3.Error as exc:
                if not _is_corrupt(exc):
                    raise
                log.warning("state cache %s is corrupt (%s); recreating it", self.db_path, exc)
                self._move_aside(before)
                conn, inode = self._open()
        except sqlite3.Error as exc:
            if _is_busy(exc):  # try again on the next call
                log.debug("opening %s: busy (%s); hashing without it", self.db_path, exc)
                return None
            self._give_up(exc)
            return None
        except OSError as exc:
            self._give_up(exc)
            return None
        local.conn, local.pid, local.generation, local.inode = (
            conn,
            pid,
            self._generation,
            inode,
        )
        return conn

    def _give_up(self, exc: Exception) -> None:
        self._unusable = True
        log.warning("cannot use the state cache %s (%s); hashing without it", self.db_path, exc)

    def _open(self) -> tuple[sqlite3.Connection, int]:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.db_path,
            timeout=self._busy_timeout_ms / 1000,
            isolation_level=None,  # autocommit; batches use explicit BEGIN IMMEDIATE
            check_same_thread=False,  # only so close() may run on another thread
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(_SCHEMA)
            conn.execute(_NOTES_SCHEMA)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._conns.append((os.getpid(), conn))
        return conn, self._db_inode()

    def _db_inode(self) -> int:
        try:
            return os.stat(self.db_path).st_ino
        except OSError:
            return 0

    def _recover(self) -> None:
        """Drop this thread's connection and move its corrupt database aside."""
        local = self._local
        conn, inode = local.conn, local.inode
        local.conn = None
        if conn is not None:
            with self._lock:
                self._conns = [(p, c) for p, c in self._conns if c is not conn]
            try:
                conn.close()
            except sqlite3.Error:
                log.debug("closing the corrupt state cache failed", exc_info=True)
        self._move_aside(inode)

    def _move_aside(self, inode: int) -> None:
        """Rename the database to <name>.corrupt, unless another process already did and a
        new database (another inode) took its place."""
        if inode == 0 or self._db_inode() != inode:
            return
        db = str(self.db_path)
        try:
            os.replace(db, db + ".corrupt")
        except OSError as exc:
            log.debug("moving %s aside failed (%s)", db, exc)
            return
        for suffix in ("-wal", "-shm"):
            try:
                os.unlink(db + suffix)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.debug("removing %s%s failed (%s)", db, suffix, exc)
