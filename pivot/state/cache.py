"""Content-addressed cache of stage outputs under `<root>/.pivot/cache`.

Layout (digests are those of `pivot.state.hashing`)::

    cache_dir/
      files/ab/cdef…        one read-only (0o444) object per file content, named by its digest
      dirs/12/3456…         one JSON manifest per directory digest ("d" + 32 hex; "d" dropped)
      tmp/.pivot-tmp-…      files being stored; renamed into files/ or dirs/ when complete

Store: a file is copied into a temp file inside the cache (reflink when the file system
can, else a streaming copy) and the digest is computed from the bytes of that copy, never
from an earlier hash of the source that may be stale. A small file (up to 1 MiB) is read
whole and hashed first, then written from those same bytes only when its object is
missing. The temp is then renamed to its
object path; if that object already exists the temp is dropped, so storing the same
content twice leaves one object, untouched. A directory stores each file, then writes its
manifest `{"version": 1, "entries": [[relative posix path, file digest], …]}` the same way.

Place: an object is materialised as an independent, writable (0o644) file — a reflink or
a copy, never a hard link or symlink — so a user editing an output in place, even as root
(who ignores the read-only bit), cannot change the cache. Files are written beside the
destination and renamed over it; directories are built beside it and swapped in.

A directory digest is told from a file digest by its length (33 characters), never by
its first letter alone: one file digest in 16 starts with "d" (`is_dir_digest`).

Crash safety: a process killed at any point leaves either no object or a complete one
(rename is atomic); stray temps are ignored by `all_objects` and removed by `gc` once
older than an hour. Objects are not fsynced by default: after an OS crash or power loss
an object renamed just before could be empty or truncated under its final name. That is
traded for speed because every object is re-verifiable against its name (`verify`) and
can be rebuilt by re-running its stage; pass `fsync=True` for durable stores.

Symlinks inside a stored directory: a symlink to a file is stored as the content it
points to (placed back as a regular file); a symlink to a directory is not followed and
not stored, as in `hashing.hash_dir` (a warning is logged); a dangling symlink is an
error. Empty subdirectories are not recorded (a directory digest covers files only), so
they do not come back on `place`; an empty top-level directory does.

Concurrency: stores racing on the same content are safe (both renames publish identical
bytes). `gc` must not run while another process stores into the same cache: an object
stored after `gc` computed what to keep would be deleted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import xxhash

from pivot.errors import InfraError, PivotError, UserError
from pivot.protocol.record import Record, record
from pivot.state.hashing import TMP_PREFIX, dir_digest, temp_of

if sys.platform == "linux":
    import fcntl

__all__ = [
    "ContentCache",
    "CorruptObject",
    "DamagedObject",
    "GcReport",
    "MissingObject",
    "NotStorable",
    "SourceChanged",
    "is_dir_digest",
    "reflink_or_copy",
    "remove_dead_leftovers",
]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_FICLONE = 0x40049409  # _IOW(0x94, 9, int), <linux/fs.h>
_OBJECT_MODE = 0o444
_PLACED_MODE = 0o644
_TMP_PREFIX = TMP_PREFIX
STALE_TEMP_AGE = 3600.0  # seconds; older temps belong to a crashed process
_MANIFEST_VERSION = 1
# xxh3-128 hex (hashing.py). Only the length tells a directory digest ("d" + 32 hex) from
# a file digest that happens to start with "d" (one in 16 do). Hex only, so a digest read
# from a tampered lock file cannot name a path outside the cache.
# Files up to this size are read whole when stored (`_store_bytes`).
_SMALL_FILE = 1 << 20
_EXCLUSIVE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_FILE_DIGEST_RE = re.compile(r"[0-9a-f]{32}")
_DIR_DIGEST_RE = re.compile(r"d[0-9a-f]{32}")
_SHARD_RE = re.compile(r"[0-9a-f]{2}")


class MissingObject(PivotError, KeyError):
    """A digest (or a file a directory manifest lists) is not in the cache.

    The caller re-runs the stage that produces it. `digest` is the object asked for;
    `missing` lists every absent digest (the files of a directory, or the digest itself).
    """

    def __init__(self, digest: str, missing: Iterable[str] = ()) -> None:
        self.digest = digest
        self.missing = sorted(missing) or [digest]
        super().__init__(digest, self.missing)  # both in args, so it survives pickling

    def __str__(self) -> str:
        if self.missing == [self.digest]:
            return f"object {self.digest} is not in the cache"
        shown = ", ".join(self.missing[:3]) + (" …" if len(self.missing) > 3 else "")
        return (
            f"directory {self.digest} is incomplete in the cache: "
            f"{len(self.missing)} file object(s) missing ({shown})"
        )


class DamagedObject(MissingObject):
    """An object whose content no longer matches its digest (a disk error, a truncation,
    a hand edit inside the cache): found while placing it, and removed, so the stage
    that produces it runs again and stores it anew. Never placed."""

    def __str__(self) -> str:
        return (
            f"object {self.digest} in the cache was damaged (its content no longer matches "
            "its digest); it was removed, and the stage that produces it runs again"
        )


class CorruptObject(InfraError):
    """A cache object does not match its digest or cannot be parsed; delete it to recover."""


class NotStorable(UserError):
    """A path cannot be cached: not a regular file or directory, or a dangling symlink."""


class SourceChanged(PivotError):
    """The content stored differs from the digest the caller expected: the source changed."""


@record
class GcReport(Record):
    """What `gc` removed (or, on a dry run, would remove)."""

    dry_run: bool
    count: int  # objects removed (or that would be)
    bytes: int  # their total size
    stale_temps: int  # temp files older than an hour, left by crashed stores


class ContentCache:
    """Objects addressed by content digest; see the module docstring for layout and rules."""

    def __init__(self, cache_dir: Path, *, fsync: bool = False) -> None:
        self.cache_dir = cache_dir
        self.fsync = fsync
        self._files = cache_dir / "files"
        self._dirs = cache_dir / "dirs"
        self._tmp = cache_dir / "tmp"
        # As strings, for a stage's store (pathlib's joins and parses were a sixth of a
        # worker's own time, sampled).
        self._files_s = os.fspath(self._files)
        self._tmp_s = os.fspath(self._tmp)

    # --- lookup -----------------------------------------------------------------------------

    def object_path(self, digest: str) -> Path:
        if _DIR_DIGEST_RE.fullmatch(digest):
            return self._dirs.joinpath(digest[1:3], digest[3:])
        if _FILE_DIGEST_RE.fullmatch(digest):
            return self._files.joinpath(digest[:2], digest[2:])
        raise ValueError(f"not a Pivot content digest: {digest!r}")

    def has(self, digest: str) -> bool:
        """True when the object is present; a directory needs its manifest and every file."""
        if _FILE_DIGEST_RE.fullmatch(digest):  # (a string: a stage's every output)
            return os.path.isfile(os.path.join(self._files_s, digest[:2], digest[2:]))
        if not is_dir_digest(digest):
            return self.object_path(digest).is_file()  # (its error)
        try:
            entries = self.manifest(digest)
        except (MissingObject, CorruptObject):
            return False
        return all(self.object_path(d).is_file() for _, d in entries)

    def manifest(self, digest: str) -> list[tuple[str, str]]:
        """The sorted (relative posix path, file digest) entries of a stored directory."""
        if not is_dir_digest(digest):
            raise ValueError(f"not a directory digest: {digest!r}")
        path = self.object_path(digest)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise MissingObject(digest) from None
        entries = _parse_manifest(raw, path)
        if dir_digest(list(entries)) != digest:
            raise CorruptObject(
                f"directory manifest {path} does not match its digest; delete it and re-run "
                "the stage that produced it"
            )
        return entries

    def verify(self, digest: str) -> bool:
        """Re-hash an object (and a directory's files): False if absent or not matching."""
        if is_dir_digest(digest):
            try:
                entries = self.manifest(digest)
            except (MissingObject, CorruptObject):
                return False
            return all(self.verify(d) for _, d in entries)
        try:
            with open(self.object_path(digest), "rb") as f:
                return _hash_stream(f) == digest
        except FileNotFoundError:
            return False

    # --- store ------------------------------------------------------------------------------

    def store(self, path: str | os.PathLike[str]) -> str:
        """Store a file or directory; return the digest of exactly what was stored."""
        return self.store_read(path, os.stat(path))[0]

    def store_read(self, path: str | os.PathLike[str], st: os.stat_result) -> tuple[str, os.stat_result | None]:
        """`store` of a path the caller has just stat'ed (`st`, following links). For a
        file read whole (up to _SMALL_FILE), also the stat of the file as it was read,
        taken before reading it: its state-cache row, with no stat after (a change
        meanwhile makes the row disagree with the file, which is then hashed again)."""
        if stat.S_ISDIR(st.st_mode):
            return self._store_dir(Path(path)), None
        return self._store_file(path, st)

    def store_file_known(self, path: Path, digest: str) -> None:
        """Store `path`, already hashed by the caller as `digest`; skipped when cached.

        Raises `SourceChanged` when what was stored is not `digest` (the content that was
        stored is kept under its own digest).
        """
        if self.has(digest):
            return
        stored = self.store(path)
        if stored != digest:
            raise SourceChanged(
                f"{path} changed while being cached: expected {digest}, stored {stored}"
            )

    def _store_file(
        self, src: str | os.PathLike[str], st: os.stat_result | None = None,
    ) -> tuple[str, os.stat_result | None]:
        # Checked before opening too: opening a FIFO for reading would block.
        if st is None:
            st = os.stat(src)
        if not stat.S_ISREG(st.st_mode):
            raise NotStorable(f"cannot cache {src}: not a regular file or directory")
        if st.st_size <= _SMALL_FILE:
            # Read whole and hashed first: content cached already (a stage run again
            # that writes what it wrote before) costs no temp file at all.
            small = _read_small(src)
            if small is not None:  # else it grew meanwhile: streamed below
                return self._store_bytes(small[0]), small[1]
        with open(src, "rb") as fin:
            if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
                raise NotStorable(f"cannot cache {src}: not a regular file or directory")
            self._tmp.mkdir(parents=True, exist_ok=True)
            tmp, fout = _create_temp(self._tmp)
            try:
                with fout:
                    digest = _copy_and_hash(fin, fout)
                    os.fchmod(fout.fileno(), _OBJECT_MODE)
                    if self.fsync:
                        os.fsync(fout.fileno())
                self._publish(tmp, self.object_path(digest))
            except BaseException:
                _unlink_quietly(tmp)
                raise
        return digest, None

    def _store_bytes(self, data: bytes) -> str:
        digest = xxhash.xxh3_128_hexdigest(data)  # (a file digest: object_path's layout)
        final = os.path.join(self._files_s, digest[:2], digest[2:])
        if os.path.exists(final):
            return digest
        tmp = self._temp_with(data)
        try:
            self._publish(tmp, final)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return digest

    def _temp_with(self, data: bytes) -> str:
        """A temp file in the cache holding `data`, read-only (and synced with `fsync`)."""
        # os calls, not a file object: one a stage, and a file object costs three
        # syscalls more (fstat, ioctl, lseek) and ~10 us.
        tmp = os.path.join(self._tmp_s, _temp_file_name())
        try:
            fd = os.open(tmp, _EXCLUSIVE, 0o600)
        except FileNotFoundError:  # made on first use only: a call each stage otherwise
            self._tmp.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, _EXCLUSIVE, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fchmod(fd, _OBJECT_MODE)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp

    def _store_dir(self, root: Path) -> str:
        entries = sorted((rel, self._store_file(full)[0]) for rel, full in _walk_files(root))
        digest = dir_digest(list(entries))
        data = json.dumps({"version": _MANIFEST_VERSION, "entries": entries}).encode() + b"\n"
        final = self.object_path(digest)
        try:
            if final.read_bytes() == data:
                return digest  # already stored; a differing (damaged) manifest is replaced
        except FileNotFoundError:
            pass
        tmp = self._temp_with(data)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            self._sync_dir(final.parent)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return digest

    def _publish(self, tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
        if os.path.exists(final):
            os.unlink(tmp)  # same content already cached: keep the existing object untouched
            return
        try:
            os.replace(tmp, final)
        except FileNotFoundError:  # its fan-out folder is new (or `tmp` is gone: raised again)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(tmp, final)
        if self.fsync:
            self._sync_dir(Path(os.path.dirname(final)))

    def _sync_dir(self, path: Path) -> None:
        if not self.fsync:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- place ------------------------------------------------------------------------------

    def place(self, digest: str, dest: Path) -> None:
        """Materialise an object at `dest` as independent writable files (reflink or copy).

        Raises `MissingObject` (dest untouched) when the object or any file of a directory
        is absent. Replaces whatever `dest` was (file, directory or symlink, never followed).
        """
        if is_dir_digest(digest):
            entries = self.manifest(digest)
            missing = {d for _, d in entries if not self.object_path(d).is_file()}
            if missing:
                raise MissingObject(digest, missing)
            dest.parent.mkdir(parents=True, exist_ok=True)
            new = _temp_name(dest.parent)
            os.mkdir(new)
            try:
                for rel, file_digest in entries:
                    target = new.joinpath(*rel.split("/"))
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self._place_file(file_digest, target)
                _swap_in(new, dest)
            except BaseException:
                import shutil  # (where used: a no-op imports this module)

                shutil.rmtree(new, ignore_errors=True)
                raise
            return
        obj = self.object_path(digest)
        if not obj.is_file():
            raise MissingObject(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        new = _temp_name(dest.parent)
        try:
            self._place_file(digest, new)
            _swap_in(new, dest)
        except BaseException:
            _unlink_quietly(new)
            raise

    def _place_file(self, digest: str, target: Path) -> None:
        """Write object `digest` to the new path `target` (must not exist), mode 0o644,
        checking on the way that its content still matches its digest."""
        obj = self.object_path(digest)
        try:
            fin = open(obj, "rb")  # noqa: SIM115 - closed by `with` below
        except FileNotFoundError:
            raise MissingObject(digest) from None
        with fin, _open_exclusive(target) as fout:
            placed = _copy_and_hash(fin, fout)
            os.fchmod(fout.fileno(), _PLACED_MODE)
        if placed != digest:
            log.warning("cache object %s is damaged (its content hashes to %s): removing it", obj, placed)
            _unlink_quietly(obj)
            raise DamagedObject(digest)

    # --- listing and gc ---------------------------------------------------------------------

    def referenced_objects(self, digests: Iterable[str]) -> set[Path]:
        """Object paths reachable from `digests` (a directory brings its manifest and files).

        A missing manifest contributes only its own path; a damaged one raises
        `CorruptObject`, so `gc` stops rather than dropping the files it would have kept.
        """
        refs: set[Path] = set()
        for digest in digests:
            refs.add(self.object_path(digest))
            if is_dir_digest(digest):
                try:
                    entries = self.manifest(digest)
                except MissingObject:
                    continue
                refs.update(self.object_path(d) for _, d in entries)
        return refs

    def all_objects(self) -> Iterator[tuple[Path, int]]:
        """Every object file with its size in bytes; temp files are not objects."""
        for kind in (self._files, self._dirs):
            for shard in _scandir_sorted(kind):
                if not (shard.is_dir(follow_symlinks=False) and _SHARD_RE.fullmatch(shard.name)):
                    continue
                for entry in _scandir_sorted(Path(shard.path)):
                    if entry.name.startswith(_TMP_PREFIX) or not entry.is_file(
                        follow_symlinks=False
                    ):
                        continue
                    yield Path(entry.path), entry.stat(follow_symlinks=False).st_size

    def gc(self, keep: Iterable[str], dry_run: bool = True) -> GcReport:
        """Delete objects not reachable from `keep`, and temps older than an hour.

        A dry run reports the same numbers and deletes nothing. Read-only objects are
        deletable: unlinking needs write permission on the directory only.
        """
        refs = self.referenced_objects(keep)
        count = size = 0
        for path, nbytes in list(self.all_objects()):
            if path in refs:
                continue
            count += 1
            size += nbytes
            if not dry_run:
                path.unlink(missing_ok=True)
        stale = self._stale_temps(time.time() - STALE_TEMP_AGE)
        if not dry_run:
            for path in stale:
                path.unlink(missing_ok=True)
        report = GcReport(dry_run=dry_run, count=count, bytes=size, stale_temps=len(stale))
        log.info("cache gc: %s", report)
        return report

    def _stale_temps(self, cutoff: float) -> list[Path]:
        stale = []
        for dirpath, _dirnames, filenames in os.walk(self.cache_dir):
            for name in filenames:
                if not name.startswith(_TMP_PREFIX):
                    continue
                path = Path(dirpath) / name
                try:
                    if path.lstat().st_mtime < cutoff:
                        stale.append(path)
                except FileNotFoundError:
                    continue  # finished (renamed) or removed since the walk listed it
        return stale


# --- copying --------------------------------------------------------------------------------


def reflink_or_copy(src: Path, dst: Path) -> str:
    """Copy `src` to `dst` (created or truncated); return "reflink" or "copy".

    A reflink (Linux FICLONE) shares extents copy-on-write, so later writes to either file
    never reach the other; where unsupported (EOPNOTSUPP, EXDEV, EINVAL…) the bytes are
    copied. Never a hard link or symlink.
    """
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        return _clone_or_copy(fin, fout)


def _try_clone(fin: BinaryIO, fout: BinaryIO) -> bool:
    if sys.platform != "linux":
        return False
    try:
        fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
    except OSError as exc:
        log.debug("reflink unavailable (%s); copying", exc)
        return False
    return True


def _clone_or_copy(fin: BinaryIO, fout: BinaryIO) -> str:
    if _try_clone(fin, fout):
        return "reflink"
    fout.seek(0)
    fout.truncate()
    while chunk := fin.read(_CHUNK):
        fout.write(chunk)
    return "copy"


def _copy_and_hash(fin: BinaryIO, fout: BinaryIO) -> str:
    """Copy fin into the empty fout; return the digest of the bytes fout now holds."""
    if _try_clone(fin, fout):
        fout.flush()
        with open(fout.fileno(), "rb", closefd=False) as reread:
            reread.seek(0)
            return _hash_stream(reread)
    fout.seek(0)
    fout.truncate()
    h = xxhash.xxh3_128()
    while chunk := fin.read(_CHUNK):
        fout.write(chunk)
        h.update(chunk)
    return h.hexdigest()


def _hash_stream(f: BinaryIO) -> str:
    h = xxhash.xxh3_128()
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def _walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative posix path, full path) of each file under root, walked as `hash_dir` does."""

    def fail(exc: OSError) -> None:
        raise exc

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        dirnames[:] = sorted(d for d in dirnames if temp_of(d) is None)  # (as hash_dir: none of it)
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                log.warning("not caching symlinked directory %s", os.path.join(dirpath, name))
        for name in sorted(n for n in filenames if temp_of(n) is None):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if not full.exists():
                raise NotStorable(f"cannot cache {full}: dangling symlink")
            try:
                rel.encode()
            except UnicodeEncodeError:
                raise NotStorable(f"cannot cache {full!r}: file name is not valid UTF-8") from None
            yield rel, full


# --- manifests and paths --------------------------------------------------------------------


def is_dir_digest(digest: str) -> bool:
    """True for a directory digest. Not `startswith("d")`: file digests may start with d."""
    return len(digest) == 33 and digest.startswith("d")


def _parse_manifest(raw: bytes, path: Path) -> list[tuple[str, str]]:
    def corrupt(why: str) -> CorruptObject:
        return CorruptObject(f"directory manifest {path} is damaged ({why}); delete it")

    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != _MANIFEST_VERSION:
        raise corrupt(f"expected a version {_MANIFEST_VERSION} object")
    items = data.get("entries")
    if not isinstance(items, list):
        raise corrupt("no entries list")
    entries: list[tuple[str, str]] = []
    for item in items:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(x, str) for x in item)
            and _safe_rel(item[0])
            and _FILE_DIGEST_RE.fullmatch(item[1])
        ):
            raise corrupt(f"bad entry {item!r}")
        entries.append((item[0], item[1]))
    return entries


def _safe_rel(rel: str) -> bool:
    """A relative posix path that stays inside the directory it is placed in."""
    return "\0" not in rel and all(part not in ("", ".", "..") for part in rel.split("/"))


def _temp_name(directory: Path) -> Path:
    return directory / _temp_file_name()


def _temp_file_name() -> str:
    return f"{_TMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}"


def _read_small(src: str | os.PathLike[str]) -> tuple[bytes, os.stat_result] | None:
    """The whole of regular file `src` and its stat as it was opened, or None when it
    holds more than _SMALL_FILE."""
    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced by a FIFO or a folder since its stat
            raise NotStorable(f"cannot cache {src}: not a regular file or directory")
        chunks: list[bytes] = []
        size = 0
        while size <= _SMALL_FILE:
            chunk = os.read(fd, _SMALL_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return None if size > _SMALL_FILE else (b"".join(chunks), st)


def _open_exclusive(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    return open(fd, "r+b")


def _create_temp(directory: Path) -> tuple[Path, BinaryIO]:
    path = _temp_name(directory)
    return path, _open_exclusive(path)


def _unlink_quietly(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove temp file %s: %s", path, exc)


def _scandir_sorted(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        return []


def _swap_in(new: Path, dest: Path) -> None:
    """Put `new` (a finished file or tree beside dest) at `dest`, replacing what was there.

    A file over a file or symlink is one atomic rename. Otherwise the old entry is renamed
    aside first (a crash between the two renames leaves dest absent and the old content
    in a `.pivot-tmp-` sibling), the new one renamed in, and the old one deleted.
    """
    _remove_leftovers(dest.parent)
    if not os.path.lexists(dest):
        os.replace(new, dest)
        return
    if new.is_file() and not (dest.is_dir() and not dest.is_symlink()):
        os.replace(new, dest)
        return
    old = _temp_name(dest.parent)
    with _ctrl_c_held():  # (one in the removal left the old copy beside the output for good)
        os.rename(dest, old)
        try:
            os.rename(new, dest)
        except BaseException:
            os.rename(old, dest)
            raise
        if old.is_dir() and not old.is_symlink():
            import shutil

            shutil.rmtree(old, onerror=_log_rmtree_error)
        else:
            old.unlink()


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """A Ctrl-C during the block is raised at its end (in the main thread: the only one
    Python gives signals to). A `pivot checkout` interrupted while it removed a folder
    output's old copy left that copy in a `.pivot-tmp-` folder beside it: a stage reading
    the folder above counted its files, and `git add -A` took them."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(signal.SIGINT, None)
        elif caught and previous == signal.SIG_DFL:
            raise KeyboardInterrupt


_swept: set[Path] = set()  # folders whose leftovers this process removed


def _remove_leftovers(folder: Path) -> None:
    """The `.pivot-tmp-PID-*` entries a process gone since (killed outright mid-copy or
    mid-swap) left in `folder`: an output's old copy, or a new one never renamed in (a
    killed `pivot checkout` left a partial copy beside the output it was placing, for
    good). Once a folder per process: a restore of 10,000 outputs into one folder
    listed it at each."""
    if folder in _swept:
        return
    try:
        names = [n for n in os.listdir(folder) if temp_of(n) is not None]
    except OSError:
        return
    _swept.add(folder)
    remove_dead_leftovers([os.path.join(folder, name) for name in names])


def remove_dead_leftovers(paths: list[str]) -> None:
    """Remove those of `paths` (temporary entries: `temp_of`) whose process is gone;
    keep a live one's (a copy being made)."""
    for path in paths:
        pid = temp_of(os.path.basename(path))
        if pid is None or _alive(pid):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # (another user's: alive)
    return True


def _log_rmtree_error(
    func: object, path: str, exc_info: tuple[object, BaseException, object]
) -> None:
    log.warning("could not remove old output %s (leaving it): %s", path, exc_info[1])
