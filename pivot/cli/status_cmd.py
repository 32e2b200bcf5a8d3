"""`pivot status`: which stages are stale, and why."""

from __future__ import annotations

from pathlib import Path

import click

from pivot.cli.options import broker_options, stages_argument


@click.command()
@stages_argument
@click.option("--explain", is_flag=True, help="List every reason of each stage, with details.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--check", is_flag=True,
              help="Exit 1 when a stage is stale, 0 when everything is up to date (a CI gate).")
@click.option("-q", "--quiet", is_flag=True, help="--check printing nothing (as `dvc status -q`).")
@broker_options
def status(
    stages: tuple[str, ...], explain: bool, as_json: bool, check: bool, quiet: bool, broker: str | None,
    key: Path | None, broker_key: Path | None,
) -> int:
    """Show which stages `pivot repro` would run, with the reasons.

    Exit code 0; with --check or -q, 1 when a stage is stale; 2 for a usage or pipeline
    error.

    STAGES limits the report to those stages and their upstream. A stage downstream of a
    stale one is stale too ("upstream stale"); it is skipped at run time if its upstream
    writes the same bytes again. While `pivot up` runs (or with --broker), what the
    engine is doing is shown too: stages running or queued in its wave, stages that
    failed there, and stages waiting for a pool.
    """
    from pivot.cli.status_report import show_status

    return show_status(
        stages, explain=explain, as_json=as_json, check=check, quiet=quiet, broker=broker, key=key,
        broker_key=broker_key,
    )
