"""`pivot status`: which stages are stale, and why."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("stages", nargs=-1)
@click.option("--explain", is_flag=True, help="List every reason of each stage, with details.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def status(stages: tuple[str, ...], explain: bool, as_json: bool) -> None:
    """Show which stages `pivot repro` would run, with the reasons.

    STAGES limits the report to those stages and their upstream. A stage downstream of a
    stale one is stale too ("upstream stale"); it is skipped at run time if its upstream
    writes the same bytes again.
    """
    from pivot.cli.assess import assess
    from pivot.pipeline.project import find_root

    result = assess(find_root(), stages, explain=explain)
    if as_json:
        rows = {name: row.to_json() for name, row in result.stages.items()}
        click.echo(json.dumps({"stages": rows}, indent=2))
        return
    for warning in result.manifest.warnings:
        click.echo(f"warning: {warning}", err=True)
    for name, row in result.stages.items():
        if not row.stale:
            click.echo(f"{name}: up to date")
            continue
        restore = " [restorable from run cache]" if row.restorable else ""
        if not explain:
            click.echo(f"{name}: stale ({row.reasons[0].message}){restore}")
            continue
        click.echo(f"{name}: stale{restore}")
        for reason in row.reasons:
            click.echo(f"  - {reason.code}: {reason.message}")
            for key, value in reason.details.items():
                if key == "changes":
                    for param, (old, new) in value.items():
                        click.echo(f"      {param}: {old!r} -> {new!r}")
                elif value:
                    click.echo(f"      {key}: {_show(value)}")
    stale = [n for n, row in result.stages.items() if row.stale]
    total = len(result.stages)
    click.echo(f"{len(stale)} of {total} stages stale" if stale else "everything is up to date")


def _show(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_show(v)}" for k, v in value.items())
    return str(value)
