"""A value as `${...}` writes it into a command: a map as command options, the way DVC
unpacks it (bools as flags, lists as nargs, nested keys dotted, strings shell-quoted)."""

from __future__ import annotations

from typing import Any

import pytest

from pivot.runtime.command import cmd_text, interpolate, shell_argv


@pytest.mark.parametrize(("value", "text"), [
    ({"lr": 0.1, "epochs": 3, "verbose": True, "quiet": False}, "--lr 0.1 --epochs 3 --verbose"),
    ({"layers": [1, 2], "names": ["a b", "c"]}, "--layers 1 2 --names 'a b' c"),
    ({"opt": {"name": "adam", "beta": {"one": 0.9}}}, "--opt.name adam --opt.beta.one 0.9"),
    ({"none": None, "empty": [], "nothing": {}}, "--none None"),
    ({"q": "it's"}, "--q 'it'\"'\"'s'"),
    (True, "true"), (1.5, "1.5"), ("a b", "a b"), ([1, 2], "1 2"),
])  # fmt: skip
def test_a_map_is_written_as_dvc_writes_it_into_a_command(value: Any, text: str) -> None:
    assert cmd_text(value) == text


def test_a_nested_list_cannot_be_options() -> None:
    with pytest.raises(ValueError, match="nested list in 'grid'"):
        cmd_text({"grid": [[1, 2]]})


def test_an_escaped_placeholder_is_a_literal_dollar_brace() -> None:
    assert interpolate("s", "echo \\${HOME} ${train}", {"train": {"lr": 1}}) == "echo ${HOME} --lr 1"


@pytest.mark.parametrize(("shell", "argv"), [
    ("/bin/bash", ["/bin/bash", "--noprofile", "--norc", "-c", "echo"]),
    ("/usr/bin/zsh", ["/usr/bin/zsh", "--no-rcs", "-c", "echo"]),
    ("", ["/bin/sh", "-c", "echo"]),
])  # fmt: skip
def test_a_command_line_runs_with_the_users_shell_as_dvc_runs_it(
    monkeypatch: pytest.MonkeyPatch, shell: str, argv: list[str],
) -> None:
    monkeypatch.setenv("SHELL", shell)
    assert shell_argv("echo") == argv
