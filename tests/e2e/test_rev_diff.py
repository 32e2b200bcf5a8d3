"""`pivot metrics diff` and `pivot params diff --rev` against a git revision, as `dvc
metrics diff` / `dvc params diff` (issue 12): REV's lock files from git, a metrics file
from git when committed, else from `.pivot/cache` by the hash REV's lock records."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from procs import describe, run_pivot


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root, check=True,
                   capture_output=True)


def committed_project(root: Path, *, commit_metrics: bool) -> Path:
    """The quickstart (`project` fixture), run and committed, then run with other params."""
    if commit_metrics:  # the quickstart's own .gitignore keeps it out of git
        (root / ".gitignore").write_text((root / ".gitignore").read_text().replace("metrics.json\n", ""))
    git(root, "init", "-q")
    assert run_pivot(root, "repro", timeout=60).returncode == 0
    git(root, "add", "-A")
    git(root, "commit", "-qm", "epochs 300")
    (root / "params.yaml").write_text((root / "params.yaml").read_text().replace("epochs: 300", "epochs: 50"))
    assert run_pivot(root, "repro", timeout=60).returncode == 0
    return root


@pytest.mark.parametrize("commit_metrics", [True, False], ids=["from-git", "from-cache"])
def test_metrics_diff_against_head(project: Path, commit_metrics: bool) -> None:
    root = committed_project(project, commit_metrics=commit_metrics)
    now = json.loads((root / "metrics.json").read_text())
    result = run_pivot(root, "metrics", "diff", "--json")
    assert result.returncode == 0, describe(result)
    changed = json.loads(result.stdout)["metrics.json"]
    assert {"mse", "r2"} <= set(changed) <= set(now), changed
    assert "n_train" not in changed  # the same rows either way: unchanged values are not listed
    for key, row in changed.items():
        assert row["new"] == now[key] and row["old"] != row["new"], (key, row)
        assert row["diff"] == pytest.approx(row["new"] - row["old"]), (key, row)
    md = run_pivot(root, "metrics", "diff", "--md")
    assert md.stdout.splitlines()[0] == "| Path | Metric | HEAD | workspace | Change |", md.stdout
    git(root, "stash", "-q")  # params back to HEAD's: the metrics on disk are still the new ones
    same = run_pivot(root, "metrics", "diff", "--rev", "HEAD")
    assert same.returncode == 0, describe(same)


def test_params_diff_against_a_revision(project: Path) -> None:
    root = committed_project(project, commit_metrics=False)
    since_head = run_pivot(root, "params", "diff", "--rev", "HEAD")
    assert since_head.returncode == 0, describe(since_head)
    assert since_head.stdout.strip() == "fit.epochs: 300 -> 50", since_head.stdout
    # Without --rev: against the last runs here, which ran with 50.
    last = run_pivot(root, "params", "diff")
    assert last.stdout.strip() == "no param changes since the last runs", last.stdout
    md = run_pivot(root, "params", "diff", "--rev", "HEAD", "--md")
    assert md.returncode == 0, describe(md)
    assert md.stdout.splitlines() == ["| Stage | Param | HEAD | workspace |", "|---|---|---|---|",
                                      "| fit | epochs | 300 | 50 |"], md.stdout


def test_a_metrics_file_whose_cached_version_was_collected_is_said_missing(project: Path) -> None:
    root = committed_project(project, commit_metrics=False)
    gc = run_pivot(root, "gc", "--force", "--run-cache")
    assert gc.returncode == 0, describe(gc)
    result = run_pivot(root, "metrics", "diff")
    assert result.returncode == 0, describe(result)
    assert "metrics.json at HEAD" in result.stderr and "the cache no longer has" in result.stderr, describe(result)


def test_outside_git_it_is_a_usage_error(project: Path) -> None:
    result = run_pivot(project, "metrics", "diff")
    assert result.returncode == 2 and "is not in a git repository" in result.stderr, describe(result)


def test_a_bad_revision_is_a_usage_error(project: Path) -> None:
    root = committed_project(project, commit_metrics=False)
    for args in (["metrics", "diff", "--rev", "nope"], ["params", "diff", "--rev", "nope"]):
        result = run_pivot(root, *args)
        assert result.returncode == 2, describe(result)
        assert "'nope' is not a revision" in result.stderr and "Traceback" not in result.stderr


def test_an_unreadable_metrics_file_is_an_error_not_unchanged(project: Path) -> None:
    root = committed_project(project, commit_metrics=False)
    assert run_pivot(root, "gc", "--force", "--run-cache").returncode == 0  # HEAD's version gone too
    (root / "metrics.json").write_text("{not json")
    result = run_pivot(root, "metrics", "diff")
    assert result.returncode == 2, describe(result)
    assert result.stdout == "" and "error: metrics.json" in result.stderr, describe(result)
