"""Whether a pipeline's load asks git for the dvc.yaml files below pipeline.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from pivot.pipeline.dvcyaml import in_git_repo


def test_a_folder_outside_any_repository_is_not_in_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GIT_DIR", raising=False)
    if any((folder / ".git").exists() for folder in (tmp_path, *tmp_path.parents)):
        pytest.skip("the temp folder is inside a repository")
    assert not in_git_repo(tmp_path / "project")


def test_a_dot_git_at_the_root_or_above_it_makes_it_a_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GIT_DIR", raising=False)
    project = tmp_path / "repo" / "sub" / "project"
    project.mkdir(parents=True)
    (tmp_path / "repo" / ".git").mkdir()
    assert in_git_repo(project)
    assert in_git_repo(tmp_path / "repo")


def test_a_worktree_s_dot_git_file_and_git_dir_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GIT_DIR", raising=False)
    (tmp_path / "wt").mkdir()
    (tmp_path / "wt" / ".git").write_text("gitdir: /elsewhere/.git/worktrees/wt\n")
    assert in_git_repo(tmp_path / "wt")
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere.git"))
    assert in_git_repo(tmp_path / "plain")
