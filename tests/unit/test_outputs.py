"""Run cache, moving outputs between workspace and cache, and wave plans (pivot.state)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from pivot.errors import PipelineError
from pivot.pipeline.manifest import Manifest, StageSpec
from pivot.state.hashing import hash_path
from pivot.state.lock import StageLock, read_lock, write_lock
from pivot.state.outputs import ProjectState, commit, preserve, remove, restore
from pivot.state.plan import QUICK_READ_BYTES, dep_producers, plan_wave, prepare, prepare_quickly
from pivot.state.reasons import ReasonCode
from pivot.state.runcache import RunCache, run_key

OLD = 1_600_000_000_000_000_000  # an mtime far in the past: state-cache entries are trusted


def spec(name: str = "fit", **changes: object) -> StageSpec:
    base = StageSpec(name, "pipeline", f"pipeline.{name}", ("in.txt",), ("out.txt",), (), {"lr": 0.1}, "fp1")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def state(tmp_path: Path) -> ProjectState:
    (tmp_path / "in.txt").write_text("input\n")
    st = ProjectState.open(tmp_path)
    yield st  # type: ignore[misc]
    st.close()


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, ns=(OLD, OLD))


def ran(state: ProjectState, s: StageSpec, outs: dict[str, str]) -> None:
    """What a successful run leaves: outputs in the workspace and cache, lock, run cache."""
    for out, text in outs.items():
        write(state.root / out, text)
    stored = commit(state, list(s.outs))
    digests = {k: v for k, v in stored.items() if v is not None}
    deps = {d: hash_path(state.root / d) for d in s.deps}
    write_lock(state.root, StageLock(s.name, s.fingerprint, s.params, deps, digests, s.code_parts))  # type: ignore[arg-type]
    state.runs.record(run_key(s, deps), s.name, digests)  # type: ignore[arg-type]


# --- run cache ---------------------------------------------------------------------------


def test_run_key_depends_on_code_params_deps_and_outs_but_not_the_name() -> None:
    deps = {"in.txt": "h1"}
    key = run_key(spec(), deps)
    assert run_key(spec(name="renamed"), deps) == key
    assert run_key(spec(), dict(deps)) == key
    assert len({
        key,
        run_key(spec(fingerprint="fp2"), deps),
        run_key(spec(params={"lr": 0.2}), deps),
        run_key(spec(), {"in.txt": "h2"}),
        run_key(spec(outs=("other.txt",)), deps),
    }) == 5


def test_run_cache_round_trip_and_unreadable_entries(tmp_path: Path) -> None:
    runs = RunCache(tmp_path / "runcache")
    assert runs.lookup("ab" * 16) is None
    runs.record("ab" * 16, "fit", {"out.txt": "h"})
    assert runs.lookup("ab" * 16) == {"out.txt": "h"}
    assert [e["stage"] for e in runs.entries()] == ["fit"]
    (tmp_path / "runcache" / "cd").mkdir()
    (tmp_path / "runcache" / "cd" / ("cd" * 15 + ".json")).write_text("{not json")
    assert runs.lookup("cd" * 16) is None
    assert runs.clear() == 2
    assert runs.lookup("ab" * 16) is None


def test_a_run_cache_entry_linked_to_its_lock_keeps_that_run_after_the_lock_is_replaced(tmp_path: Path) -> None:
    runs = RunCache(tmp_path / ".pivot" / "runcache")
    first = write_lock(tmp_path, StageLock("fit", "fp1", {}, {"in.txt": "d1"}, {"out.txt": "h1"}))
    runs.record("ab" * 16, "fit", {"out.txt": "h1"}, first)
    entry = tmp_path / ".pivot" / "runcache" / "ab" / ("ab" * 15 + ".json")
    assert entry.stat().st_ino == Path(first).stat().st_ino  # a link: no file of its own
    runs.record("ab" * 16, "fit", {"out.txt": "h1"}, first)  # again: replaced, not refused
    write_lock(tmp_path, StageLock("fit", "fp1", {}, {"in.txt": "d2"}, {"out.txt": "h2"}))
    runs.record("cd" * 16, "fit", {"out.txt": "h2"}, first)
    assert runs.lookup("ab" * 16) == {"out.txt": "h1"}
    assert runs.lookup("cd" * 16) == {"out.txt": "h2"}
    assert sorted(e["outs"]["out.txt"] for e in runs.entries()) == ["h1", "h2"]
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temp file left
    assert read_lock(tmp_path, "fit") == StageLock("fit", "fp1", {}, {"in.txt": "d2"}, {"out.txt": "h2"})


# --- preserve, commit, restore --------------------------------------------------------------


def test_preserve_stores_unknown_content_and_reports_only_what_differs_from_the_lock(state: ProjectState) -> None:
    write(state.root / "out.txt", "from the run\n")
    recorded = commit(state, ["out.txt"])
    assert preserve(state, ["out.txt"], {"out.txt": recorded["out.txt"] or ""}) == []
    write(state.root / "out.txt", "edited by hand\n")
    [saved] = preserve(state, ["out.txt"], {"out.txt": recorded["out.txt"] or ""})
    assert saved.path == "out.txt" and saved.digest == hash_path(state.root / "out.txt")
    assert state.cache.has(saved.digest)
    assert f"pivot checkout --hash {saved.digest} out.txt" in saved.note()
    assert "hand-edited" in saved.note()
    assert preserve(state, ["missing.txt"], {}) == []


def test_commit_returns_none_for_an_output_not_produced(state: ProjectState) -> None:
    write(state.root / "out.txt", "x\n")
    result = commit(state, ["out.txt", "never.txt"])
    assert result["never.txt"] is None
    assert result["out.txt"] == hash_path(state.root / "out.txt")


def test_a_committed_outputs_state_row_spares_the_next_run_reading_it_until_it_changes(state: ProjectState) -> None:
    write(state.root / "out.txt", "x\n")
    os.symlink("loop", state.root / "loop")  # a link to itself: not produced, as absent
    assert commit(state, ["out.txt", "loop"])["loop"] is None
    fresh = ProjectState.open(state.root)
    try:
        assert fresh.hashes.hash_path(state.root / "out.txt") == hash_path(state.root / "out.txt")
        assert fresh.hashes.reads == 0
        (state.root / "out.txt").write_text("y\n")  # same size, a new mtime
        assert fresh.hashes.hash_path(state.root / "out.txt") == hash_path(state.root / "out.txt")
        assert fresh.hashes.reads == 1
    finally:
        fresh.close()


def test_remove_takes_a_file_a_folder_or_a_link_never_what_a_link_points_to(tmp_path: Path) -> None:
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "f.txt").write_text("kept\n")
    (tmp_path / "folder" / "sub").mkdir(parents=True)
    (tmp_path / "folder" / "sub" / "f.txt").write_text("x\n")
    (tmp_path / "file.txt").write_text("x\n")
    os.symlink(tmp_path / "kept", tmp_path / "link")
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    for name in ("folder", "file.txt", "link", "dangling", "absent"):
        remove(tmp_path / name)
        assert not os.path.lexists(tmp_path / name), name
    assert (tmp_path / "kept" / "f.txt").read_text() == "kept\n"


def test_restore_places_files_and_directories_and_records_their_hashes(state: ProjectState) -> None:
    write(state.root / "out.txt", "file\n")
    write(state.root / "parts" / "a.txt", "a\n")
    write(state.root / "parts" / "sub" / "b.txt", "b\n")
    digests = {k: v for k, v in commit(state, ["out.txt", "parts/"]).items() if v}
    (state.root / "out.txt").unlink()
    (state.root / "parts" / "a.txt").write_text("changed\n")
    restore(state, digests)
    assert (state.root / "out.txt").read_text() == "file\n"
    assert (state.root / "parts" / "a.txt").read_text() == "a\n"
    assert hash_path(state.root / "parts") == digests["parts/"]
    fresh = ProjectState.open(state.root)
    try:
        for path in ("out.txt", "parts/a.txt", "parts/sub/b.txt"):
            full = state.root / path
            os.utime(full, ns=(OLD, OLD))  # leave the racy window; a trusted row needs no read
            fresh.hashes.record(full, fresh.hashes.hash_path(full) or "")
        reads = fresh.hashes.reads
        assert fresh.hashes.hash_path(state.root / "parts") == digests["parts/"]
        assert fresh.hashes.reads == reads
    finally:
        fresh.close()


# --- prepare: decide, then restore from the run cache -----------------------------------------


def test_a_reverted_param_is_restored_from_the_run_cache(state: ProjectState) -> None:
    first = spec()
    ran(state, first, {"out.txt": "lr 0.1\n"})
    second = spec(params={"lr": 0.2})
    ran(state, second, {"out.txt": "lr 0.2\n"})
    prepared = prepare(state, first)
    assert prepared.restored is not None
    assert (state.root / "out.txt").read_text() == "lr 0.1\n"
    assert prepared.reason.code == ReasonCode.RESTORED
    assert prepared.reason.details["stale"] == "params_changed"
    lock = read_lock(state.root, "fit")
    assert lock is not None and lock.params == {"lr": 0.1}
    assert prepare(state, first).decision.run is False  # the restored lock is up to date


def test_force_and_stages_without_outputs_never_restore(state: ProjectState) -> None:
    s = spec()
    ran(state, s, {"out.txt": "lr 0.1\n"})
    (state.root / "out.txt").unlink()
    forced = prepare(state, s, force=True)
    assert forced.restored is None and forced.decision.run
    assert not (state.root / "out.txt").exists()
    no_outs = spec(name="upload", outs=())
    ran(state, no_outs, {})
    changed = spec(name="upload", outs=(), params={"lr": 0.5})
    ran(state, changed, {})
    back = prepare(state, no_outs)
    assert back.decision.run and back.restored is None


def test_a_quick_decision_is_prepares_own_or_none_when_it_would_wait_on_io(state: ProjectState) -> None:
    """The pool's loop decides in place what takes little I/O; else `prepare`, in a thread."""
    first = spec()
    ran(state, first, {"out.txt": "lr 0.1\n"})
    for force in (False, True):
        assert prepare_quickly(state, first, force=force) == prepare(state, first, force=force)
    assert prepare_quickly(state, spec(params={"lr": 0.3})) == prepare(state, spec(params={"lr": 0.3}))
    ran(state, spec(params={"lr": 0.2}), {"out.txt": "lr 0.2\n"})
    assert prepare_quickly(state, first) is None  # a restore places files
    assert (state.root / "out.txt").read_text() == "lr 0.2\n"  # and it wrote nothing
    assert prepare(state, first).restored is not None
    (state.root / "big.bin").write_bytes(b"x" * (QUICK_READ_BYTES + 1))
    (state.root / "folder").mkdir()
    os.mkfifo(state.root / "fifo")
    for dep in ("big.bin", "folder", "fifo"):  # a read too large, a walk, a read that blocks
        assert prepare_quickly(state, spec(name=dep, deps=(dep,), outs=(f"{dep}.out",))) is None, dep


def test_a_hand_edit_is_saved_before_a_restore_overwrites_it(state: ProjectState) -> None:
    s = spec()
    ran(state, s, {"out.txt": "lr 0.1\n"})
    write(state.root / "out.txt", "my edit\n")
    edited = hash_path(state.root / "out.txt")
    prepared = prepare(state, s)
    assert prepared.restored is not None
    [note] = prepared.notes
    assert edited is not None and f"--hash {edited} out.txt" in note
    assert (state.root / "out.txt").read_text() == "lr 0.1\n"
    restore(state, {"out.txt": edited})
    assert (state.root / "out.txt").read_text() == "my edit\n"


# --- wave plans ------------------------------------------------------------------------------


def test_a_plan_lists_up_to_date_stages_whose_upstream_is_up_to_date(state: ProjectState) -> None:
    a = spec("a", deps=("in.txt",), outs=("a.txt",))
    b = spec("b", deps=("a.txt",), outs=("b.txt",))
    c = spec("c", deps=("in.txt",), outs=("c.txt",))
    ran(state, a, {"a.txt": "a\n"})
    ran(state, b, {"b.txt": "b\n"})
    ran(state, c, {"c.txt": "c\n"})
    manifest = Manifest((a, b, c))
    upstream = {"a": [], "b": ["a"], "c": []}
    assert plan_wave(state, manifest, ["a", "b", "c"], upstream, dep_producers(manifest)) == ["a", "b", "c"]
    write(state.root / "c.txt", "edited\n")
    assert plan_wave(state, manifest, ["a", "b", "c"], upstream) == ["a", "b"]
    bumped = Manifest((dataclasses.replace(a, params={"lr": 9}), b, c))
    # b itself matches its lock, but a will run: b must wait to be decided after it.
    assert plan_wave(state, bumped, ["a", "b", "c"], upstream) == []


def test_a_no_op_plan_reads_no_file_contents_once_hashes_are_known(state: ProjectState) -> None:
    os.utime(state.root / "in.txt", ns=(OLD, OLD))
    a = spec("a", deps=("in.txt",), outs=("a.txt", "parts/"))
    b = spec("b", deps=("a.txt", "parts/x.txt"), outs=("b.txt",))
    (state.root / "parts").mkdir()
    write(state.root / "parts" / "x.txt", "x\n")
    ran(state, a, {"a.txt": "a\n"})
    ran(state, b, {"b.txt": "b\n"})
    manifest = Manifest((a, b))
    upstream = {"a": [], "b": ["a"]}
    assert plan_wave(state, manifest, ["a", "b"], upstream) == ["a", "b"]  # learns in.txt
    fresh = ProjectState.open(state.root)  # as a new `pivot repro` would
    try:
        assert plan_wave(fresh, manifest, ["a", "b"], upstream) == ["a", "b"]
        assert fresh.hashes.reads == 0
    finally:
        fresh.close()


def test_a_plan_from_an_old_copy_of_a_lock_never_skips_a_stage_whose_outputs_moved_on(state: ProjectState) -> None:
    # The pool's first plan takes locks read at its start (LockPrefetch). The stage ran
    # since with other params, then the params came back: the old copy matches the inputs,
    # but the outputs on disk are the newer run's, so the stage is not up to date.
    from pivot.state.lock import LockPrefetch

    s = spec()
    ran(state, s, {"out.txt": "lr 0.1\n"})
    prefetch = LockPrefetch(state.root)
    read = prefetch.reader()
    ran(state, dataclasses.replace(s, params={"lr": 0.2}), {"out.txt": "lr 0.2\n"})
    manifest = Manifest((s,))
    assert plan_wave(state, manifest, ["fit"], {"fit": []}, read=read) == []
    assert plan_wave(state, manifest, ["fit"], {"fit": []}) == []  # as read from disk


def test_dep_producers_names_each_deps_writers_and_refuses_two_writers_of_a_path() -> None:
    a = spec("a", deps=("in.txt",), outs=("a.txt", "parts/"))
    b = spec("b", deps=("a.txt", "parts/x.txt", "in.txt"), outs=("b.txt",))
    producers = dep_producers(Manifest((a, b)))
    assert producers["b"] == {"a.txt": frozenset({"a"}), "parts/x.txt": frozenset({"a"}), "in.txt": frozenset()}
    assert producers.get("a") == {"in.txt": frozenset()}
    assert producers.get("nope") is None and set(producers) == {"a", "b"}
    with pytest.raises(PipelineError, match=r"two stages produce 'b\.txt'"):
        dep_producers(Manifest((a, b, spec("c", outs=("b.txt",)))))


def test_removing_a_folder_output_that_is_a_link_removes_the_link_not_what_it_points_to(tmp_path: Path) -> None:
    elsewhere = tmp_path / "disk"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep\n")
    project = tmp_path / "proj"
    project.mkdir()
    (project / "gen").symlink_to(elsewhere)
    remove(os.path.join(project, "gen/"))  # a folder output's path, as a worker joins it
    assert not os.path.lexists(project / "gen")
    assert (elsewhere / "precious.txt").read_text() == "keep\n"
