"""The marked block of outputs in the project's .gitignore (pivot/pipeline/gitignore.py)."""

from __future__ import annotations

from pathlib import Path

from pivot.pipeline.gitignore import BEGIN, END, keep_outputs_ignored


def test_the_block_is_added_after_the_users_lines_and_rewritten_alone(tmp_path: Path) -> None:
    ignore = tmp_path / ".gitignore"
    ignore.write_text("*.pyc\n# my notes\n")
    assert keep_outputs_ignored(tmp_path, ["model/", "data/clean.csv"])
    assert ignore.read_text() == f"*.pyc\n# my notes\n\n{BEGIN}\n/data/clean.csv\n/model/\n{END}\n"
    ignore.write_text(ignore.read_text() + "venv/\n")  # the user adds a line after it
    assert keep_outputs_ignored(tmp_path, ["data/clean.csv"])
    assert ignore.read_text() == f"*.pyc\n# my notes\n\n{BEGIN}\n/data/clean.csv\n{END}\nvenv/\n"


def test_nothing_is_written_when_nothing_changes(tmp_path: Path) -> None:
    assert not keep_outputs_ignored(tmp_path, [])
    assert not (tmp_path / ".gitignore").exists()  # no outputs: no file made for them
    assert keep_outputs_ignored(tmp_path, ["a.txt"])
    before = (tmp_path / ".gitignore").stat().st_mtime_ns
    assert not keep_outputs_ignored(tmp_path, ["a.txt", "a.txt"])
    assert (tmp_path / ".gitignore").stat().st_mtime_ns == before


def test_a_block_whose_end_was_deleted_is_closed_again(tmp_path: Path) -> None:
    ignore = tmp_path / ".gitignore"
    ignore.write_text(f"keep\n{BEGIN}\n/old.txt\n")
    assert keep_outputs_ignored(tmp_path, ["new.txt"])
    assert ignore.read_text() == f"keep\n{BEGIN}\n/new.txt\n{END}\n"


def test_an_output_whose_name_looks_like_a_pattern_ignores_that_file_and_no_other(tmp_path: Path) -> None:
    """Checked by git itself: `*`, `?`, `[`, `\\` and trailing spaces are escaped."""
    import subprocess

    outs = ["out [1]*.txt", "a\\b?.csv", "sp  ", "d [x]/"]
    others = ["out 1x.txt", "out [1]x.txt", "a\\bX.csv", "sp", "d x/f"]
    for name in [*outs, *others]:
        path = tmp_path / name.rstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir()
            (path / "f").write_text("x")
        else:
            path.write_text("x")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert keep_outputs_ignored(tmp_path, outs)

    def ignored(name: str) -> bool:
        found = subprocess.run(["git", "-C", str(tmp_path), "check-ignore", "-q", "--no-index", name])
        assert found.returncode in (0, 1), found
        return found.returncode == 0

    assert [n for n in outs if not ignored(n.rstrip("/"))] == []
    assert [n for n in others if ignored(n)] == []


def test_one_output_that_needs_escaping_among_plain_ones_is_escaped(tmp_path: Path) -> None:
    """The block's lines are written plain only when no output needs escaping."""
    ignore = tmp_path / ".gitignore"
    for odd, line in (("sp  ", "/sp\\ \\ "), ("d /", "/d\\ /"), ("a*.txt", "/a\\*.txt"), ("b[1]", "/b\\[1]")):
        assert keep_outputs_ignored(tmp_path, ["x/plain.txt", odd, "model/"])
        lines = sorted([(odd, line), ("model/", "/model/"), ("x/plain.txt", "/x/plain.txt")])
        assert ignore.read_text() == "\n".join([BEGIN, *(text for _, text in lines), END]) + "\n"
