"""`pivot run STAGE [--foreground]`: one stage alone; with --foreground in this
terminal's own process, else as `pivot repro -s STAGE`."""

from __future__ import annotations

import click

from pivot.cli.options import complete_stages, display_option
from pivot.errors import UserError


@click.command()
@click.argument("stage", shell_complete=complete_stages)
@click.option("--foreground", is_flag=True,
              help="Run in this process, with this terminal (stdin, tty, breakpoint()).")
@click.option("-f", "--force", is_flag=True, help="Run even if the stage is up to date.")
@display_option
def run(stage: str, foreground: bool, force: bool, display: str, as_json: bool) -> int:
    """Run STAGE alone (not its upstream), like `pivot repro -s STAGE`.

    With --foreground, in the terminal's own process, for debugging: stdin and the tty
    are the stage's, so `breakpoint()` and `input()` work. Its outputs are committed like
    any run (cache, lock, run cache); a missing dependency is an error. While a Pivot
    engine runs in the project, it is asked for the stage; --foreground is refused then.
    """
    if not foreground:
        from pivot.cli.once import run_once
        from pivot.pipeline.select import Selection

        return run_once(
            (stage,), force=force, jobs=1, keep_going=False, display="json" if as_json else display,
            selection=Selection.SINGLE,
        )
    from pivot.cli.common import check_stage_names
    from pivot.pipeline.project import find_root, pivot_dir
    from pivot.runtime.job import StageJob, Verdict, verdict
    from pivot.runtime.loader import build_manifest
    from pivot.runtime.worker import run_stage
    from pivot.state.outputs import ProjectState
    from pivot.state.plan import dep_producers, prepare
    from pivot.transport.rundir import RunDir

    root = find_root()
    pivot_dir(root)
    guard = RunDir(root)
    guard.lock("run a stage in the foreground")
    state = ProjectState.open(root)
    try:
        manifest = build_manifest(root)  # imports pipeline.py here: this is the stage's process
        check_stage_names([stage], [s.name for s in manifest.stages])
        spec = manifest.by_name[stage]
        prepared = prepare(state, spec, force=force, producers=dep_producers(manifest))
        reason = prepared.reason
        for note in prepared.notes:
            click.echo(f"note: {note}", err=True)
        match verdict(prepared):
            case Verdict.MISSING_DEPS:
                raise UserError(
                    f"stage {stage!r}: dependency missing: {', '.join(prepared.decision.missing_deps)}; "
                    "run its upstream first (`pivot repro`)"
                )
            case Verdict.FROZEN_MISSING:
                raise UserError(f"stage {stage!r}: {reason.message}")
            case Verdict.RESTORED:
                click.echo(f"{stage}: {reason.message}")
                return 0
            case Verdict.SKIPPED:
                click.echo(f"{stage}: up to date (use -f to run it anyway)")
                return 0
        click.echo(f"{stage}: running in the foreground ({reason.message})", err=True)
        result = run_stage(StageJob.for_stage(root, spec, prepared, foreground=True))
    finally:
        state.close()
        guard.release()
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if result.status != "ran":
        click.echo(f"{stage}: FAILED ({result.reason})", err=True)
        if result.error:
            click.echo(result.error.rstrip(), err=True)
        return 1
    click.echo(f"{stage}: ran in {result.duration_s:.2f}s; outputs committed")
    return 0
