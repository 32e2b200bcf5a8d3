"""Per-stage lock files under .pivot/stages/: what the stage's last successful run saw.

JSON with sorted keys and a trailing newline: deterministic, readable, diffable, and
meant to be committed. Written atomically (temp file in the same folder + rename), so a
crash leaves the old lock or the new one, never half of one.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pivot.protocol.record import Record, record
from pivot.state.atomic import write_atomic
from pivot.state.rawread import read_whole

if TYPE_CHECKING:
    from pivot.launch.early import EarlyLocks
    from pivot.state.statecache import StateCache

__all__ = [
    "CHANGED_WHILE_RUNNING", "LockPrefetch", "StageLock", "hash_named", "lock_fields", "lock_file", "lock_path",
    "lock_problem", "packed_prefetch", "parse_lock", "read_lock", "read_locks", "stage_file", "stage_of_file",
    "write_lock",
]

_T = TypeVar("_T")


@record
class StageLock(Record):
    stage: str
    code: str
    params: dict[str, Any]
    deps: dict[str, str]
    outs: dict[str, str]
    # qualified name -> hash of each piece of code the fingerprint covers (names what changed)
    code_parts: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        """`json.dumps(..., sort_keys=True, indent=2)` of its fields, byte for byte. With
        an indent, json's encoder is pure Python (~60 us a lock here, every stage run):
        maps of names to strings and scalars are written directly, anything else by it."""
        maps = (self.code_parts, self.deps, self.outs, self.params)
        fast = all(_flat(m) for m in maps) and isinstance(self.stage, str) and isinstance(self.code, str)
        if not fast:
            data = {
                "stage": self.stage,
                "code": self.code,
                "code_parts": self.code_parts,
                "params": self.params,
                "deps": self.deps,
                "outs": self.outs,
            }
            return json.dumps(data, sort_keys=True, indent=2) + "\n"
        return (
            f'{{\n  "code": {_quote(self.code)},\n  "code_parts": {_flat_json(self.code_parts)},\n'
            f'  "deps": {_flat_json(self.deps)},\n  "outs": {_flat_json(self.outs)},\n'
            f'  "params": {_flat_json(self.params)},\n  "stage": {_quote(self.stage)}\n}}\n'
        )


_quote = json.encoder.encode_basestring_ascii  # (json's default: ensure_ascii)
_PLAIN = (str, int, bool, type(None))


def _flat(values: dict[Any, Any]) -> bool:
    """Whether `values` maps strings to strings, ints, booleans or None (floats: json's
    own repr, which this leaves to it)."""
    return all(type(k) is str and type(v) in _PLAIN for k, v in values.items())


def _scalar(value: str | int | bool | None) -> str:
    if type(value) is str:
        return _quote(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return int.__repr__(value)


def _flat_json(values: dict[str, Any]) -> str:
    """A `_flat` map as json.dumps writes it at the second level of an indent of 2."""
    if not values:
        return "{}"
    return "{\n" + ",\n".join(f"    {_quote(k)}: {_scalar(values[k])}" for k in sorted(values)) + "\n  }"


def stage_file(stage: str) -> str:
    """A stage's name as a file name: a dvc.yaml below the root names its stages
    `sub/dvc.yaml:train`, and a `/` must not make a folder (`%` and `/` are escaped)."""
    return stage.replace("%", "%25").replace("/", "%2F")


def stage_of_file(name: str) -> str:
    return name.replace("%2F", "/").replace("%25", "%")


# A lock's digest for a dependency written while its stage ran: it matches no file, so
# the stage stays stale until it runs on inputs that hold still (pivot/runtime/worker.py).
CHANGED_WHILE_RUNNING = "changed while the stage ran"


def lock_path(root: Path, stage: str) -> Path:
    return Path(lock_file(root, stage))


def lock_file(root: str | os.PathLike[str], stage: str) -> str:
    """`lock_path` as a string (every stage run writes one)."""
    return os.path.join(root, ".pivot", "stages", f"{stage_file(stage)}.lock")


def read_lock(root: Path, stage: str) -> StageLock | None:
    """The stage's lock, or None when it never ran or the file is unreadable."""
    try:
        # os.path, not pathlib: a no-op run reads every lock, and pathlib's joins cost as
        # much as reading the file.
        raw = read_whole(os.path.join(root, ".pivot", "stages", f"{stage_file(stage)}.lock"))
    except OSError:
        return None
    return parse_lock(raw)


def read_locks(root: str) -> dict[str, StageLock | None]:
    """Every lock file of the project, by stage (None: unreadable; read again, and
    explained, by `read_lock` / `lock_problem`)."""
    return _read_all(root, parse_lock)


def _read_all(root: str, parse: Callable[[bytes], _T]) -> dict[str, _T]:
    found: dict[str, _T] = {}
    try:
        folder = os.open(os.path.join(root, ".pivot", "stages"), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return found
    try:
        entries = [e.name for e in os.scandir(folder) if e.name.endswith(".lock")]
        for name in entries:
            try:
                raw = read_whole(name, dir_fd=folder)  # (no path to join: the folder's fd)
            except OSError:
                continue
            found[stage_of_file(name[: -len(".lock")])] = parse(raw)
    except OSError:
        pass
    finally:
        os.close(folder)
    return found


def hash_named(hashes: StateCache, root: str, paths: Iterable[str]) -> dict[str, str | None]:
    """The digest of every file of `paths` (paths of locks, joined to root), through the
    state cache: a stat each, for most. Stops at a file it may not read: the decision
    hashes it, and says why. Leaves a fifo or a device to the decision (a lock of a stage
    removed since may name one, which reading would wait on for good)."""
    from pivot.state.statecache import NeedsRead

    digests: dict[str, str | None] = {}
    under = os.path.join(root, "")  # (see decide.decide)
    try:
        with hashes.batched(), hashes.files_and_folders_only():  # (batched: what it reads again, one write)
            for rel in paths:
                path = under + rel
                if path not in digests:
                    try:
                        digests[path] = hashes.hash_path(path)
                    except NeedsRead:
                        continue
    except Exception:
        pass
    return digests


def packed_prefetch(root: str) -> bytes:
    """What `LockPrefetch` finds with `hashes`, for a process that reads it beside its
    caller's (pivot/launch/early.py): msgpack of [stage -> the lock's fields or None,
    path -> digest, what the state cache said: (logger, level, message)]. What it says
    (a corrupt database moved aside) its caller says: this process has no one to say it to."""
    import logging

    import msgpack

    from pivot.state.notices import LOGGER
    from pivot.state.statecache import StateCache

    said: list[tuple[str, int, str]] = []

    class Kept(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append((record.name, record.levelno, record.getMessage()))

    kept = Kept(logging.WARNING)
    logger = logging.getLogger(LOGGER)
    logger.addHandler(kept)
    try:
        # Fields, not StageLocks: they are sent as lists (10,000 locks: ~15 ms less).
        fields = _read_all(root, lock_fields)
        hashes = StateCache(Path(root, ".pivot", "state.db"))
        try:
            digests = hash_named(hashes, root, (p for f in fields.values() if f is not None for p in (*f[3], *f[4])))
        finally:
            hashes.close()
    finally:
        logger.removeHandler(kept)
    # Stages of one function share its code's parts: each distinct map is sent once, and
    # a lock names it by its place (10,000 stages: 3.5 -> 2.4 MB, read in half the time).
    parts: dict[tuple[tuple[str, str], ...], int] = {}
    for f in fields.values():
        if f is not None:
            f[5] = parts.setdefault(tuple(f[5].items()), len(parts))
    packed: bytes = msgpack.packb([fields, [dict(p) for p in parts], digests, said])
    return packed


class LockPrefetch:
    """Every lock file of the project, read in a thread while the caller waits for
    something else (the loader): a one-shot command that decides every stage reads them
    all anyway, and 10,000 small reads cost ~0.2 s. `get` waits for the thread; each lock
    is handed out once, so a long-lived process never decides on an old copy.

    With `hashes`, the thread then hashes every file the locks name (through the state
    cache: a stat each, for most), which deciding the stages would do next, after the
    loader: the two run side by side (10,000 stages: `status` 0.62 -> 0.5 s). A command
    that decides every stage once passes them (`hasher`); its answer is each file as it
    was moments before the decision, as any check is a snapshot of some moment.

    A thread shares the interpreter's lock with the command it runs beside (its imports,
    the loader's answer, the graph): for a project with many locks `pivot repro` and
    `pivot status` fork a process that reads and hashes them before they import anything
    more (pivot/launch/early.py), and the thread only waits for its answer (1000 stages:
    the decision waited ~34 ms for the thread, docs/benchmarks.md). Without one, or when
    it failed, the thread reads."""

    def __init__(self, root: Path, hashes: StateCache | None = None) -> None:
        import threading

        self.root = os.fspath(root)
        self.locks: dict[str, StageLock | None] = {}
        self.fields: dict[str, list[Any] | None] = {}  # stage -> a lock's fields, from a forked reader
        self.parts: list[dict[str, str]] = []  # the code parts the fields name by their place
        self.hashes = hashes
        self.digests: dict[str, str | None] = {}  # path (root joined with the lock's) -> digest
        from pivot.launch.early import take_locks

        early = take_locks(os.path.realpath(self.root))
        target = self._read if early is None else functools.partial(self._receive, early)
        self.thread = threading.Thread(target=target, name="lock-prefetch", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        self.locks = read_locks(self.root)
        if self.hashes is not None:
            named = (p for lock in self.locks.values() if lock is not None for p in (*lock.deps, *lock.outs))
            self.digests = hash_named(self.hashes, self.root, named)

    def _receive(self, early: EarlyLocks) -> None:
        import logging

        import msgpack

        try:
            fields, parts, digests, said = msgpack.unpackb(early.answer())
            if not isinstance(fields, dict) or not isinstance(parts, list) or not isinstance(digests, dict):
                raise TypeError(f"a lock reader's answer holds {type(fields).__name__}, {type(digests).__name__}")
        except (OSError, ValueError, TypeError):  # (msgpack's errors are ValueErrors)
            self._read()
            return
        for name, level, message in said:  # as if the state cache had said it here
            logging.getLogger(name).log(level, "%s", message)
        self.fields, self.parts, self.digests = fields, parts, digests

    def reader(self) -> Callable[[Path, str], StageLock | None]:
        """A `read_lock` that takes what the thread read (or reads the file itself)."""
        self.thread.join()

        def read(root: Path, stage: str) -> StageLock | None:
            lock = self.locks.pop(stage, None)
            if lock is None and (fields := self.fields.pop(stage, None)) is not None:
                # Each its own copy of its code's parts (they came once for all its stages).
                stage_, code, params, deps, outs, parts = fields
                lock = StageLock(stage_, code, params, deps, outs, dict(self.parts[parts]))
            return lock if lock is not None else read_lock(root, stage)

        return read

    def hasher(self, fallback: StateCache) -> _Prehashed:
        """`fallback`'s hashes, but those the thread took (see above) as it took them."""
        self.thread.join()
        return _Prehashed(self.digests, fallback)

    def join(self) -> None:
        """Wait for the thread (before closing the state cache it uses)."""
        self.thread.join()


class _Prehashed:
    def __init__(self, digests: dict[str, str | None], fallback: StateCache) -> None:
        self.digests, self.fallback = digests, fallback

    def hash_path(self, path: str) -> str | None:
        digests = self.digests
        return digests[path] if path in digests else self.fallback.hash_path(path)


def parse_lock(raw: bytes) -> StageLock | None:
    """A lock file's content (from disk, or from git at some revision); None if unreadable."""
    fields = lock_fields(raw)
    return None if fields is None else StageLock(*fields)


def lock_fields(raw: bytes) -> list[Any] | None:
    """`parse_lock`'s StageLock as the list of its fields, in their order."""
    try:
        data = json.loads(raw)
        return [
            str(data["stage"]),
            str(data["code"]),
            dict(data["params"]),
            {str(k): str(v) for k, v in data["deps"].items()},
            {str(k): str(v) for k, v in data["outs"].items()},
            {str(k): str(v) for k, v in data.get("code_parts", {}).items()},
        ]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def lock_problem(root: Path, stage: str) -> str | None:
    """Why the stage's lock file cannot be read, or None when it is absent or fine
    (`read_lock` gave None: never ran, or this)."""
    try:
        # os.path, not pathlib: every stage that never ran asks (a cold run's pool).
        raw = read_whole(os.path.join(root, ".pivot", "stages", f"{stage_file(stage)}.lock"))
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return f"not JSON: {exc}" if raw.strip() else "empty"
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    missing = sorted({"stage", "code", "params", "deps", "outs"} - set(data))
    return f"missing {', '.join(missing)}" if missing else "fields of the wrong type"


def write_lock(root: Path, lock: StageLock) -> str:
    """Write the stage's lock (atomically); returns its path."""
    path = lock_file(root, lock.stage)
    # 0644: lock files are shared through git.
    write_atomic(path, lock.to_json().encode(), mode=0o644)
    return path
