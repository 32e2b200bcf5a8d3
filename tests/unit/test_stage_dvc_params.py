"""Unit tests for dvc.yaml's forms in stage() (issue 13, point 5): a command stage's params
as a list of the params.yaml keys it reads (read as dvc.yaml's are, registered as a
dvc.yaml stage), and its persist=, uncached=, frozen=, always_changed= flags."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pivot.errors import PipelineError
from pivot.launch.spawn import run_loader
from pivot.pipeline.stage import clear_registry, registered, stage

PARAMS = "train:\n  lr: 0.5\n  epochs: 3\nprep:\n  n: 2\n"
FILES = {
    "pipeline.py": "", "params.yaml": PARAMS, "other.yaml": "scale: 10\nnested:\n  a: 1\n",
    "sub/params.yaml": "n: 7\n",
}


def fn() -> None:
    pass


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project folder as the loader sees it: the working folder, holding pipeline.py."""
    for rel, text in FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.chdir(tmp_path)
    clear_registry()
    yield tmp_path
    clear_registry()


def test_list_params_are_the_keys_read_with_their_values(project: Path) -> None:
    stage(name="t", cmd="python t.py ${train.lr} ${other.yaml:scale}", outs=["m"],
          params=["train.lr", "prep", "other.yaml:scale", {"other.yaml": ["nested.a"]}])
    decl = registered()["t"]
    assert decl.dvc  # registered as a dvc.yaml stage is: runs again exactly when one of these changes
    assert decl.params == {"train.lr": 0.5, "prep": {"n": 2}, "other.yaml:scale": 10, "other.yaml:nested.a": 1}


def test_list_params_are_found_from_the_wdir_as_dvc_finds_them(project: Path) -> None:
    stage(name="w", cmd="echo ${sub/params.yaml:n} ${train.lr}", wdir="sub",
          params=["n", {"../params.yaml": ["train.lr"]}, {"../other.yaml": []}])
    assert registered()["w"].params == {
        "sub/params.yaml:n": 7, "train.lr": 0.5, "other.yaml:nested": {"a": 1}, "other.yaml:scale": 10,
    }


def test_a_dict_param_stays_a_dict_param(project: Path) -> None:
    stage(name="d", cmd="echo ${lr}", params={"lr": 0.1})
    decl = registered()["d"]
    assert not decl.dvc and decl.params == {"lr": 0.1}


@pytest.mark.parametrize(("params", "cmd", "says"), [
    (["train.nope"], "true", "stage 'bad': params: train.nope (params.yaml): no such key 'train.nope'"),
    (["missing.yaml:a"], "true", "params file missing.yaml does not exist (read by stage 'bad')"),
    ([{"other.yaml": ["nope"]}], "true", "stage 'bad': params: nope (other.yaml): no such key 'nope'"),
    ([{"other.yaml": "scale"}], "true", "stage 'bad': params: other.yaml: expected a list of keys, got 'scale'"),
    ([3], "true", "stage 'bad': params holds 3, expected a key or {FILE: [keys]}"),
    (["train.lr"], "echo ${train.epochs}", "stage 'bad': ${train.epochs} in its cmd names no param"),
])
def test_a_bad_list_param_is_an_error_naming_stage_key_and_file(
    project: Path, params: list[object], cmd: str, says: str,
) -> None:
    with pytest.raises(PipelineError) as info:
        stage(name="bad", cmd=cmd, params=params)
    assert says in str(info.value)


def test_a_list_for_a_function_stage_is_an_error_naming_it(project: Path) -> None:
    with pytest.raises(PipelineError, match=r"stage 'fn': params as a list .* goes with cmd="):
        stage(params=["train.lr"])(fn)


def test_the_flags_map_to_the_declaration(project: Path) -> None:
    stage(name="f", cmd="true", outs=["log.txt", "models/"], metrics=["m.json"],
          persist=["./log.txt", "models"], uncached=["m.json"], frozen=True, always_changed=True)
    decl = registered()["f"]
    assert (decl.persist, decl.uncached, decl.frozen, decl.always) == (("log.txt", "models/"), ("m.json",), True, True)
    stage(name="plain", cmd="true", outs=["x"])
    plain = registered()["plain"]
    assert (plain.persist, plain.uncached, plain.frozen, plain.always) == ((), (), False, False)


@pytest.mark.parametrize(("flags", "says"), [
    ({"persist": ["other.txt"]}, "stage 'f': persist= names 'other.txt', which is none of its outs or metrics"),
    ({"uncached": ["nope"]}, "stage 'f': uncached= names 'nope', which is none of its outs or metrics"),
    ({"persist": "log.txt"}, "stage 'f': persist must be a list of paths"),
    ({"frozen": "yes"}, "stage 'f': frozen= is True or False, got 'yes'"),
])
def test_bad_flags_are_errors_naming_them(project: Path, flags: dict[str, object], says: str) -> None:
    with pytest.raises(PipelineError) as info:
        stage(name="f", cmd="true", outs=["log.txt"], **flags)  # type: ignore[arg-type]
    assert says in str(info.value)


def test_the_flags_of_a_function_stage_are_an_error_naming_it(project: Path) -> None:
    with pytest.raises(PipelineError, match=r"stage 'fn': persist=, uncached=, frozen= and always_changed= go with cmd="):
        stage(outs=["x"], frozen=True)(fn)


LIST_PIPELINE = '''\
from pivot import stage

stage(name="fit", cmd="echo ${train.lr}", params=["train.lr"], outs=["m"])
'''


def test_the_loader_gives_the_values_now_and_warns_only_of_sections_no_stage_reads(project: Path) -> None:
    (project / "pipeline.py").write_text(LIST_PIPELINE)
    manifest = run_loader(project, timeout=30)
    assert manifest.by_name["fit"].params == {"train.lr": 0.5}
    # `train` is read by a stage; without a dvc.yaml, `prep`, which no stage reads, is a typo.
    assert manifest.warnings == ("params.yaml: no stage named 'prep'; its params are ignored",)
    (project / "params.yaml").write_text(PARAMS.replace("0.5", "0.25"))
    assert run_loader(project, timeout=30).by_name["fit"].params == {"train.lr": 0.25}
