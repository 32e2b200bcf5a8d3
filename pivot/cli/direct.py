"""The common command lines of `pivot repro` and `pivot status`, run without click.

click, with what it imports (gettext, locale, uuid, platform), was 10-15 ms of a no-op
`pivot repro` (~90 ms at 10 stages here), all of it on the run's critical path: the
loader's answer waits for the command's imports, not the other way round
(docs/benchmarks.md, "twenty-sixth session"). A command line made only of the forms
below is parsed here into the values click would give (tests/unit/test_direct.py holds
the two side by side); anything else, such as another option, a value click refuses,
`--help` or `--`, is click's to parse and to answer.

    pivot repro [STAGE ...] [-f|--force] [--keep-going] [-j N|-jN|--jobs N|--jobs=N]
                [--display auto|tui|plain|json|--display=...] [--json]
    pivot status [STAGE ...] [--explain] [--json] [--check] [-q|--quiet]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["FORMS", "Form", "direct", "parse"]


class Form:
    """What a command's direct lines may hold: flags, options taking a value (each
    option's parameter name and a check of its value, giving the value or None), and
    the parameters' values when not given (click's defaults)."""

    __slots__ = ("defaults", "flags", "valued")

    def __init__(
        self, flags: dict[str, str], valued: dict[str, tuple[str, Callable[[str], Any]]], defaults: dict[str, Any],
    ) -> None:
        self.flags, self.valued, self.defaults = flags, valued, defaults


def _jobs(value: str) -> int | None:
    from pivot.launch.cpus import MAX_JOBS

    return int(value) if value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_JOBS else None


def _display(value: str) -> str | None:
    return value if value in ("auto", "tui", "plain", "json") else None


FORMS = {
    "repro": Form(
        {"-f": "force", "--force": "force", "--keep-going": "keep_going", "--json": "as_json"},
        {"-j": ("jobs", _jobs), "--jobs": ("jobs", _jobs), "--display": ("display", _display)},
        {"stages": (), "force": False, "keep_going": False, "as_json": False, "jobs": None, "display": "auto"},
    ),
    "status": Form(
        {"--explain": "explain", "--json": "as_json", "--check": "check", "-q": "quiet", "--quiet": "quiet"},
        {},
        {"stages": (), "explain": False, "as_json": False, "check": False, "quiet": False},
    ),
}


def direct(argv: list[str]) -> Callable[[], object] | None:
    """The command `argv` (the `pivot` script's arguments) asks for, when it is one run
    here without click; None when click is to parse it."""
    if not argv or argv[0] not in FORMS or "_PIVOT_COMPLETE" in os.environ:  # (click's completion)
        return None
    values = parse(FORMS[argv[0]], argv[1:])
    if values is None:
        return None
    return lambda: _run(argv[0], values)


def parse(form: Form, args: list[str]) -> dict[str, Any] | None:
    """`args` (those after the command's name) as click would parse them: the values of
    `form`'s parameters (STAGES as `stages`), or None when they are not all of its forms."""
    stages: list[str] = []
    given = dict(form.defaults)
    at = 0
    while at < len(args):
        arg = args[at]
        at += 1
        if not arg.startswith("-"):
            stages.append(arg)  # (click's STAGES: anywhere on the line)
            continue
        if arg in form.flags:
            given[form.flags[arg]] = True
            continue
        option, value = _option(form, arg)
        if option is None:
            return None
        if value is None:  # the value is the next argument, whatever it looks like
            if at == len(args):
                return None
            value = args[at]
            at += 1
        name, check = form.valued[option]
        given[name] = check(value)
        if given[name] is None:
            return None
    given["stages"] = tuple(stages)
    return given


def _option(form: Form, arg: str) -> tuple[str | None, str | None]:
    """The option taking a value that `arg` is, with the value when `arg` holds it
    (`--jobs=2`; `-j2`, where `-j=2` is click's to refuse: "=2" is no number)."""
    if arg in form.valued:
        return arg, None
    name, equals, value = arg.partition("=")
    if equals and name.startswith("--") and name in form.valued:
        return name, value
    if arg[:2] in form.valued and not arg.startswith("--"):
        return arg[:2], arg[2:]
    return None, None


def _run(command: str, values: dict[str, Any]) -> int:
    import logging

    from pivot.launch.stderrlog import log_to_stderr

    log_to_stderr(logging.WARNING)  # (as `pivot` without -v)
    if command == "status":
        from pivot.cli.status_report import show_status

        return show_status(**values)
    from pivot.cli.once import run_once
    from pivot.pipeline.select import Selection

    display = values.pop("display")
    display = "json" if values.pop("as_json") else display
    return run_once(values.pop("stages"), display=display, selection=Selection.UPSTREAM, **values)
