"""Unit tests for content hashing, lock files and the skip-or-run decision (pivot.state)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from pivot.pipeline.manifest import StageSpec
from pivot.state.decide import Decision, decide
from pivot.state.hashing import hash_path
from pivot.state.lock import StageLock, lock_path, read_lock, write_lock
from pivot.state.reasons import ReasonCode

# --- hashing --------------------------------------------------------------------------------


def test_same_content_same_hash(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"hello\n")
    (tmp_path / "b").write_bytes(b"hello\n")
    assert hash_path(tmp_path / "a") == hash_path(tmp_path / "b")
    assert isinstance(hash_path(tmp_path / "a"), str)


def test_different_content_different_hash(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"hello\n")
    (tmp_path / "b").write_bytes(b"hello!\n")
    (tmp_path / "empty").write_bytes(b"")
    hashes = {hash_path(tmp_path / n) for n in ("a", "b", "empty")}
    assert len(hashes) == 3


def test_hash_follows_content_changes(tmp_path: Path) -> None:
    f = tmp_path / "a"
    f.write_bytes(b"one")
    first = hash_path(f)
    f.write_bytes(b"two")
    assert hash_path(f) != first
    f.write_bytes(b"one")
    assert hash_path(f) == first


def test_large_file_spanning_chunks(tmp_path: Path) -> None:
    data = os.urandom(1024) * 2100  # > 2 MiB: several read chunks
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "b").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert hash_path(tmp_path / "a") != hash_path(tmp_path / "b")
    (tmp_path / "c").write_bytes(data)
    assert hash_path(tmp_path / "a") == hash_path(tmp_path / "c")


def test_missing_path_hashes_to_none(tmp_path: Path) -> None:
    assert hash_path(tmp_path / "nope") is None
    assert hash_path(tmp_path / "no" / "such" / "dir") is None


def test_path_under_a_file_hashes_to_none(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("a file, not a folder")
    assert hash_path(tmp_path / "data" / "x.csv") is None


def _make_tree(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir()
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


TREE = {"a.txt": b"a", "sub/b.txt": b"b", "sub/deeper/c.txt": b"c"}


def test_directory_hash_is_deterministic_and_marked(tmp_path: Path) -> None:
    d = _make_tree(tmp_path / "d", TREE)
    digest = hash_path(d)
    assert digest is not None
    assert digest.startswith("d")
    assert hash_path(d) == digest


def test_directory_hash_does_not_depend_on_creation_order(tmp_path: Path) -> None:
    d1 = _make_tree(tmp_path / "d1", TREE)
    d2 = _make_tree(tmp_path / "d2", dict(reversed(list(TREE.items()))))
    assert hash_path(d1) == hash_path(d2)


def test_directory_hash_changes_when_a_file_changes(tmp_path: Path) -> None:
    d = _make_tree(tmp_path / "d", TREE)
    before = hash_path(d)
    (d / "sub" / "deeper" / "c.txt").write_bytes(b"C")
    assert hash_path(d) != before


def test_directory_hash_changes_when_a_file_is_added(tmp_path: Path) -> None:
    d = _make_tree(tmp_path / "d", TREE)
    before = hash_path(d)
    (d / "sub" / "new.txt").write_bytes(b"")
    assert hash_path(d) != before


def test_directory_hash_changes_when_a_file_is_removed_or_renamed(tmp_path: Path) -> None:
    d = _make_tree(tmp_path / "d", TREE)
    before = hash_path(d)
    (d / "a.txt").rename(d / "z.txt")
    renamed = hash_path(d)
    assert renamed != before
    (d / "z.txt").unlink()
    assert hash_path(d) not in (before, renamed)


def test_moving_a_file_between_subfolders_changes_hash(tmp_path: Path) -> None:
    d1 = _make_tree(tmp_path / "d1", {"x/f": b"1"})
    d2 = _make_tree(tmp_path / "d2", {"y/f": b"1"})
    assert hash_path(d1) != hash_path(d2)


def test_directory_hash_does_not_depend_on_its_own_name(tmp_path: Path) -> None:
    assert hash_path(_make_tree(tmp_path / "one", TREE)) == hash_path(
        _make_tree(tmp_path / "two", TREE)
    )


def test_file_and_directory_hashes_differ(tmp_path: Path) -> None:
    d = _make_tree(tmp_path / "d", {})
    (tmp_path / "f").write_bytes(b"")
    assert hash_path(d) != hash_path(tmp_path / "f")


# --- lock files -----------------------------------------------------------------------------


LOCK = StageLock(
    stage="train@small",
    code="abc123",
    params={"lr": 0.1, "sizes": [1, 2], "cfg": {"z": None, "a": True}},
    deps={"data/b.csv": "h2", "data/a.csv": "h1"},
    outs={"model.pkl": "h3"},
)


def test_lock_path(tmp_path: Path) -> None:
    assert lock_path(tmp_path, "train@small") == tmp_path / ".pivot" / "stages" / "train@small.lock"


def test_lock_round_trip(tmp_path: Path) -> None:
    write_lock(tmp_path, LOCK)
    assert lock_path(tmp_path, LOCK.stage).is_file()
    assert read_lock(tmp_path, LOCK.stage) == LOCK


def test_lock_missing_reads_as_none(tmp_path: Path) -> None:
    assert read_lock(tmp_path, "never") is None


def test_lock_file_format(tmp_path: Path) -> None:
    write_lock(tmp_path, LOCK)
    text = lock_path(tmp_path, LOCK.stage).read_text()
    assert text.endswith("}\n")
    assert not text.endswith("\n\n")

    def check_sorted(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        assert keys == sorted(keys)
        return dict(pairs)

    data = json.loads(text, object_pairs_hook=check_sorted)
    assert data["deps"] == {"data/a.csv": "h1", "data/b.csv": "h2"}
    assert list(data) == ["code", "code_parts", "deps", "outs", "params", "stage"]
    assert text.index('"data/a.csv"') < text.index('"data/b.csv"')


def test_lock_is_byte_identical_when_written_twice(tmp_path: Path) -> None:
    write_lock(tmp_path, LOCK)
    first = lock_path(tmp_path, LOCK.stage).read_bytes()
    reordered = dataclasses.replace(
        LOCK,
        deps=dict(reversed(list(LOCK.deps.items()))),
        params=dict(reversed(list(LOCK.params.items()))),
    )
    write_lock(tmp_path, reordered)
    assert lock_path(tmp_path, LOCK.stage).read_bytes() == first
    other = tmp_path / "other"
    write_lock(other, LOCK)
    assert lock_path(other, LOCK.stage).read_bytes() == first


def test_lock_overwrite_replaces_content(tmp_path: Path) -> None:
    write_lock(tmp_path, LOCK)
    newer = dataclasses.replace(LOCK, code="def456", outs={})
    write_lock(tmp_path, newer)
    assert read_lock(tmp_path, LOCK.stage) == newer


def test_no_temp_files_left_behind(tmp_path: Path) -> None:
    write_lock(tmp_path, LOCK)
    write_lock(tmp_path, dataclasses.replace(LOCK, code="x"))
    write_lock(tmp_path, dataclasses.replace(LOCK, stage="other"))
    names = sorted(p.name for p in (tmp_path / ".pivot" / "stages").iterdir())
    assert names == ["other.lock", "train@small.lock"]


def test_failed_write_keeps_old_lock_and_leaves_no_temp_file(tmp_path: Path) -> None:
    write_lock(tmp_path, LOCK)
    before = lock_path(tmp_path, LOCK.stage).read_bytes()
    with pytest.raises(TypeError):
        write_lock(tmp_path, dataclasses.replace(LOCK, params={"bad": {1, 2}}))
    assert lock_path(tmp_path, LOCK.stage).read_bytes() == before
    assert [p.name for p in lock_path(tmp_path, LOCK.stage).parent.iterdir()] == [
        "train@small.lock"
    ]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        '{"stage": "s", "code": "c"',  # truncated
        "[]",
        '"a string"',
        "null",
        '{"stage": "s", "code": "c", "params": {}, "deps": {}}',  # no outs
        '{"stage": "s", "code": "c", "params": {}, "deps": [], "outs": {}}',
        '{"stage": "s", "code": "c", "params": 3, "deps": {}, "outs": {}}',
    ],
)
def test_corrupt_lock_reads_as_none(tmp_path: Path, text: str) -> None:
    path = lock_path(tmp_path, "s")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    assert read_lock(tmp_path, "s") is None


def test_non_utf8_lock_reads_as_none(tmp_path: Path) -> None:
    path = lock_path(tmp_path, "s")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert read_lock(tmp_path, "s") is None


class _Direct:
    """Hashes without a state cache (the decision logic is what is under test here)."""

    @staticmethod
    def hash_path(path: str) -> str | None:
        return hash_path(Path(path))


DIRECT = _Direct()


# --- decide ---------------------------------------------------------------------------------


def make_spec(**changes: Any) -> StageSpec:
    base = StageSpec(
        name="train",
        module="pipeline",
        func="pipeline.train",
        deps=("data/in.csv", "data/more/"),
        outs=("model.pkl", "metrics.json"),
        metrics=("metrics.json",),
        params={"lr": 0.1, "epochs": 3},
        fingerprint="fp-1",
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "data" / "more").mkdir(parents=True)
    (tmp_path / "data" / "in.csv").write_text("a,b\n1,2\n")
    (tmp_path / "data" / "more" / "x.txt").write_text("x")
    (tmp_path / "model.pkl").write_bytes(b"model-v1")
    (tmp_path / "metrics.json").write_text('{"mse": 1}\n')
    return tmp_path


def record(root: Path, spec: StageSpec) -> None:
    """Write the lock a successful run of `spec` would write."""
    deps = {d: hash_path(root / d) for d in spec.deps}
    outs = {o: hash_path(root / o) for o in spec.outs}
    assert None not in deps.values() and None not in outs.values()
    write_lock(
        root,
        StageLock(spec.name, spec.fingerprint, dict(spec.params), deps, outs, dict(spec.code_parts)),  # type: ignore[arg-type]
    )


def test_never_ran(project: Path) -> None:
    d = decide(project, make_spec(), DIRECT)
    assert isinstance(d, Decision)
    assert (d.run, d.reason.code, d.reason.message) == (True, ReasonCode.NEVER_RAN, "never ran")
    assert d.dep_hashes == {
        "data/in.csv": hash_path(project / "data" / "in.csv"),
        "data/more/": hash_path(project / "data" / "more"),
    }
    assert d.missing_deps == ()


def test_up_to_date_after_matching_lock(project: Path) -> None:
    spec = make_spec()
    record(project, spec)
    d = decide(project, spec, DIRECT)
    assert (d.run, d.reason.code, d.reason.message) == (False, ReasonCode.UP_TO_DATE, "up to date")
    assert set(d.dep_hashes) == {"data/in.csv", "data/more/"}


def test_up_to_date_survives_a_lock_round_trip_with_float_params(project: Path) -> None:
    spec = make_spec(params={"lr": 1.0, "sizes": [1, 2], "cfg": {"k": None}})
    record(project, spec)
    assert decide(project, spec, DIRECT).reason.code == ReasonCode.UP_TO_DATE


def test_forced(project: Path) -> None:
    spec = make_spec()
    record(project, spec)
    d = decide(project, spec, DIRECT, force=True)
    assert (d.run, d.reason.code) == (True, ReasonCode.FORCED)
    assert decide(project, spec, DIRECT).reason.code == ReasonCode.UP_TO_DATE


def test_code_changed(project: Path) -> None:
    record(project, make_spec())
    d = decide(project, make_spec(fingerprint="fp-2"), DIRECT)
    assert (d.run, d.reason.code) == (True, ReasonCode.CODE_CHANGED)
    assert "pipeline.train" in d.reason.message  # a lock without parts names the stage function


def test_params_changed_shows_old_and_new(project: Path) -> None:
    record(project, make_spec())
    d = decide(project, make_spec(params={"lr": 0.2, "epochs": 3}), DIRECT)
    assert (d.run, d.reason.code) == (True, ReasonCode.PARAMS_CHANGED)
    assert "lr 0.1 -> 0.2" in d.reason.message
    assert "epochs" not in d.reason.message


def test_params_added_and_removed(project: Path) -> None:
    record(project, make_spec())
    d = decide(project, make_spec(params={"lr": 0.1, "batch": 8}), DIRECT)
    assert d.reason.code == ReasonCode.PARAMS_CHANGED
    assert "batch <unset> -> 8" in d.reason.message
    assert "epochs 3 -> <unset>" in d.reason.message
    assert d.reason.details == {"changes": {"batch": [None, 8], "epochs": [3, None]}}


@pytest.mark.parametrize(("old", "new"), [(1, 1.0), (1, True), (0, False), ([1, 2], [1.0, 2]), ({"k": 1}, {"k": True})])
def test_a_param_of_another_type_with_an_equal_value_is_a_change(project: Path, old: Any, new: Any) -> None:
    """Python's 1 == 1.0 == True; a command's ${a} gets `1`, `1.0` or `true`."""
    record(project, make_spec(params={"a": old}))
    d = decide(project, make_spec(params={"a": new}), DIRECT)
    assert (d.run, d.reason.code) == (True, ReasonCode.PARAMS_CHANGED)


def test_a_nan_param_is_the_same_nan_next_time(project: Path) -> None:
    """NaN != NaN in Python: a stage with a NaN default was stale at every check."""
    record(project, make_spec(params={"x": float("nan"), "xs": [float("nan"), 1.0]}))
    assert not decide(project, make_spec(params={"x": float("nan"), "xs": [float("nan"), 1.0]}), DIRECT).run
    d = decide(project, make_spec(params={"x": 0.5, "xs": [float("nan"), 1.0]}), DIRECT)
    assert (d.run, d.reason.code) == (True, ReasonCode.PARAMS_CHANGED)


def test_a_tuple_param_is_its_list_in_the_lock(project: Path) -> None:
    record(project, make_spec(params={"rows": ("ab", "c")}))
    assert not decide(project, make_spec(params={"rows": ("ab", "c")}), DIRECT).run


def test_string_param_change_is_quoted(project: Path) -> None:
    record(project, make_spec(params={"name": "a"}))
    d = decide(project, make_spec(params={"name": "b"}), DIRECT)
    assert "name 'a' -> 'b'" in d.reason.message


def test_dep_content_changed_names_the_path(project: Path) -> None:
    spec = make_spec()
    record(project, spec)
    (project / "data" / "in.csv").write_text("a,b\n1,3\n")
    d = decide(project, spec, DIRECT)
    assert (d.run, d.reason.code) == (True, ReasonCode.DEPS_CHANGED)
    assert "data/in.csv" in d.reason.message
    assert "data/more/" not in d.reason.message
    assert d.dep_hashes["data/in.csv"] == hash_path(project / "data" / "in.csv")


def test_file_added_to_directory_dep_is_a_dep_change(project: Path) -> None:
    spec = make_spec()
    record(project, spec)
    (project / "data" / "more" / "y.txt").write_text("y")
    d = decide(project, spec, DIRECT)
    assert d.reason.code == ReasonCode.DEPS_CHANGED
    assert "data/more/" in d.reason.message


def test_out_deleted(project: Path) -> None:
    spec = make_spec()
    record(project, spec)
    (project / "model.pkl").unlink()
    d = decide(project, spec, DIRECT)
    assert (d.run, d.reason.code) == (True, ReasonCode.OUT_MISSING)
    assert "model.pkl" in d.reason.message


def test_out_edited(project: Path) -> None:
    spec = make_spec()
    record(project, spec)
    (project / "metrics.json").write_text('{"mse": 0}\n')
    d = decide(project, spec, DIRECT)
    assert (d.run, d.reason.code) == (True, ReasonCode.OUT_MODIFIED)
    assert "metrics.json" in d.reason.message


def test_touched_dep_with_identical_content_is_up_to_date(project: Path) -> None:
    spec = make_spec()
    record(project, spec)
    dep = project / "data" / "in.csv"
    dep.write_text(dep.read_text())  # rewritten, same bytes
    st = dep.stat()
    os.utime(dep, ns=(st.st_atime_ns + 10**10, st.st_mtime_ns + 10**10))
    assert dep.stat().st_mtime_ns != st.st_mtime_ns
    assert decide(project, spec, DIRECT).reason.code == ReasonCode.UP_TO_DATE


def test_missing_dep(project: Path) -> None:
    spec = make_spec()
    record(project, spec)
    (project / "data" / "in.csv").unlink()
    d = decide(project, spec, DIRECT)
    assert (d.run, d.reason.code) == (True, ReasonCode.DEP_MISSING)
    assert d.missing_deps == ("data/in.csv",)
    assert "data/in.csv" in d.reason.message
    assert set(d.dep_hashes) == {"data/more/"}


def test_missing_dep_on_never_run_stage_reports_never_ran_and_the_missing_deps(project: Path) -> None:
    # Before a first run, deps are often missing only because upstream never ran either.
    spec = make_spec(deps=("data/in.csv", "nope.csv", "gone/"))
    d = decide(project, spec, DIRECT)
    assert d.reason.code == ReasonCode.NEVER_RAN
    assert d.missing_deps == ("nope.csv", "gone/")


def test_missing_dep_on_a_stage_that_ran_is_dep_missing(project: Path) -> None:
    spec = make_spec()
    record(project, spec)
    (project / "data" / "in.csv").unlink()
    d = decide(project, spec, DIRECT)
    assert d.reason.code == ReasonCode.DEP_MISSING
    assert d.missing_deps == ("data/in.csv",)


def test_declaration_changed(project: Path) -> None:
    record(project, make_spec())
    d = decide(project, make_spec(outs=("model.pkl",), metrics=()), DIRECT)
    assert (d.run, d.reason.code) == (True, ReasonCode.DEFINITION_CHANGED)


def test_a_corrupt_lock_is_named_and_the_stage_runs(project: Path) -> None:
    spec = make_spec()
    record(project, spec)
    for text, said in (("{garbage", "not JSON"), ("", "empty"), ("[1]", "a JSON list"), ('{"stage": "x"}', "missing code")):
        lock_path(project, spec.name).write_text(text)
        d = decide(project, spec, DIRECT)
        assert d.run and d.reason.code == ReasonCode.LOCK_CORRUPT, text
        assert said in d.reason.message and f".pivot/stages/{spec.name}.lock" in d.reason.message, d.reason
    lock_path(project, spec.name).unlink()
    assert decide(project, spec, DIRECT).reason.code == ReasonCode.NEVER_RAN


def test_lock_of_another_stage_is_not_used(project: Path) -> None:
    record(project, make_spec())
    assert decide(project, make_spec(name="train@big"), DIRECT).reason.code == ReasonCode.NEVER_RAN


def test_dep_under_a_file_is_missing(project: Path) -> None:
    d = decide(project, make_spec(deps=("data/in.csv/part",)), DIRECT)
    assert d.reason.code == ReasonCode.NEVER_RAN
    assert d.missing_deps == ("data/in.csv/part",)


def test_code_changed_names_the_changed_added_and_removed_pieces(project: Path) -> None:
    parts = {"pipeline.train": "1", "helpers.clean": "2", "helpers.OLD": "3"}
    record(project, make_spec(code_parts=parts))
    new_parts = {"pipeline.train": "1", "helpers.clean": "2b", "helpers.NEW": "4"}
    d = decide(project, make_spec(fingerprint="fp-2", code_parts=new_parts), DIRECT)
    assert d.reason.code == ReasonCode.CODE_CHANGED
    assert d.reason.details == {"changed": ["helpers.clean"], "added": ["helpers.NEW"], "removed": ["helpers.OLD"]}
    assert d.reason.message == "code changed: helpers.clean, +helpers.NEW, -helpers.OLD"


def test_a_changed_dep_written_by_a_stage_is_upstream_changed(project: Path) -> None:
    spec = make_spec()
    record(project, spec)
    (project / "data" / "in.csv").write_text("new rows\n")
    producers = {"data/in.csv": frozenset({"prepare"})}
    d = decide(project, spec, DIRECT, producers=producers)
    assert d.reason.code == ReasonCode.UPSTREAM_CHANGED
    assert d.reason.details == {"paths": ["data/in.csv"], "stages": ["prepare"]}
    assert "prepare" in d.reason.message


def test_all_reasons_lists_every_reason_in_a_fixed_order(project: Path) -> None:
    spec = make_spec()
    record(project, spec)
    (project / "data" / "in.csv").write_text("new rows\n")
    (project / "model.pkl").unlink()
    changed = make_spec(fingerprint="fp-2", params={"lr": 0.3, "epochs": 3})
    first = decide(project, changed, DIRECT)
    every = decide(project, changed, DIRECT, all_reasons=True)
    assert [r.code for r in first.reasons] == [ReasonCode.CODE_CHANGED]
    assert [r.code for r in every.reasons] == [
        ReasonCode.CODE_CHANGED, ReasonCode.PARAMS_CHANGED, ReasonCode.DEPS_CHANGED, ReasonCode.OUT_MISSING,
    ]
    assert every.reasons[-1].details == {"paths": ["model.pkl"]}


def test_first_reason_stops_before_hashing_outputs(project: Path) -> None:
    spec = make_spec()
    record(project, spec)
    (project / "data" / "in.csv").write_text("new rows\n")
    seen: list[str] = []

    class Counting:
        @staticmethod
        def hash_path(path: str) -> str | None:
            seen.append(Path(path).relative_to(project).as_posix())
            return hash_path(Path(path))

    decide(project, spec, Counting())
    assert seen == [d.rstrip("/") for d in spec.deps]  # no output was hashed
