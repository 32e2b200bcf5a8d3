"""`pivot repro`: run the stale stages once, through the same broker and pool as `up`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pivot.cli.options import (
    LIVE_PARAMS,
    broker_options,
    display_option,
    live_options,
    stages_argument,
)
from pivot.display.strictjson import dumps
from pivot.launch.cpus import MAX_JOBS
from pivot.pipeline.project import find_root, pivot_dir

if TYPE_CHECKING:
    from pivot.pipeline.select import Selection


@click.command()
@stages_argument
@click.option("-f", "--force", is_flag=True, help="Run the stages even if they are up to date.")
@click.option("-j", "--jobs", type=click.IntRange(min=1, max=MAX_JOBS), default=None,
              help="Stages to run at once [default: usable CPUs].")
@click.option("--keep-going", is_flag=True,
              help="After a failure, still run every stage not downstream of it.")
@click.option("-s", "--single-item", is_flag=True,
              help="Run only STAGES, not their upstream (even if it is stale).")
@click.option("--downstream", is_flag=True,
              help="Run STAGES and every stage after them (and whatever stale upstream "
              "those need: nothing runs on stale inputs).")
@click.option("--glob", "glob", is_flag=True,
              help="STAGES are shell patterns: 'fit@*' runs every variant of fit.")
@click.option("-n", "--dry-run", is_flag=True,
              help="Print what would run and why; run nothing, change nothing.")
@click.option("-w", "--watch", is_flag=True,
              help="Stay live afterwards, like `pivot up` (which see); the options below "
              "apply only with it.")
@live_options
@broker_options
@display_option
@click.pass_context
def repro(
    ctx: click.Context, stages: tuple[str, ...], force: bool, jobs: int | None, keep_going: bool,
    single_item: bool, downstream: bool, glob: bool, dry_run: bool, watch: bool, debounce_ms: int, poll: bool, restart: bool, grace_s: float,
    broker: str | None, key: Path | None, broker_key: Path | None, display: str, as_json: bool,
) -> int:
    """Run STAGES (default: all) and their upstream, skipping what is up to date.

    A stage name may be a variant group: `pivot repro fit` runs `fit@linear` and
    `fit@quadratic`. -s runs STAGES alone, --downstream STAGES and what follows them.

    Exit code 0 when every stage ran or was up to date, 1 when a stage failed or the
    worker pool was lost, 2 for a usage or pipeline error, 130 after Ctrl-C.

    With --watch this is `pivot up`: it stays live and re-runs what each change affects.
    While an engine runs for the project (`pivot up`), or with --broker, the engine is
    asked for the run and its events are shown; exit codes are the same.
    """
    from pivot.pipeline.select import Selection

    if single_item and downstream:
        raise click.UsageError("-s/--single-item and --downstream cannot be combined")
    if (single_item or downstream) and not stages:
        raise click.UsageError(f"{'-s/--single-item' if single_item else '--downstream'} needs STAGES")
    selection = Selection.SINGLE if single_item else Selection.DOWNSTREAM if downstream else Selection.UPSTREAM
    if watch and (single_item or downstream or glob):
        raise click.UsageError("-s, --downstream and --glob apply to a one-shot run, not with --watch")
    if not watch:
        given = [
            f"--{name.removesuffix('_ms').removesuffix('_s')}" for name in LIVE_PARAMS
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        ]
        if given:
            raise click.UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only with --watch")
    elif dry_run:
        raise click.UsageError("--dry-run and --watch cannot be combined")
    else:
        from pivot.cli.launch import UpOptions, start_live

        root = find_root()
        pivot_dir(root)
        opts = UpOptions(stages, force, jobs, keep_going, debounce_ms, poll, restart, grace_s,
                         "json" if as_json else display)
        return start_live(root, opts)
    if dry_run:
        return _dry_run(find_root(), stages, force, as_json or display == "json", selection, glob)
    from pivot.cli.once import run_once

    return run_once(
        stages, force=force, jobs=jobs, keep_going=keep_going, display="json" if as_json else display,
        selection=selection, glob=glob, broker=broker, key=key, broker_key=broker_key,
    )


def _dry_run(
    root: Path, stages: tuple[str, ...], force: bool, as_json: bool, selection: Selection, glob: bool,
) -> int:
    """The plan `repro` would follow, from the same decisions, without an engine."""

    from pivot.cli.assess import assess

    result = assess(root, stages, force=force, selection=selection, glob=glob)
    for warning in result.manifest.warnings:
        click.echo(f"warning: {warning}", err=True)
    plan: dict[str, dict[str, Any]] = {}
    for name, row in result.stages.items():
        action = "skip" if not row.stale else "fail" if row.fails else "restore" if row.restorable else "run"
        plan[name] = {"action": action, **row.to_json()}
    if as_json:
        click.echo(dumps({"stages": plan}, indent=2))
        return 0
    for name, entry in plan.items():
        if entry["action"] == "skip":
            click.echo(f"{name}: skip (up to date)")
            continue
        verb = {"restore": "would restore from run cache", "fail": "would fail"}.get(entry["action"], "would run")
        why = "; ".join(r["message"] for r in entry["reasons"])
        click.echo(f"{name}: {verb} ({why})")
    acting = [n for n, entry in plan.items() if entry["action"] != "skip"]
    click.echo(f"{len(acting)} of {len(plan)} stages would run or be restored" if acting else "nothing to do")
    return 0


