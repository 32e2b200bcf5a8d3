"""The command lines `pivot repro` and `pivot status` run without click
(pivot/cli/direct.py) mean what click makes of them; every other line is left to click."""

from __future__ import annotations

import random

import click
import pytest

from pivot.cli.direct import FORMS, direct, parse
from pivot.cli.repro_cmd import repro
from pivot.cli.status_cmd import status

COMMANDS = {"repro": repro, "status": status}
# Every form direct.py takes, and neighbours of each that it must leave to click.
TOKENS = [
    "s1", "fit@a", "x-y", "", "-f", "--force", "--keep-going", "--json", "-j", "-j2", "-j0",
    "-j=2", "-j+2", "-j²", "--jobs", "--jobs=3", "--jobs=", "--jobs=x", "2", "0", "007", "+2",
    " 2", "--display", "--display=plain", "--display=", "--display=bogus", "plain", "tui",
    "json", "auto", "PLAIN", "-s", "--downstream", "--glob", "-n", "-w", "--", "-", "-fj2",
    "-h", "--help", "--key", "--broker", "--debounce", "--forc", "--keep", "-F", "--explain",
    "--check", "-q", "--quiet", "-qq", "--explain=1", "-v",
]


def clicks(command: str, args: list[str]) -> dict[str, object] | None:
    """What click's `pivot COMMAND` takes `args` for: the values of its parameters, or
    None when it refuses them (or answers them itself, as --help)."""
    try:
        ctx = COMMANDS[command].make_context(command, list(args))
    except (click.ClickException, click.exceptions.Exit):
        return None
    direct_names = set(FORMS[command].defaults)
    given = {
        name for name in ctx.params if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    }
    assert given <= direct_names, f"{args}: {given - direct_names} given, which direct.py does not take"
    return {name: ctx.params[name] for name in direct_names}


@pytest.mark.parametrize("command", sorted(FORMS))
def test_the_defaults_are_clicks(command: str) -> None:
    assert parse(FORMS[command], []) == clicks(command, [])


@pytest.mark.parametrize(("command", "args"), [
    ("repro", ["--display", "plain"]),
    ("repro", ["--display=json"]),
    ("repro", ["-j", "2", "--display", "plain"]),
    ("repro", ["-j2"]),
    ("repro", ["--jobs", "3"]),
    ("repro", ["--jobs=3", "fit@a"]),
    ("repro", ["s1", "-f", "s2"]),
    ("repro", ["--force", "--keep-going", "--json"]),
    ("repro", ["-j", "1", "-j", "4"]),  # (the last one counts, as in click)
    ("repro", ["--display", "tui", "--display", "auto"]),
    ("status", ["--json"]),
    ("status", ["s1", "--explain", "s2"]),
    ("status", ["-q", "--check"]),
    ("status", ["--quiet"]),
])
def test_each_direct_form_means_what_click_makes_of_it(command: str, args: list[str]) -> None:
    values = parse(FORMS[command], args)
    assert values is not None, args
    assert values == clicks(command, args)


@pytest.mark.parametrize(("command", "args"), [
    *[("repro", args) for args in (
        ["-j", "0"], ["-j"], ["--jobs=x"], ["-j=2"], ["--display", "bogus"], ["--display"],
        ["-s", "s1"], ["--downstream", "s1"], ["--glob", "s*"], ["-n"], ["-w"], ["--", "s1"],
        ["-fj2"], ["--help"], ["-h"], ["--broker", "tcp://127.0.0.1:1"], ["--forc"], ["--explain"],
    )],
    *[("status", args) for args in (
        ["-qq"], ["--explain=1"], ["-f"], ["--help"], ["--key", "k"], ["-j", "2"], ["--", "s1"],
    )],
])
def test_other_lines_are_left_to_click(command: str, args: list[str]) -> None:
    assert parse(FORMS[command], args) is None
    assert direct([command, *args]) is None


@pytest.mark.parametrize("command", sorted(FORMS))
def test_any_line_of_these_tokens_taken_directly_is_taken_alike_by_click(command: str) -> None:
    """3,000 lines of up to 6 tokens: where direct.py takes one, click takes it and gives
    the same values (click may take more: those go to click)."""
    rng = random.Random(14)
    taken = 0
    for _ in range(3000):
        args = [rng.choice(TOKENS) for _ in range(rng.randint(0, 6))]
        values = parse(FORMS[command], args)
        if values is None:
            continue
        taken += 1
        assert values == clicks(command, args), args
    assert taken > 100  # (the direct forms come up often enough to be compared)


def test_only_repro_and_status_are_run_directly() -> None:
    assert direct(["repro", "--display", "plain"]) is not None
    assert direct(["status"]) is not None
    for argv in (["list"], ["-v", "repro"], ["up"], [], ["repro", "-n"], ["--version"]):
        assert direct(argv) is None, argv
