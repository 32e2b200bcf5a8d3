"""The `pivot` command line. One thin module per command; errors end here.

Exit codes: 0 success, 1 a stage failed or the engine broke, 2 usage or pipeline error,
130 interrupted.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from pivot.errors import (
    InfraError,
    PipelineError,
    PivotError,
    Unreachable,
    UserError,
    describe_os_error,
)
from pivot.launch.stderrlog import log_to_stderr

__all__ = ["cli", "main"]

# name -> (module under pivot.cli, attribute): imported only when that command runs, so
# `pivot status` does not pay for `pivot up`'s imports.
COMMANDS = {
    "init": ("init_cmd", "init"),
    "import-dvc": ("import_dvc_cmd", "import_dvc"),
    "list": ("list_cmd", "list_stages"),
    "repro": ("repro_cmd", "repro"),
    "status": ("status_cmd", "status"),
    "dag": ("dag_cmd", "dag"),
    "params": ("params_cmd", "params"),
    "metrics": ("metrics_cmd", "metrics"),
    "checkout": ("checkout_cmd", "checkout"),
    "gc": ("gc_cmd", "gc"),
    "up": ("up_cmd", "up"),
    "down": ("down_cmd", "down"),
    "attach": ("attach_cmd", "attach"),
    "ps": ("ps_cmd", "ps"),
    "logs": ("logs_cmd", "logs"),
    "run": ("run_cmd", "run"),
    "broker": ("broker_cmd", "broker"),
    "workers": ("workers_cmd", "workers"),
    "watcher": ("watcher_cmd", "watcher"),
    "ping": ("ping_cmd", "ping"),
    "keys": ("keys_cmd", "keys"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        import importlib

        module, attr = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(f"pivot.cli.{module}"), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Show Pivot's own log records on stderr.")
@click.version_option(package_name="pivot", prog_name="pivot")
def cli(verbose: bool) -> None:
    """Pivot: pipelines that re-run only what changed.

    Declare stages in pipeline.py with @stage(deps=..., outs=...), then run
    `pivot up` (live: re-runs what each saved file affects) or `pivot repro` (once).
    Pivot runs stale stages, skips up-to-date ones and says why.
    """
    if verbose:
        log_to_stderr(logging.INFO, "%(asctime)s %(name)s %(levelname)s %(message)s")
    else:
        log_to_stderr(logging.WARNING)


def report(exc: PivotError) -> int:
    """Print a Pivot error the way a user should see it; return the exit code."""
    click.echo(f"error: {exc}", err=True)
    if isinstance(exc, PipelineError) and exc.detail:
        click.echo(exc.detail, err=True)
    if isinstance(exc, UserError):
        return 2
    if isinstance(exc, Unreachable):
        return 1
    if isinstance(exc, InfraError):
        click.echo("this looks like a Pivot problem; run again with -v for details", err=True)
    return 1


def main() -> None:
    try:
        rc = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours; silence the flush.
        sys.stderr.close()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except click.UsageError as exc:
        # One line, as every error (docs/cli.md), naming where the help is.
        where = f"`{exc.ctx.command_path} --help`" if exc.ctx is not None else "`pivot --help`"
        message = exc.format_message().replace("\n", " ")
        click.echo(f"error: {message} (see {where})", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except PivotError as exc:
        sys.exit(report(exc))
    except OSError as exc:  # a full disk, a read-only mount: said, never a traceback
        click.echo(f"error: {describe_os_error(exc)}", err=True)
        sys.exit(1)
    _exit_now(rc if isinstance(rc, int) else 0)


def _exit_now(rc: int) -> None:
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
