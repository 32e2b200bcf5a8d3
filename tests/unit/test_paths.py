"""Unit tests for declared-path normalization (pivot.pipeline.paths.normalize)."""

from __future__ import annotations

import pytest

from pivot.errors import PipelineError
from pivot.pipeline.paths import normalize


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.csv", "a.csv"),
        ("./a/b.csv", "a/b.csv"),
        ("a//b", "a/b"),
        ("a/./b", "a/b"),
        ("a/x/../b.csv", "a/b.csv"),
        ("dir/", "dir/"),
        ("./dir/", "dir/"),
        ("dir//", "dir/"),
        ("a/b/dir/", "a/b/dir/"),
        ("a\\b.csv", "a/b.csv"),
        ("dir\\", "dir/"),
        (".pivotish/x", ".pivotish/x"),
        ("data/.pivot", "data/.pivot"),
        ("train@small.pkl", "train@small.pkl"),
    ],
)
def test_normalize(path: str, expected: str) -> None:
    assert normalize("s", "deps", path) == expected


def test_normalize_is_idempotent() -> None:
    for path in ("./a//b/../c.csv", "x/y/", "a\\b"):
        once = normalize("s", "outs", path)
        assert normalize("s", "outs", once) == once


@pytest.mark.parametrize(
    "path",
    ["/abs/a.csv", "/", "//server/share", "C:/data/a.csv", "C:\\data\\a.csv", "\\abs\\a.csv"],
)
def test_absolute_path_is_rejected(path: str) -> None:
    with pytest.raises(PipelineError) as info:
        normalize("clean", "outs", path)
    msg = str(info.value)
    assert msg.startswith("stage 'clean': outs path ")
    assert repr(path) in msg
    assert "is absolute" in msg


@pytest.mark.parametrize(
    "path", ["../x", "..", "../", "a/../../x", "./../x", "a/b/../../../x", ".", "./", "a/.."]
)
def test_path_outside_root_is_rejected(path: str) -> None:
    with pytest.raises(PipelineError) as info:
        normalize("clean", "deps", path)
    msg = str(info.value)
    assert msg.startswith("stage 'clean': deps path ")
    assert repr(path) in msg
    assert "outside the project root" in msg


@pytest.mark.parametrize(
    "path",
    [".pivot/x", ".pivot", ".pivot/", "./.pivot/stages/a.lock", "a/../.pivot/x", ".pivot//x"],
)
def test_path_inside_state_dir_is_rejected(path: str) -> None:
    with pytest.raises(PipelineError) as info:
        normalize("clean", "metrics", path)
    msg = str(info.value)
    assert msg.startswith("stage 'clean': metrics path ")
    assert repr(path) in msg
    assert "inside .pivot/" in msg
