"""How every command ends: its exit code, or a Pivot error said in one line.

Without click, so that the command lines pivot/cli/direct.py runs end the same way as
those click parses (pivot/cli/main.py adds click's own errors). Exit codes: 0 success,
1 a stage failed or the engine broke, 2 usage or pipeline error, 130 interrupted.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from typing import NoReturn, TextIO

from pivot.errors import (
    InfraError,
    PipelineError,
    PivotError,
    Unreachable,
    UserError,
    describe_os_error,
)

__all__ = ["finish", "report", "say", "write_line"]


_ANSI = re.compile(r"\033\[[;?0-9]*[a-zA-Z]")  # (click's pattern)


def say(text: str) -> None:
    """A line on standard error (as `click.echo(text, err=True)`)."""
    write_line(sys.stderr, text)


def write_line(stream: TextIO, text: str) -> None:
    """`text` and a newline on `stream`, flushed; as click.echo writes it: without
    terminal escape sequences when the stream is no terminal (a name or message holding
    them is shown, not obeyed, in a log)."""
    if "\033" in text and not _is_terminal(stream):
        text = _ANSI.sub("", text)
    stream.write(f"{text}\n")
    stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or minimal stream
        return False


def report(exc: PivotError) -> int:
    """Print a Pivot error the way a user should see it; return the exit code."""
    say(f"error: {exc}")
    if isinstance(exc, PipelineError) and exc.detail:
        say(exc.detail)
    if isinstance(exc, UserError):
        return 2
    if isinstance(exc, Unreachable):
        return 1
    if isinstance(exc, InfraError):
        say("this looks like a Pivot problem; run again with -v for details")
    return 1


def finish(command: Callable[[], object]) -> NoReturn:
    """Run the parsed `command` and exit with its code (an int; anything else is 0)."""
    try:
        rc = command()
    except KeyboardInterrupt:
        from pivot.cli.entry import ignore_interrupts

        ignore_interrupts()
        say("\ninterrupted")  # (the newline ends the terminal's ^C, as click does)
        sys.exit(130)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours; silence the flush.
        sys.stderr.close()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except PivotError as exc:
        sys.exit(report(exc))
    except OSError as exc:  # a full disk, a read-only mount: said, never a traceback
        say(f"error: {describe_os_error(exc)}")
        sys.exit(1)
    _exit_now(rc if isinstance(rc, int) else 0)


def _exit_now(rc: int) -> NoReturn:
    """Exit without interpreter teardown once output is flushed: every command has closed
    what it opened (sockets, processes, files) by now, and tearing down the modules a run
    imported costs ~20 ms of every command for nothing. A loader the `pivot` script forked
    for a command that did not take it (an engine found after all) goes first: no exit
    handler runs after this."""
    from pivot.launch.early import discard

    discard()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        rc = rc or 1
    logging.shutdown()
    os._exit(rc)
