"""Unit tests for the content cache (pivot.state.cache), on real files in tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
import xxhash

from pivot.state.cache import (
    STALE_TEMP_AGE,
    ContentCache,
    CorruptObject,
    DamagedObject,
    MissingObject,
    NotStorable,
    SourceChanged,
    reflink_or_copy,
)
from pivot.state.hashing import hash_file, hash_path

# --- helpers --------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path) -> ContentCache:
    return ContentCache(tmp_path / ".pivot" / "cache")


def _digest(path: Path) -> str:
    digest = hash_path(path)
    assert digest is not None, path
    return digest


def _tree(root: Path) -> dict[str, bytes]:
    """Relative posix path -> bytes of every file under root."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _make_dir(root: Path) -> Path:
    files = {
        "a.txt": b"alpha\n",
        "empty": b"",
        "sub/b.bin": bytes(range(256)) * 10,
        "sub/deeper/c.txt": b"gamma\n",
        "with space/naïve ünïcode 文件.txt": "héllo".encode(),
        "dup1": b"same\n",
        "dup2": b"same\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _no_temps_beside(path: Path) -> list[str]:
    return [p.name for p in path.parent.iterdir() if p.name.startswith(".pivot-tmp-")]


# --- store and place ------------------------------------------------------------------------


def test_file_round_trip(cache: ContentCache, tmp_path: Path) -> None:
    src = tmp_path / "out.bin"
    src.write_bytes(b"some output\n")
    digest = cache.store(src)
    assert digest == _digest(src)
    assert cache.has(digest)
    assert cache.object_path(digest) == cache.cache_dir / "files" / digest[:2] / digest[2:]
    assert cache.object_path(digest).read_bytes() == b"some output\n"

    dest = tmp_path / "restored" / "deep" / "out.bin"  # parents are created
    cache.place(digest, dest)
    assert dest.read_bytes() == b"some output\n"
    assert _digest(dest) == digest


def test_directory_round_trip(cache: ContentCache, tmp_path: Path) -> None:
    src = _make_dir(tmp_path / "outdir")
    digest = cache.store(src)
    assert digest == _digest(src)
    assert digest.startswith("d")
    assert cache.object_path(digest) == cache.cache_dir / "dirs" / digest[1:3] / digest[3:]
    assert [rel for rel, _ in cache.manifest(digest)] == sorted(_tree(src))
    assert cache.has(digest)

    dest = tmp_path / "restored"
    cache.place(digest, dest)
    assert _tree(dest) == _tree(src)
    assert _digest(dest) == digest


def test_large_file_spanning_chunks(cache: ContentCache, tmp_path: Path) -> None:
    data = os.urandom(1024) * 2600  # > 2 MiB: several 1 MiB chunks, a partial last one
    src = tmp_path / "big"
    src.write_bytes(data)
    digest = cache.store(src)
    assert digest == _digest(src)
    cache.place(digest, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == data


def test_empty_file_and_empty_directory(cache: ContentCache, tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "nothing").mkdir()
    file_digest = cache.store(tmp_path / "empty")
    dir_digest = cache.store(tmp_path / "nothing")
    assert (file_digest, dir_digest) == (_digest(tmp_path / "empty"), _digest(tmp_path / "nothing"))
    assert cache.manifest(dir_digest) == []

    cache.place(file_digest, tmp_path / "e2")
    cache.place(dir_digest, tmp_path / "n2")
    assert (tmp_path / "e2").read_bytes() == b""
    assert (tmp_path / "n2").is_dir()
    assert list((tmp_path / "n2").iterdir()) == []


def test_symlinked_file_in_directory_is_stored_as_its_content(
    cache: ContentCache, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_bytes(b"pointed at\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "real.txt").write_bytes(b"real\n")
    (out / "link.txt").symlink_to(target)
    digest = cache.store(out)
    assert digest == _digest(out)

    dest = tmp_path / "restored"
    cache.place(digest, dest)
    assert not (dest / "link.txt").is_symlink()
    assert (dest / "link.txt").read_bytes() == b"pointed at\n"
    target.write_bytes(b"changed\n")  # the cache kept the content, not the link
    assert cache.verify(digest)


def test_idempotent_store_keeps_one_untouched_object(cache: ContentCache, tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"same bytes\n")
    (tmp_path / "b").write_bytes(b"same bytes\n")
    digest = cache.store(tmp_path / "a")
    obj = cache.object_path(digest)
    before = os.stat(obj)
    assert cache.store(tmp_path / "b") == digest
    assert cache.store(tmp_path / "a") == digest
    after = os.stat(obj)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p for p, _ in cache.all_objects()] == [obj]
    assert list((cache.cache_dir / "tmp").iterdir()) == []  # the duplicate temps were dropped


@pytest.mark.parametrize("size", [0, 11, 1 << 20, (1 << 20) + 1, 3 << 20])
def test_a_file_of_any_size_stores_as_its_bytes_and_once_cached_writes_nothing(
    cache: ContentCache, tmp_path: Path, size: int,
) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    (tmp_path / "f").write_bytes(data)
    digest = cache.store(tmp_path / "f")
    assert digest == hash_file(tmp_path / "f")
    obj = cache.object_path(digest)
    assert obj.read_bytes() == data
    shutil.rmtree(cache.cache_dir / "tmp")
    before = os.stat(obj)
    assert cache.store(tmp_path / "f") == digest
    after = os.stat(obj)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # Up to 1 MiB the bytes are hashed before any copy: a cached content makes no temp.
    assert (cache.cache_dir / "tmp").exists() == (size > 1 << 20)


def test_idempotent_directory_store(cache: ContentCache, tmp_path: Path) -> None:
    src = _make_dir(tmp_path / "outdir")
    digest = cache.store(src)
    objects = sorted(cache.all_objects())
    manifest = os.stat(cache.object_path(digest))
    assert cache.store(src) == digest
    assert sorted(cache.all_objects()) == objects
    again = os.stat(cache.object_path(digest))
    assert (again.st_ino, again.st_mtime_ns) == (manifest.st_ino, manifest.st_mtime_ns)
    # six distinct contents (dup1 and dup2 share one object) plus the manifest
    assert len(objects) == 7


def test_store_file_known(cache: ContentCache, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"v1")
    known = _digest(src)
    cache.store_file_known(src, known)
    assert cache.has(known)
    before = os.stat(cache.object_path(known))
    cache.store_file_known(src, known)  # present: skipped
    assert os.stat(cache.object_path(known)).st_mtime_ns == before.st_mtime_ns

    src.write_bytes(b"v2")  # changed after the caller hashed it
    stale = known[:-1] + ("0" if known[-1] != "0" else "1")
    with pytest.raises(SourceChanged):
        cache.store_file_known(src, stale)
    assert cache.has(_digest(src))  # what was really stored is kept under its own digest
    assert not cache.has(stale)


def test_file_digest_starting_with_d_is_a_file(cache: ContentCache, tmp_path: Path) -> None:
    """One file digest in 16 starts with "d"; only its length sets it apart from a dir's."""
    src = tmp_path / "f"
    for i in range(1000):
        src.write_bytes(f"content {i}\n".encode())
        if _digest(src).startswith("d"):
            break
    digest = _digest(src)
    assert digest.startswith("d")
    assert cache.store(src) == digest
    assert cache.object_path(digest).parent.parent.name == "files"
    assert cache.has(digest)
    cache.place(digest, tmp_path / "placed")
    assert (tmp_path / "placed").read_bytes() == src.read_bytes()
    assert cache.gc([digest], dry_run=False).count == 0
    assert cache.has(digest)


def test_durable_store_round_trip(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path / "cache", fsync=True)
    src = _make_dir(tmp_path / "outdir")
    digest = cache.store(src)
    assert digest == _digest(src)
    cache.place(digest, tmp_path / "restored")
    assert _tree(tmp_path / "restored") == _tree(src)


def test_unstorable_entries_raise_instead_of_hanging(cache: ContentCache, tmp_path: Path) -> None:
    fifo_dir = tmp_path / "with_fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "pipe")  # opening it for reading would block forever
    with pytest.raises(NotStorable, match="pipe"):
        cache.store(fifo_dir)
    dangling = tmp_path / "with_dangling"
    dangling.mkdir()
    (dangling / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(NotStorable, match="dangling"):
        cache.store(dangling)
    assert list(cache.all_objects()) == []


# --- read-only objects and the safety of placed copies --------------------------------------


def test_objects_are_read_only(cache: ContentCache, tmp_path: Path) -> None:
    src = _make_dir(tmp_path / "outdir")
    cache.store(src)
    modes = {path: _mode(path) for path, _ in cache.all_objects()}
    assert modes
    assert set(modes.values()) == {0o444}


@pytest.mark.parametrize("mode", ["r+b", "wb"])
def test_editing_a_placed_file_never_changes_the_cache(
    cache: ContentCache, tmp_path: Path, mode: str
) -> None:
    """The key safety property: fails if place() hard-linked or symlinked the object.

    Runs as whatever user the tests run as; as root the read-only bit protects nothing,
    so only an independent copy keeps the cache intact.
    """
    src = tmp_path / "model.bin"
    src.write_bytes(b"trained weights\n" * 100)
    digest = cache.store(src)
    obj = cache.object_path(digest)

    dest = tmp_path / "placed.bin"
    cache.place(digest, dest)
    assert not dest.is_symlink()
    assert _mode(dest) == 0o644
    assert os.stat(dest).st_nlink == 1
    with open(dest, mode) as f:
        f.write(b"EDITED IN PLACE")
    assert dest.read_bytes().startswith(b"EDITED IN PLACE")

    assert _digest(obj) == digest
    assert obj.read_bytes() == b"trained weights\n" * 100
    assert cache.verify(digest)


def test_editing_a_file_of_a_placed_directory_never_changes_the_cache(
    cache: ContentCache, tmp_path: Path
) -> None:
    src = _make_dir(tmp_path / "outdir")
    digest = cache.store(src)
    dest = tmp_path / "placed"
    cache.place(digest, dest)
    for path in dest.rglob("*"):
        if path.is_file():
            assert _mode(path) == 0o644
            with open(path, "r+b") as f:
                f.write(b"X")
    assert cache.verify(digest)
    for _, file_digest in cache.manifest(digest):
        assert _digest(cache.object_path(file_digest)) == file_digest


def test_place_over_existing_file(cache: ContentCache, tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"new content\n")
    digest = cache.store(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.write_bytes(b"old content that is longer than the new one\n")
    cache.place(digest, dest)
    assert dest.read_bytes() == b"new content\n"
    assert _no_temps_beside(dest) == []


def test_place_over_existing_directory(cache: ContentCache, tmp_path: Path) -> None:
    src = _make_dir(tmp_path / "outdir")
    digest = cache.store(src)
    dest = tmp_path / "dest"
    (dest / "sub").mkdir(parents=True)
    (dest / "stale.txt").write_bytes(b"from an older run\n")
    (dest / "a.txt").write_bytes(b"old alpha\n")
    (dest / "sub" / "stale2").write_bytes(b"x")
    cache.place(digest, dest)
    assert _tree(dest) == _tree(src)  # stale files are gone, changed ones restored
    assert _no_temps_beside(dest) == []


def test_place_replaces_other_kinds(cache: ContentCache, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"file\n")
    file_digest = cache.store(tmp_path / "f")
    dir_digest = cache.store(_make_dir(tmp_path / "d"))

    dir_there = tmp_path / "was_dir"
    (dir_there / "inner").mkdir(parents=True)
    cache.place(file_digest, dir_there)
    assert dir_there.read_bytes() == b"file\n"

    file_there = tmp_path / "was_file"
    file_there.write_bytes(b"plain\n")
    cache.place(dir_digest, file_there)
    assert _tree(file_there) == _tree(tmp_path / "d")

    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"must not be written through\n")
    link = tmp_path / "was_link"
    link.symlink_to(outside)
    cache.place(file_digest, link)
    assert not link.is_symlink()
    assert link.read_bytes() == b"file\n"
    assert outside.read_bytes() == b"must not be written through\n"


def test_place_missing_file_object_raises_and_leaves_dest(
    cache: ContentCache, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    dest.write_bytes(b"precious\n")
    absent = "0" * 32
    with pytest.raises(MissingObject) as info:
        cache.place(absent, dest)
    assert isinstance(info.value, KeyError)
    assert info.value.digest == absent
    assert absent in str(info.value)
    assert dest.read_bytes() == b"precious\n"
    assert _no_temps_beside(dest) == []
    with pytest.raises(MissingObject):
        cache.place(absent, tmp_path / "new" / "dest")
    assert not (tmp_path / "new").exists()  # not even the parent directory was made


def test_a_damaged_object_is_never_placed_and_is_removed(cache: ContentCache, tmp_path: Path) -> None:
    src = tmp_path / "model.bin"
    src.write_bytes(b"weights " * 1000)
    digest = cache.store(src)
    obj = cache.object_path(digest)
    os.chmod(obj, 0o644)
    obj.write_bytes(b"")  # truncated, as a full disk or a crash leaves it
    dest = tmp_path / "dest"
    dest.write_bytes(b"precious\n")
    with pytest.raises(DamagedObject) as info:
        cache.place(digest, dest)
    assert isinstance(info.value, MissingObject) and "damaged" in str(info.value)
    assert dest.read_bytes() == b"precious\n" and _no_temps_beside(dest) == []
    assert not obj.exists() and not cache.has(digest)  # the next store puts it back
    assert cache.store(src) == digest and cache.verify(digest)


def test_place_incomplete_directory_raises_and_leaves_dest(
    cache: ContentCache, tmp_path: Path
) -> None:
    src = _make_dir(tmp_path / "outdir")
    digest = cache.store(src)
    _, lost = cache.manifest(digest)[-1]
    cache.object_path(lost).unlink()
    assert not cache.has(digest)

    dest = tmp_path / "dest"
    (dest / "keep").mkdir(parents=True)
    (dest / "keep" / "me.txt").write_bytes(b"precious\n")
    with pytest.raises(MissingObject) as info:
        cache.place(digest, dest)
    assert (info.value.digest, info.value.missing) == (digest, [lost])  # checked up front
    assert _tree(dest) == {"keep/me.txt": b"precious\n"}
    assert _no_temps_beside(dest) == []
    with pytest.raises(MissingObject):
        cache.place(digest, tmp_path / "fresh" / "out")
    assert not (tmp_path / "fresh").exists()


def test_has_is_false_for_a_directory_missing_a_file(cache: ContentCache, tmp_path: Path) -> None:
    src = _make_dir(tmp_path / "outdir")
    digest = cache.store(src)
    assert cache.has(digest)
    _, file_digest = cache.manifest(digest)[0]
    cache.object_path(file_digest).unlink()
    assert cache.object_path(digest).is_file()  # the manifest alone is not enough
    assert not cache.has(digest)
    assert not cache.has("d" + "0" * 32)


def test_damaged_manifest_is_not_present_and_not_placed(
    cache: ContentCache, tmp_path: Path
) -> None:
    src = _make_dir(tmp_path / "outdir")
    digest = cache.store(src)
    manifest = cache.object_path(digest)
    data = json.loads(manifest.read_bytes())
    data["entries"] = data["entries"][1:]  # valid JSON, wrong content for the digest
    os.chmod(manifest, 0o644)
    manifest.write_text(json.dumps(data))
    assert not cache.has(digest)
    with pytest.raises(CorruptObject):
        cache.place(digest, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    # storing the directory again repairs the manifest
    assert cache.store(src) == digest
    assert cache.has(digest)


def test_manifest_cannot_place_outside_dest(cache: ContentCache, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"payload")
    file_digest = cache.store(tmp_path / "f")
    entries = [["../escaped", file_digest]]
    # a forged manifest that matches its own digest (hash_dir's algorithm)
    digest = "d" + xxhash.xxh3_128(f"../escaped\0{file_digest}\n".encode()).hexdigest()
    path = cache.object_path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "entries": entries}))
    with pytest.raises(CorruptObject):
        cache.place(digest, tmp_path / "dest" / "inner")
    assert not (tmp_path / "dest" / "escaped").exists()


def test_object_path_rejects_non_digests(cache: ContentCache) -> None:
    for bad in ("../../etc/passwd", "", "d", "XYZ" * 11, "0" * 31 + "/"):
        with pytest.raises(ValueError):
            cache.object_path(bad)


# --- listing and gc -------------------------------------------------------------------------


def _populate(cache: ContentCache, tmp_path: Path) -> tuple[str, str, str]:
    """A kept file, a kept directory, and an unreferenced file."""
    (tmp_path / "keep.txt").write_bytes(b"keep me\n")
    (tmp_path / "drop.txt").write_bytes(b"drop me, I am unreferenced\n")
    kept_file = cache.store(tmp_path / "keep.txt")
    kept_dir = cache.store(_make_dir(tmp_path / "outdir"))
    dropped = cache.store(tmp_path / "drop.txt")
    return kept_file, kept_dir, dropped


def test_gc_dry_run_reports_and_deletes_nothing(cache: ContentCache, tmp_path: Path) -> None:
    kept_file, kept_dir, dropped = _populate(cache, tmp_path)
    before = sorted(cache.all_objects())
    report = cache.gc([kept_file, kept_dir])
    assert report.dry_run
    assert (report.count, report.bytes) == (1, len(b"drop me, I am unreferenced\n"))
    assert sorted(cache.all_objects()) == before
    assert cache.has(dropped)


def test_gc_deletes_exactly_the_unreferenced_objects(cache: ContentCache, tmp_path: Path) -> None:
    kept_file, kept_dir, dropped = _populate(cache, tmp_path)
    # a newer version of the directory: its manifest and its one new file are unreferenced
    (tmp_path / "outdir" / "a.txt").write_bytes(b"another alpha\n")
    newer_dir = cache.store(tmp_path / "outdir")
    newer_file = _digest(tmp_path / "outdir" / "a.txt")
    assert newer_dir != kept_dir
    expected_gone = {cache.object_path(d) for d in (dropped, newer_dir, newer_file)}
    sizes = dict(cache.all_objects())
    assert expected_gone <= sizes.keys()

    report = cache.gc([kept_file, kept_dir], dry_run=False)
    assert not report.dry_run
    remaining = {path for path, _ in cache.all_objects()}
    assert sizes.keys() - remaining == expected_gone
    assert report.count == len(expected_gone)
    assert report.bytes == sum(sizes[p] for p in expected_gone)
    assert cache.has(kept_file)
    assert cache.has(kept_dir)  # its manifest and every file it lists survived
    assert not cache.has(dropped)
    assert cache.gc([kept_file, kept_dir], dry_run=False).count == 0


def test_stray_temps_are_not_objects_and_only_old_ones_are_collected(
    cache: ContentCache, tmp_path: Path
) -> None:
    (tmp_path / "f").write_bytes(b"real object\n")
    digest = cache.store(tmp_path / "f")
    obj = cache.object_path(digest)
    # what a store killed mid-copy leaves behind: a temp in tmp/ (and one beside an object)
    fresh = cache.cache_dir / "tmp" / ".pivot-tmp-999-fresh"
    old = cache.cache_dir / "tmp" / ".pivot-tmp-999-old"
    old_in_shard = obj.parent / ".pivot-tmp-999-shard"
    for path in (fresh, old, old_in_shard):
        path.write_bytes(b"half a fi")
    long_ago = time.time() - STALE_TEMP_AGE - 60
    os.utime(old, (long_ago, long_ago))
    os.utime(old_in_shard, (long_ago, long_ago))

    assert [p for p, _ in cache.all_objects()] == [obj]

    report = cache.gc([digest])
    assert (report.count, report.stale_temps) == (0, 2)
    assert old.exists() and old_in_shard.exists()  # dry run

    report = cache.gc([digest], dry_run=False)
    assert (report.count, report.stale_temps) == (0, 2)
    assert not old.exists()
    assert not old_in_shard.exists()
    assert fresh.exists()  # may belong to a store still running
    assert obj.exists()


def test_referenced_objects_include_directory_files(cache: ContentCache, tmp_path: Path) -> None:
    digest = cache.store(_make_dir(tmp_path / "outdir"))
    refs = cache.referenced_objects([digest])
    expected = {cache.object_path(digest)} | {
        cache.object_path(d) for _, d in cache.manifest(digest)
    }
    assert refs == expected
    assert refs == {path for path, _ in cache.all_objects()}


# --- reflink_or_copy ------------------------------------------------------------------------


def test_reflink_or_copy_makes_an_independent_identical_file(tmp_path: Path) -> None:
    data = os.urandom(1 << 16) * 20
    src = tmp_path / "src"
    src.write_bytes(data)
    dst = tmp_path / "dst"
    dst.write_bytes(b"previous, longer content " * 100_000)  # truncated, not kept
    how = reflink_or_copy(src, dst)
    assert how in ("reflink", "copy")
    assert dst.read_bytes() == data
    assert os.stat(dst).st_ino != os.stat(src).st_ino
    with open(dst, "r+b") as f:
        f.write(b"changed")
    assert src.read_bytes() == data


def test_placing_a_folder_removes_what_a_process_gone_since_left_beside_it(
    cache: ContentCache, tmp_path: Path,
) -> None:
    """A `.pivot-tmp-PID-*` copy left by a swap that was killed (its process gone) is
    removed at the next swap in that folder; a live process's is left alone."""
    import subprocess

    src = _make_dir(tmp_path / "src")
    digest = cache.store(src)
    place_at = tmp_path / "data" / "out"
    _make_dir(place_at)
    gone = subprocess.Popen(["true"])  # (its pid: no process has it once reaped)
    gone.wait()
    left = tmp_path / "data" / f".pivot-tmp-{gone.pid}-0011aabbccdd"
    _make_dir(left)
    mine = tmp_path / "data" / f".pivot-tmp-{os.getpid()}-0011aabbccdd"
    mine.mkdir()
    cache.place(digest, place_at)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(["out", mine.name])
    assert hash_path(place_at) == digest


def test_a_ctrl_c_while_an_old_output_is_removed_waits_for_the_removal() -> None:
    """One raised inside the removal left the old copy beside the output for good."""
    import signal

    from pivot.state.cache import _ctrl_c_held

    after = []
    with pytest.raises(KeyboardInterrupt), _ctrl_c_held():
        signal.raise_signal(signal.SIGINT)
        after.append("the block went on")
    assert after == ["the block went on"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
