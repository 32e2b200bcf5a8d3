"""[tool.pivot] in pyproject.toml (pivot/pipeline/settings.py): checked at every load,
read leniently where it takes effect."""

from __future__ import annotations

from pathlib import Path

import pytest

from pivot.errors import PipelineError
from pivot.pipeline.settings import check_settings, setting
from pivot.runtime.command import CommandFailed, run_command


@pytest.mark.parametrize("text,said", [
    ('[tool.pivot]\nwarm = "no"\n', "warm must be bool (true or false), got 'no'"),
    ("[tool.pivot\n", "pyproject.toml: not valid TOML"),
    ("[tool.pivot]\nwarn = false\n", "has no setting 'warn' (did you mean 'warm'?)"),
    ("[tool]\npivot = 1\n", "[tool.pivot] must be a table"),
])
def test_a_bad_setting_is_a_pipeline_error_naming_it(tmp_path: Path, text: str, said: str) -> None:
    (tmp_path / "pyproject.toml").write_text(text)
    with pytest.raises(PipelineError) as caught:
        check_settings(tmp_path)
    assert said in str(caught.value)
    assert setting(tmp_path, "warm", True) is True  # where it takes effect: the default


def test_a_good_setting_is_read_and_none_is_fine(tmp_path: Path) -> None:
    check_settings(tmp_path)  # no pyproject.toml
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["pivot"]\n')
    check_settings(tmp_path)
    assert setting(tmp_path, "warm", True) is True
    (tmp_path / "pyproject.toml").write_text("[tool.pivot]\nwarm = false\n")
    check_settings(tmp_path)
    assert setting(tmp_path, "warm", True) is False


def test_a_shell_that_is_not_there_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELL", "/nonexistent/sh")
    with pytest.raises(CommandFailed) as caught:
        run_command("s", "echo hi", {}, tmp_path, None)
    assert "could not start the shell /nonexistent/sh (from $SHELL)" in str(caught.value)
