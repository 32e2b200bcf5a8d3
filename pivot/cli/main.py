"""The `pivot` command line. One thin module per command; errors end here.

Exit codes: 0 success, 1 a stage failed or the engine broke, 2 usage or pipeline error,
130 interrupted.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from pivot.cli import (
    attach_cmd,
    checkout_cmd,
    dag_cmd,
    gc_cmd,
    init_cmd,
    list_cmd,
    logs_cmd,
    metrics_cmd,
    params_cmd,
    repro_cmd,
    run_cmd,
    status_cmd,
    up_cmd,
)
from pivot.errors import InfraError, PipelineError, PivotError, UserError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Show Pivot's own log records on stderr.")
@click.version_option(package_name="pivot", prog_name="pivot")
def cli(verbose: bool) -> None:
    """Pivot: pipelines that re-run only what changed.

    Declare stages in pipeline.py with @stage(deps=..., outs=...), then run
    `pivot up` (live: re-runs what each saved file affects) or `pivot repro` (once).
    Pivot runs stale stages, skips up-to-date ones and says why.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


cli.add_command(init_cmd.init)
cli.add_command(list_cmd.list_stages)
cli.add_command(repro_cmd.repro)
cli.add_command(status_cmd.status)
cli.add_command(dag_cmd.dag)
cli.add_command(params_cmd.params)
cli.add_command(metrics_cmd.metrics)
cli.add_command(checkout_cmd.checkout)
cli.add_command(gc_cmd.gc)
cli.add_command(up_cmd.up)
cli.add_command(attach_cmd.attach)
cli.add_command(logs_cmd.logs)
cli.add_command(run_cmd.run)


def report(exc: PivotError) -> int:
    """Print a Pivot error the way a user should see it; return the exit code."""
    click.echo(f"error: {exc}", err=True)
    if isinstance(exc, PipelineError) and exc.detail:
        click.echo(exc.detail, err=True)
    if isinstance(exc, UserError):
        return 2
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
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except PivotError as exc:
        sys.exit(report(exc))
    _exit_now(rc if isinstance(rc, int) else 0)


def _exit_now(rc: int) -> None:
    """Exit without interpreter teardown once output is flushed: every command has closed
    what it opened (sockets, processes, files) by now, and tearing down the modules a run
    imported costs ~20 ms of every command for nothing."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        rc = rc or 1
    logging.shutdown()
    os._exit(rc)
