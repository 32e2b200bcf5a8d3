"""The `pivot` script: the pipeline's loader is forked before the command line is
imported (pivot/launch/early.py), then the command runs: its common forms without click
(pivot/cli/direct.py), the others parsed by click (pivot/cli/main.py)."""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # (no stub: `signal` without its enums, ~1 ms)
import sys


def main() -> None:
    try:
        _standard_streams()
        from pivot.launch.early import fork_loader

        fork_loader(sys.argv[1:])
        from pivot.cli.direct import direct

        command = direct(sys.argv[1:])
        if command is None:
            from pivot.cli.main import parsed

            command = parsed
        from pivot.cli.ending import finish
    except KeyboardInterrupt:
        # Ctrl-C before the command line runs (it says this itself from then on): was a
        # traceback of whatever was being imported. Exiting kills what was forked.
        ignore_interrupts()
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    finish(command)


def ignore_interrupts() -> None:
    """The command is ending on a Ctrl-C: another one (a double press) would raise in
    what is said and undone on the way out, a traceback ending in KeyboardInterrupt.
    (`_signal`, imported with the script: importing `signal` here was such a place.)"""
    while True:
        try:
            _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
            break
        except KeyboardInterrupt:  # (one that came before the line above ran)
            continue
    from pivot.faults import reached

    reached("interrupted")


def _standard_streams() -> None:
    """Descriptors 0-2 closed by the caller (`pivot status >&-`): /dev/null in their place,
    before any file opened later takes one of their numbers (a stage's output would go
    where the display writes) and before anything prints (Python left the stream None)."""
    import codecs
    import io
    import os

    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: `fd` itself
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            stream = io.TextIOWrapper(io.FileIO(fd, "r" if fd == 0 else "w", closefd=False), line_buffering=fd == 2)
            setattr(sys, name, stream)
    for out in (sys.stdout, sys.stderr):
        # An ASCII stream (PYTHONIOENCODING=ascii; LC_ALL=C without UTF-8 mode) takes UTF-8,
        # as click made it: a stage's reason, a param or a file name beyond ASCII was a
        # traceback of `pivot status` and of the plain display.
        if isinstance(out, io.TextIOWrapper) and codecs.lookup(out.encoding).name == "ascii":
            out.reconfigure(encoding="utf-8", errors="replace")
