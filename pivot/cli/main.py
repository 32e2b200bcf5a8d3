"""The `pivot` command line. One thin module per command; errors end in
pivot/cli/ending.py (exit codes there).
"""

from __future__ import annotations

import logging
import sys

import click

from pivot.cli.ending import finish, say
from pivot.cli.entry import ignore_interrupts
from pivot.launch.stderrlog import log_to_stderr

__all__ = ["cli", "main", "parsed"]

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


def main() -> None:
    finish(parsed)


def parsed() -> object:
    """The command line parsed by click and run; click's errors said in one line."""
    try:
        return cli.main(standalone_mode=False)
    except click.exceptions.Abort:  # (a Ctrl-C: click has ended the terminal's ^C line)
        ignore_interrupts()
        say("interrupted")
        sys.exit(130)
    except click.UsageError as exc:
        # One line, as every error (docs/cli.md), naming where the help is.
        where = f"`{exc.ctx.command_path} --help`" if exc.ctx is not None else "`pivot --help`"
        message = exc.format_message().replace("\n", " ")
        say(f"error: {message} (see {where})")
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        say(f"error: {exc.format_message()}")
        sys.exit(exc.exit_code)
