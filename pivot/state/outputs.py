"""Moving outputs between the workspace and the content cache, without losing anything.

Every output a run is about to delete or overwrite is first made sure to be in the cache
(`preserve`), so a hand edit can always be brought back with `pivot checkout --hash`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from pivot.faults import reached
from pivot.protocol.record import MutableRecord, Record, mutable_record, record
from pivot.state.cache import ContentCache, is_dir_digest
from pivot.state.runcache import RunCache
from pivot.state.statecache import StateCache

__all__ = ["ProjectState", "Saved", "commit", "preserve", "remove", "restore", "settle"]

_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EBADF})  # as Path.exists says


@mutable_record
class ProjectState(MutableRecord):
    """The project's stores: file-hash state cache, content cache, run cache."""

    root: Path
    hashes: StateCache
    cache: ContentCache
    runs: RunCache

    @classmethod
    def open(cls, root: Path) -> ProjectState:
        pivot_dir = root / ".pivot"
        return cls(
            root,
            StateCache(pivot_dir / "state.db"),
            ContentCache(pivot_dir / "cache"),
            RunCache(pivot_dir / "runcache"),
        )

    def close(self) -> None:
        self.hashes.close()


@record
class Saved(Record):
    """An output whose content was not in the cache and was stored before being replaced."""

    path: str
    digest: str
    expected: str | None  # what the lock recorded; None when no lock named it

    def note(self) -> str:
        what = "hand-edited output" if self.expected else "existing output"
        return (
            f"saved {what} {self.path} to the cache as {self.digest}; get it back with "
            f"`pivot checkout --hash {self.digest} {self.path}`"
        )


def preserve(
    state: ProjectState, outs: list[str], recorded: dict[str, str], uncached: Iterable[str] = (),
) -> list[Saved]:
    """Store each existing output whose content the cache lacks; return those stored. An
    `uncached` output as the last run left it is not stored (the run makes it again); a
    hand edit of one is."""
    saved = []
    never = set(uncached)
    top = os.path.join(state.root, "")  # (strings: every stage run asks)
    for out in outs:
        path = top + out
        digest = state.hashes.hash_path(path)
        if digest is None or state.cache.has(digest) or (out in never and digest == recorded.get(out)):
            continue
        stored = state.cache.store(path)
        if stored != recorded.get(out):
            saved.append(Saved(out, stored, recorded.get(out)))
    return saved


def _record(
    state: ProjectState, path: str | os.PathLike[str], digest: str, st: os.stat_result | None = None,
    read_at_ns: int | None = None,
) -> None:
    """Tell the state cache what was just written, so the next run need not read it
    (`st`: the file as it was read, when the caller has it; `read_at_ns`: the state
    cache's clock before it read it)."""
    if is_dir_digest(digest):
        # The rows of files it held before (removed with it before the run, or by the
        # restore) go: the engine's change check took their removal for a hand edit of
        # the output, and started a wave of nothing.
        state.hashes.forget(path)
        for rel, file_digest in state.cache.manifest(digest):
            state.hashes.record(Path(path) / rel, file_digest, read_at_ns=read_at_ns)
    else:
        state.hashes.record(path, digest, st, read_at_ns)


def commit(state: ProjectState, outs: list[str], uncached: Iterable[str] = ()) -> dict[str, str | None]:
    """Store every output in the cache (those `uncached` are only hashed: dvc.yaml's
    `cache: false`); return path -> digest (None when not produced)."""
    result: dict[str, str | None] = {}
    keep_out = set(uncached)
    top = os.path.join(state.root, "")  # (strings: declared paths, as decide.decide joins them)
    for out in outs:
        path = top + out
        try:
            st = os.stat(path)  # one stat: whether it exists, what it is
        except OSError as exc:
            if exc.errno not in _ABSENT:
                raise
            result[out] = None
            continue
        if out in keep_out:
            if stat.S_ISDIR(st.st_mode):
                state.hashes.forget(path)  # (as `_record` does)
            result[out] = state.hashes.hash_path(path)
            continue
        read_at = state.hashes.now()  # (the row's time: before the read, as a hash's)
        digest, read = state.cache.store_read(path, st)
        reached("stored")
        _record(state, path, digest, read, read_at)
        reached("recorded")
        result[out] = digest
    return result


def restore(state: ProjectState, outs: dict[str, str]) -> None:
    """Place each output from the cache (the caller preserved what was there)."""
    for out, digest in outs.items():
        path = state.root / out
        state.cache.place(digest, path)
        reached("placed")
        _record(state, path, digest)


def settle(state: ProjectState, outs: list[str]) -> None:
    """Record outputs as a run that did not succeed left them: deleted (before it ran),
    or partly written. The engine's change check then sees no change in them: a failed
    or cancelled stage must not start a wave by itself (over and over, if it writes an
    output and then fails). The lock still names the last good outputs, so the stage
    stays stale and `pivot checkout` brings those back."""
    for out in outs:
        path = state.root / out
        try:
            if path.is_file() or (path.is_dir() and not path.is_symlink()):
                state.hashes.hash_path(path)
            else:  # gone, or a fifo or socket: reading one could block forever
                state.hashes.forget(path)
        except OSError:  # unreadable: the change check will say so, if it matters
            state.hashes.forget(path)


def remove(path: str | os.PathLike[str]) -> None:
    """Remove the file, folder or link (not what it points to) at `path`, if any."""
    # A folder output's trailing / would make lstat (and rmtree) follow a link: the
    # folder it points to, outside the project maybe, was emptied.
    path = os.fspath(path).rstrip(os.sep) or os.sep
    try:
        st = os.lstat(path)  # one syscall for an output a cold run has yet to write
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        import shutil  # (here only: a no-op imports this module, and need not pay for it)

        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
