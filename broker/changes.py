"""What counts as a change: a path whose content differs from what the state cache
recorded, or, for a source file (one no stage writes), from what a stage that reads it
recorded in its lock. Runs in a thread of the broker so hashing never blocks the
broker's loop.

A path whose (inode, size, mtime_ns) still matches its recorded row is unchanged
without being read; otherwise it is hashed and compared with the recorded digest. So a
save with identical content, or an output the pipeline itself just committed (recorded
by the worker), is no change. Every checked path is recorded, so the next save of the
same content is recognised too. A path that no longer exists counts as changed only if
something was recorded for it or under it (a deleted dep, output or folder of them); an
editor's temp file, gone after the save's rename, is not a change.

The state cache is every process's: a `pivot status`, or a pool deciding another stage
that reads the file, records the new digest too, and a save held back while a wave runs
would then look like no change to the row. So a source file is also compared with the
digest each of its readers' locks holds for it (or for the folder holding it that the
stage reads): a reader that read other content is stale, and the save is a change. An
output that is there is compared with its producer's lock too (a hand edit while a wave
ran, the row written by a `pivot status` meanwhile, started no wave: the edit stayed,
its readers stale), unless the producer's last run here failed or was cancelled: what
such a run left of it (`settle`) must start no wave. And a path a reader's lock records
as changed while that reader ran is a change whatever it holds now (`_marked`).
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

import zmq

from pivot.pipeline.manifest import Manifest
from pivot.pipeline.producers import ProducerIndex
from pivot.state.lock import CHANGED_WHILE_RUNNING, StageLock, read_lock
from pivot.state.statecache import StateCache

__all__ = ["ChangeChecker", "SourceReaders", "confirm"]

log = logging.getLogger(__name__)


class SourceReaders:
    """The stages that read each source path of a manifest: a file or folder dep that no
    stage writes (nor a folder output holds)."""

    def __init__(self, manifest: Manifest) -> None:
        producers = ProducerIndex(manifest)
        # dep without its trailing "/" -> (stage, the dep as declared: its lock's key)
        self.by_path: dict[str, list[tuple[str, str]]] = {}
        # output without its trailing "/" -> (its stage, the output as declared)
        self.outputs: dict[str, tuple[str, str]] = {}
        # every dep, another stage's output too (for `marked`)
        self.any_dep: dict[str, list[tuple[str, str]]] = {}
        for spec in manifest.stages:
            for dep in spec.deps:
                self.any_dep.setdefault(dep.rstrip("/"), []).append((spec.name, dep))
                if not producers.producers_of(dep):
                    self.by_path.setdefault(dep.rstrip("/"), []).append((spec.name, dep))
            for out in spec.outs:
                self.outputs[out.rstrip("/")] = (spec.name, out)

    def of_any(self, rel: str) -> list[tuple[str, str]]:
        """(stage, declared dep) for each stage reading `rel` or a folder holding it,
        whoever writes it."""
        found: list[tuple[str, str]] = []
        path = rel
        while path:
            found += self.any_dep.get(path, ())
            path = path.rpartition("/")[0]
        return found

    def writer(self, rel: str) -> tuple[str, str, str] | None:
        """(the output: `rel` or a folder holding it, its stage, the output as declared)."""
        path = rel
        while path:
            found = self.outputs.get(path)
            if found is not None:
                return (path, *found)
            path = path.rpartition("/")[0]
        return None

    def of(self, rel: str) -> list[tuple[str, str, str]]:
        """(source path: `rel` or a folder holding it, stage, declared dep) for each stage
        reading `rel`."""
        found = []
        path = rel
        while path:
            for stage, dep in self.by_path.get(path, ()):
                found.append((path, stage, dep))
            path = path.rpartition("/")[0]
        return found


def _read_otherwise(
    root: Path, cache: StateCache, rel: str, now: str | None, readers: SourceReaders,
    locks: dict[str, StageLock | None], folders: dict[str, str | None],
) -> bool:
    """Whether a stage that reads `rel` (or a folder holding it) recorded another digest
    for it than it has now (None: gone)."""
    for path, stage, dep in readers.of(rel):
        digest, lock = _digest_and_lock(root, cache, rel, now, path, stage, locks, folders)
        if lock is not None and dep in lock.deps and lock.deps[dep] != digest:
            return True
    return False


def _digest_and_lock(
    root: Path, cache: StateCache, rel: str, now: str | None, path: str, stage: str,
    locks: dict[str, StageLock | None], folders: dict[str, str | None],
) -> tuple[str | None, StageLock | None]:
    """The digest of `path` (`rel`, whose is `now`, or a folder holding it) and `stage`'s
    lock: each read once a check."""
    if path == rel:
        digest = now
    else:
        if path not in folders:
            folders[path] = cache.hash_path(root / path)
        digest = folders[path]
    if stage not in locks:
        locks[stage] = read_lock(root, stage)
    return digest, locks[stage]


def _marked(root: Path, rel: str, readers: SourceReaders, locks: dict[str, StageLock | None]) -> bool:
    """Whether a stage reading `rel` (or a folder holding it) recorded it as changed while
    it ran: stale by its lock whatever `rel` holds now (a file changed and put back, one
    made and removed). Its readers ran, the wave said so, and under `pivot up` nothing
    ran them again: the content check found the path as it was."""
    for stage, dep in readers.of_any(rel):
        if stage not in locks:
            locks[stage] = read_lock(root, stage)
        lock = locks[stage]
        if lock is not None and lock.deps.get(dep) == CHANGED_WHILE_RUNNING:
            return True
    return False


def _written_otherwise(
    root: Path, cache: StateCache, rel: str, now: str, readers: SourceReaders, unsettled: frozenset[str],
    locks: dict[str, StageLock | None], folders: dict[str, str | None],
) -> bool:
    """Whether `rel`, an output (or in a folder output) that is there, differs from what
    its producer's lock recorded for it, that producer's last run here having ended well."""
    found = readers.writer(rel)
    if found is None or found[1] in unsettled:
        return False
    path, stage, out = found
    digest, lock = _digest_and_lock(root, cache, rel, now, path, stage, locks, folders)
    return lock is not None and out in lock.outs and lock.outs[out] != digest


def confirm(
    root: Path, cache: StateCache, paths: tuple[str, ...], readers: SourceReaders | None = None,
    unsettled: frozenset[str] = frozenset(),
) -> list[str]:
    """The subset of `paths` (project-relative) whose content changed. `readers`: those
    of the pipeline the engine runs (None: the row alone decides); `unsettled`: stages
    whose last run here failed or was cancelled."""
    changed = []
    locks: dict[str, StageLock | None] = {}  # (read once a call)
    folders: dict[str, str | None] = {}
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
                continue
        elif now != before:
            changed.append(rel)
            continue
        if readers is not None and (
            _read_otherwise(root, cache, rel, now, readers, locks, folders)
            or (now is not None and _written_otherwise(root, cache, rel, now, readers, unsettled, locks, folders))
            or _marked(root, rel, readers, locks)
        ):
            changed.append(rel)
    return changed


class ChangeChecker:
    """A thread answering `submit(paths)` with ["ok", *changed paths] on an inproc pair."""

    def __init__(self, root: Path, ctx: zmq.Context[zmq.Socket[bytes]], addr: str) -> None:
        self.root = root
        self.ctx = ctx
        self.addr = addr
        self.todo: queue.SimpleQueue[
            tuple[tuple[str, ...], SourceReaders | None, frozenset[str]] | None
        ] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="change-checker", daemon=True)
        self.thread.start()

    def submit(
        self, paths: tuple[str, ...], readers: SourceReaders | None = None, unsettled: frozenset[str] = frozenset(),
    ) -> None:
        self.todo.put((paths, readers, unsettled))

    def stop(self) -> None:
        self.todo.put(None)
        self.thread.join(5.0)

    def _run(self) -> None:
        out = self.ctx.socket(zmq.PAIR)
        out.setsockopt(zmq.LINGER, 0)
        out.connect(self.addr)
        cache = StateCache(self.root / ".pivot" / "state.db")
        try:
            while (asked := self.todo.get()) is not None:
                paths, readers, unsettled = asked
                try:
                    changed = confirm(self.root, cache, paths, readers, unsettled)
                except Exception:  # never leave the broker waiting for an answer
                    log.exception("checking changed files failed; treating all as changed")
                    changed = list(paths)
                out.send_multipart([b"ok", *(p.encode() for p in changed)])
        finally:
            cache.close()
            out.close(linger=0)
