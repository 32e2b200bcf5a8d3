"""Unit tests for the watcher's ignore rules (pivot.watch.rules): built-ins, the
gitignore subset of `.pivotignore`, virtual-environment folders, reload; and the watch
plan made from them (pivot.watch.plan): which folders get a recursive watch, which a
watch of their own, and which none."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pivot.watch.plan import WatchPlan, plan_watches
from pivot.watch.rules import ALWAYS_IGNORED_NAMES, IgnoreRules


def rules_with(root: Path, text: str | None) -> IgnoreRules:
    if text is not None:
        (root / ".pivotignore").write_text(text)
    return IgnoreRules(root)


@pytest.fixture
def bare(tmp_path: Path) -> IgnoreRules:
    return rules_with(tmp_path, None)


# --- built-ins -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel",
    [
        ".pivot",
        ".pivot/state.db",
        ".pivot/run/lock",
        ".pivot/stages/train.lock",
        ".git",
        ".git/index",
        ".git/index.lock",
        ".git/refs/heads/main",
        "vendor/lib/.git/HEAD",
        "__pycache__",
        "__pycache__/x.cpython-311.pyc",
        "src/pkg/__pycache__/mod.cpython-311.pyc",
        ".venv/lib/python3.11/site-packages/a.py",
        "venv/bin/python",
        "web/node_modules/left-pad/index.js",
        ".mypy_cache/3.11/x.json",
        "sub/.pytest_cache/v/cache/lastfailed",
        ".ruff_cache/0.5/x",
        "src/.model.py.swp",
        "src/.model.py.swx",
        "data/a.csv~",
        "src/.#model.py",
        "src/4913",
        "4913",
    ],
)
def test_builtin_ignored(bare: IgnoreRules, rel: str) -> None:
    assert bare.ignored(rel)
    assert bare.ignored(rel, is_dir=False)


@pytest.mark.parametrize(
    "rel",
    [
        "data/a.csv",
        "data/a.tmp",  # tools write real data with .tmp names
        "pipeline.py",
        ".pivotignore",
        "data/.pivot",  # only the root .pivot is Pivot's state
        "data/.pivot/x",
        ".pivotish/x",
        "src/.gitignore",
        ".github/workflows/ci.yml",
        "my_venv_notes.txt",
        "venvs.csv",
        "node_modules.txt",
        "a.swpx",
        "swp",
        "49130",
        "data/4913.csv",
        "~backup",
        "x.#y",
    ],
)
def test_not_ignored_without_rules(bare: IgnoreRules, rel: str) -> None:
    assert not bare.ignored(rel)
    assert not bare.ignored(rel, is_dir=False)


def test_builtin_names_hide_folders_and_everything_inside(bare: IgnoreRules) -> None:
    for name in ALWAYS_IGNORED_NAMES:
        assert bare.ignored(name, is_dir=True), name
        assert bare.ignored(f"a/b/{name}", is_dir=True), name
        assert bare.ignored(f"a/{name}/b/c.txt"), name


def test_root_and_empty_path_are_not_ignored(bare: IgnoreRules) -> None:
    assert not bare.ignored("")
    assert not bare.ignored(".", is_dir=True)


def test_negation_cannot_reinclude_builtins(tmp_path: Path) -> None:
    rules = rules_with(tmp_path, "!__pycache__/\n!*.swp\n!.pivot/\n!.pivot/x\n!node_modules\n")
    assert rules.ignored("__pycache__/a.pyc")
    assert rules.ignored("a.swp")
    assert rules.ignored(".pivot/x")
    assert rules.ignored("node_modules/a.js")


def test_folder_with_pyvenv_cfg_is_a_virtual_environment(tmp_path: Path) -> None:
    (tmp_path / "envs" / "py311" / "lib").mkdir(parents=True)
    (tmp_path / "envs" / "py311" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (tmp_path / "envs" / "other").mkdir()
    rules = IgnoreRules(tmp_path)
    assert rules.ignored("envs/py311", is_dir=True)
    assert rules.ignored("envs/py311/pyvenv.cfg")
    assert rules.ignored("envs/py311/lib/site.py")
    assert rules.ignored("envs/py311/lib", is_dir=True)
    assert not rules.ignored("envs", is_dir=True)
    assert not rules.ignored("envs/other/a.py")
    assert not rules.ignored("envs/other", is_dir=True)


def test_pyvenv_cfg_appearing_later_takes_effect_after_note_change(tmp_path: Path) -> None:
    env = tmp_path / "myenv"
    (env / "bin").mkdir(parents=True)
    rules = IgnoreRules(tmp_path)
    assert not rules.ignored("myenv/bin/python")  # cached: no pyvenv.cfg yet
    (env / "pyvenv.cfg").write_text("home = /usr/bin\n")
    assert not rules.ignored("myenv/bin/python")  # the cached answer stands...
    rules.note_change("myenv/pyvenv.cfg")  # ...until the watcher reports the marker
    assert rules.ignored("myenv/bin/python")
    (env / "pyvenv.cfg").unlink()
    rules.note_change("myenv/pyvenv.cfg")
    assert not rules.ignored("myenv/bin/python")


def test_a_file_named_like_a_venv_marker_folder_is_not_a_venv(tmp_path: Path) -> None:
    (tmp_path / "pyvenv.cfg").write_text("x")  # at the root: the project is no venv
    rules = IgnoreRules(tmp_path)
    assert not rules.ignored("data/a.csv")
    assert not rules.ignored("pyvenv.cfg")


# --- .pivotignore: the gitignore subset -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rel", "is_dir", "expected"),
    [
        # an unanchored name matches at any depth, files and folders
        ("scratch", "scratch", False, True),
        ("scratch", "scratch", True, True),
        ("scratch", "a/b/scratch", False, True),
        ("scratch", "a/scratch/x.csv", False, True),
        ("scratch", "scratch2", False, False),
        ("scratch", "my_scratch", False, False),
        # "*" stays within one component
        ("*.log", "run.log", False, True),
        ("*.log", "logs/deep/run.log", False, True),
        ("*.log", "run.log.gz", False, False),
        ("*.log", "run.logs", False, False),
        ("data/*.csv", "data/a.csv", False, True),
        ("data/*.csv", "data/sub/a.csv", False, False),
        ("a*b", "a/b", False, False),
        # "?" is one character, never "/"
        ("file?.txt", "file1.txt", False, True),
        ("file?.txt", "file12.txt", False, False),
        ("file?.txt", "file.txt", False, False),
        ("a?b", "a/b", False, False),
        # sets
        ("run[0-9].csv", "run7.csv", False, True),
        ("run[0-9].csv", "runx.csv", False, False),
        ("run[abc].csv", "runb.csv", False, True),
        ("run[abc].csv", "rund.csv", False, False),
        ("run[!0-9].csv", "runx.csv", False, True),
        ("run[!0-9].csv", "run7.csv", False, False),
        ("run[^0-9].csv", "runx.csv", False, True),
        ("run[^0-9].csv", "run7.csv", False, False),
        ("a[/]b", "a/b", False, False),
        ("a[!x]b", "a/b", False, False),
        ("run[]].csv", "run].csv", False, True),
        ("run[-a].csv", "run-.csv", False, True),
        ("x[", "x[", False, True),  # an unclosed "[" is literal
        ("x[", "xa", False, False),
        # escapes
        ("\\*.csv", "*.csv", False, True),
        ("\\*.csv", "a.csv", False, False),
        ("\\#notes", "#notes", False, True),
        ("\\!important", "!important", False, True),
        ("trail\\ ", "trail ", False, True),
        ("trail   ", "trail", False, True),  # unescaped trailing spaces dropped
        ("trail   ", "trail ", False, False),
        ("a.b", "axb", False, False),  # regex characters are literal
        ("(x)+", "(x)+", False, True),
        # a leading "/" anchors to the root
        ("/build", "build", True, True),
        ("/build", "build/x.o", False, True),
        ("/build", "src/build", True, False),
        ("/build", "src/build/x.o", False, False),
        # a middle "/" anchors too
        ("data/raw", "data/raw", True, True),
        ("data/raw", "data/raw/x.csv", False, True),
        ("data/raw", "x/data/raw/a.csv", False, False),
        ("data/raw", "data/rawer", False, False),
        # trailing "/": folders only
        ("out/", "out", True, True),
        ("out/", "out", False, False),
        ("out/", "out", None, False),  # unknown kind (deleted): treated as a file
        ("out/", "a/out", True, True),
        ("out/", "a/out/x.csv", False, True),  # inside: the parent is a folder
        ("out/", "out.csv", False, False),
        ("/out/", "a/out/x.csv", False, False),
        ("data/tmp/", "data/tmp/x", False, True),
        ("data/tmp/", "data/tmp", False, False),
        # leading "**/"
        ("**/cache", "cache", True, True),
        ("**/cache", "a/b/cache", True, True),
        ("**/cache", "a/b/cache/x", False, True),
        ("**/cache", "a/bcache", False, False),
        ("**/data/raw", "x/y/data/raw/a.csv", False, True),
        ("**/data/raw", "data/raw/a.csv", False, True),
        ("**/data/raw", "data/x/raw/a.csv", False, False),
        # trailing "/**": everything inside, not the folder itself
        ("logs/**", "logs/a.txt", False, True),
        ("logs/**", "logs/a/b/c.txt", False, True),
        ("logs/**", "logs", True, False),
        ("logs/**", "x/logs/a.txt", False, False),
        # middle "/**/": zero or more folders
        ("a/**/b.txt", "a/b.txt", False, True),
        ("a/**/b.txt", "a/x/b.txt", False, True),
        ("a/**/b.txt", "a/x/y/z/b.txt", False, True),
        ("a/**/b.txt", "a/xb.txt", False, False),
        ("a/**/b.txt", "z/a/x/b.txt", False, False),
        ("docs/**/*.md", "docs/x/y/readme.md", False, True),
        ("docs/**/*.md", "docs/readme.md", False, True),
        ("docs/**/*.md", "docs/x/readme.txt", False, False),
        # any other "**" is a plain "*"
        ("a**b", "axxb", False, True),
        ("a**b", "a/b", False, False),
        ("**", "anything/at/all", False, True),
        # comments and blanks
        ("# scratch\n\n   \n", "# scratch", False, False),
        ("#scratch", "scratch", False, False),
        # CRLF files
        ("scratch\r\nother\r\n", "other", False, True),
        ("scratch\r\nother\r\n", "scratch", False, True),
    ],
)
def test_pattern(tmp_path: Path, text: str, rel: str, is_dir: bool | None, expected: bool) -> None:
    assert rules_with(tmp_path, text).ignored(rel, is_dir) is expected


@pytest.mark.parametrize(
    ("text", "rel", "expected"),
    [
        # the last matching line wins
        ("*.csv\n!keep.csv\n", "keep.csv", False),
        ("*.csv\n!keep.csv\n", "other.csv", True),
        ("!keep.csv\n*.csv\n", "keep.csv", True),
        ("*.csv\n!keep.csv\n*.csv\n", "keep.csv", True),
        ("*.csv\n!*.csv\n", "a/b.csv", False),
        # a negation inside an ignored folder cannot re-include (the folder is gone)
        ("data/\n!data/keep.csv\n", "data/keep.csv", True),
        ("/data\n!data/keep.csv\n", "data/keep.csv", True),
        # ...but "dir/**" leaves the folder itself, so a negation works there
        ("data/**\n!data/keep.csv\n", "data/keep.csv", False),
        ("data/**\n!data/keep.csv\n", "data/other.csv", True),
        # a negation with nothing to negate changes nothing
        ("!a.csv\n", "a.csv", False),
        # "!" alone and a bare "/" are no patterns
        ("!\n/\n", "a.csv", False),
    ],
)
def test_negation_order(tmp_path: Path, text: str, rel: str, expected: bool) -> None:
    assert rules_with(tmp_path, text).ignored(rel, is_dir=False) is expected


def test_folder_only_negation(tmp_path: Path) -> None:
    rules = rules_with(tmp_path, "build*\n!build_keep/\n")
    assert rules.ignored("build_x", is_dir=True)
    assert rules.ignored("build_keep", is_dir=False)  # a file: the negation is for folders
    assert not rules.ignored("build_keep", is_dir=True)
    assert not rules.ignored("build_keep/a.csv")


def test_nested_paths_use_every_parent(tmp_path: Path) -> None:
    rules = rules_with(tmp_path, "tmp/\n/results/raw\n*.bak\n")
    assert rules.ignored("a/b/tmp/c/d/e.csv")
    assert rules.ignored("results/raw/2024/01/a.csv")
    assert not rules.ignored("x/results/raw/a.csv")
    assert rules.ignored("x/y.bak/z.csv")  # a folder named like the pattern
    assert not rules.ignored("a/b/tmpx/c.csv")


def test_unreadable_line_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rules = rules_with(tmp_path, "run[z-a].csv\nscratch\n")  # a reversed range
    assert rules.ignored("scratch")
    assert not rules.ignored("runb.csv")
    assert "line 1" in caplog.text


def test_missing_file_means_no_patterns(bare: IgnoreRules) -> None:
    assert not bare.ignored("scratch/a.csv")


def test_reload_picks_up_edits(tmp_path: Path) -> None:
    rules = rules_with(tmp_path, "scratch/\n")
    assert rules.ignored("scratch/a.csv")
    assert not rules.ignored("tmp/a.csv")
    (tmp_path / ".pivotignore").write_text("tmp/\n")
    assert rules.ignored("scratch/a.csv")  # nothing changes before reload()
    rules.reload()
    assert not rules.ignored("scratch/a.csv")
    assert rules.ignored("tmp/a.csv")
    (tmp_path / ".pivotignore").unlink()
    rules.reload()
    assert not rules.ignored("tmp/a.csv")


def test_note_change_on_pivotignore_reloads(tmp_path: Path) -> None:
    rules = rules_with(tmp_path, "")
    assert not rules.ignored("scratch/a.csv")
    (tmp_path / ".pivotignore").write_text("scratch/\n")
    assert not rules.note_change("data/.pivotignore")  # only the root file counts
    assert not rules.ignored("scratch/a.csv")
    assert rules.note_change(".pivotignore")  # True: the watches must be planned again
    assert rules.ignored("scratch/a.csv")


def test_note_change_says_when_ignored_folders_may_differ(bare: IgnoreRules) -> None:
    assert bare.note_change("env/pyvenv.cfg")
    assert bare.note_change("pyvenv.cfg")
    assert not bare.note_change("data/a.csv")
    assert not bare.note_change("data")


def test_a_venv_deleted_and_made_again_as_a_plain_folder_is_kept(tmp_path: Path) -> None:
    """The watcher does not watch inside a venv, so it sees the folder go, not its
    pyvenv.cfg: the folder's own event must drop the cached answer."""
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    rules = IgnoreRules(tmp_path)
    assert rules.ignored("env", is_dir=True)
    (tmp_path / "env" / "pyvenv.cfg").unlink()
    (tmp_path / "env").rmdir()
    rules.note_change("env")  # deleted
    (tmp_path / "env").mkdir()
    assert not rules.ignored("env", is_dir=True)
    assert not rules.ignored("env/a.py")


def test_cached_folder_answers_follow_reload(tmp_path: Path) -> None:
    rules = rules_with(tmp_path, "")
    assert not rules.ignored("a/b/c.csv")  # caches a and a/b as kept
    (tmp_path / ".pivotignore").write_text("/a/b\n")
    rules.reload()
    assert rules.ignored("a/b/c.csv")
    assert not rules.ignored("a/c.csv")


# --- the watch plan --------------------------------------------------------------------


def plan_of(root: Path, *folders: str, ignore: str | None = None) -> WatchPlan:
    for rel in folders:
        (root / rel).mkdir(parents=True, exist_ok=True)
    return plan_watches(root, rules_with(root, ignore))


def test_plan_watches_clean_subtrees_recursively_and_the_rest_alone(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        ".venv/lib/site-packages/pkg",
        ".git/objects/ab",
        ".pivot/run",
        "data/raw/2024",
        "src/pkg/__pycache__",
        "src/pkg/sub/deeper",
        "src/other",
        "scratch/deep",
        "docs",
        ignore="scratch/\n",
    )
    assert plan.flat == {"", "src", "src/pkg"}
    assert plan.recursive == {"data", "src/other", "src/pkg/sub", "docs"}


def test_plan_nothing_ignored_is_one_recursive_root(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, "data/a", "src")
    assert plan.recursive == {""}
    assert plan.flat == frozenset()


def test_plan_never_walks_into_a_venv_found_by_its_marker(tmp_path: Path) -> None:
    (tmp_path / "tools" / "env" / "lib").mkdir(parents=True)
    (tmp_path / "tools" / "env" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (tmp_path / "tools" / "bin").mkdir()
    plan = plan_of(tmp_path)
    assert plan.flat == {"", "tools"}
    assert plan.recursive == {"tools/bin"}


def test_plan_a_pivotignore_negation_inside_an_ignored_pattern(tmp_path: Path) -> None:
    """`data/*` with `!data/keep`: data is watched alone, keep recursively."""
    plan = plan_of(tmp_path, "data/keep/x", "data/drop/y", ignore="data/*\n!data/keep\n")
    assert plan.flat == {"", "data"}
    assert plan.recursive == {"data/keep"}


def test_plan_links(tmp_path: Path) -> None:
    """A link to a folder outside the project is a recursive root of its own (notify
    follows it); one into the project, or to a parent of it, is not watched (its target
    is, where it is); the folder holding a link is watched alone, so that notify never
    walks into a link by itself."""
    root = tmp_path / "proj"
    (tmp_path / "outside" / "sub").mkdir(parents=True)
    (root / "data" / "real").mkdir(parents=True)
    (root / "data" / "out").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "data" / "alias").symlink_to(root / "data" / "real", target_is_directory=True)
    (root / "data" / "up").symlink_to(tmp_path, target_is_directory=True)
    plan = plan_of(root)
    assert plan.flat == {"", "data"}
    assert plan.recursive == {"data/out", "data/real"}


def test_plan_auto_watched_is_under_a_recursive_root_only(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, ".git", "data/a", "src/__pycache__", "src/lib")
    assert plan.auto_watched("data/new")  # notify watches it by itself
    assert plan.auto_watched("data/a/b/new")
    assert plan.auto_watched("src/lib/new")
    assert not plan.auto_watched("data")  # a recursive root itself: its parent is flat
    assert not plan.auto_watched("new")
    assert not plan.auto_watched("src/new")


def test_plan_unplanned_folders(tmp_path: Path) -> None:
    """A folder made in a flat folder after planning is unplanned; one made in a
    recursively watched folder is notify's; a file is nothing."""
    plan = plan_of(tmp_path, ".git", "data")
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "data" / "new").mkdir()
    assert not plan.unplanned_folders(tmp_path, plan.flat)
    (tmp_path / "new").mkdir()
    assert plan.unplanned_folders(tmp_path, plan.flat)
    assert not plan.unplanned_folders(tmp_path, [])  # only the folders asked about


def test_plan_with_new_folders_watches_each_one_alone(tmp_path: Path) -> None:
    """Folders that appeared in a flat folder are added one by one (the recursive
    roots, which notify would walk again, stay as they are); what the plan held at or
    under them is replaced, and their ignored folders are left out."""
    plan = plan_of(tmp_path, ".git", "data/a", "models/old")
    assert plan.recursive == {"data", "models"}
    (tmp_path / "models" / "old").rmdir()
    (tmp_path / "models" / "v2" / "__pycache__").mkdir(parents=True)
    (tmp_path / "new" / "b" / "c").mkdir(parents=True)
    rules = IgnoreRules(tmp_path)
    grown = plan.with_new_folders(tmp_path, rules, ["models", "new"])
    assert grown.recursive == {"data"}
    assert grown.flat == {"", "models", "models/v2", "new", "new/b", "new/b/c"}
    assert grown.added == 5
    assert grown.listed["models/v2"] == {"__pycache__"}
    assert not grown.auto_watched("new/b/c/d")  # a folder made there appears again


def test_a_full_plan_folds_new_folders_back_into_recursive_roots(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, ".git", "new/b")
    grown = WatchPlan(frozenset(), frozenset({""})).with_new_folders(
        tmp_path, IgnoreRules(tmp_path), ["new"]
    )
    assert grown.flat == {"", "new", "new/b"}
    assert plan.recursive == {"new"}
    assert plan.added == 0


def test_plan_an_unreadable_folder_is_watched_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its contents are unknown, so it gets no recursive watch (which would fail on
    the first unreadable folder and leave the rest of that walk unwatched)."""
    (tmp_path / "locked" / "inner").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    real_scandir = os.scandir
    locked = str(tmp_path / "locked")

    def scandir(path: str) -> Iterator[os.DirEntry[str]]:
        if path == locked:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr("pivot.watch.plan.os.scandir", scandir)
    plan = plan_watches(tmp_path, IgnoreRules(tmp_path))
    assert plan.flat == {"", "locked"}
    assert plan.recursive == {"data"}
