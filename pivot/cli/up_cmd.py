"""`pivot up`: run what is stale, then stay live and re-run what each change affects."""

from __future__ import annotations

import click

from pivot.cli.options import display_option, live_options, stages_argument
from pivot.launch.cpus import MAX_JOBS
from pivot.pipeline.project import find_root, pivot_dir


@click.command()
@stages_argument
@click.option("-f", "--force", is_flag=True, help="Run every stage in the first wave, even if up to date.")
@click.option("-j", "--jobs", type=click.IntRange(min=1, max=MAX_JOBS), default=None,
              help="Stages to run at once [default: usable CPUs].")
@click.option("--keep-going", is_flag=True,
              help="After a failure, still run every stage not downstream of it (every wave).")
@click.option("-d", "--detach", is_flag=True,
              help="Start the engine in the background and return once its first wave has "
              "started; `pivot attach` shows it, `pivot down` stops it.")
@click.option("--bind", metavar="ENDPOINT", default=None,
              help="Bind the broker's control socket here (tcp://HOST:PORT) instead of ipc "
              "under .pivot/run/, so pools and displays on other hosts can join.")
@live_options
@display_option
def up(
    stages: tuple[str, ...], force: bool, jobs: int | None, keep_going: bool, detach: bool,
    bind: str | None, debounce_ms: int, poll: bool, restart: bool, grace_s: float, display: str,
    as_json: bool,
) -> int:
    """Run what is stale, then watch the project and re-run what each change affects.

    With STAGES, only those stages and their upstream are run and kept live.

    Saving a data file re-runs the stages that read it and their downstream; editing
    pipeline.py or a helper it uses reloads the pipeline in fresh worker processes and
    re-runs the stages whose code changed; a comment-only edit runs nothing. A broken
    pipeline.py is reported and the last good one stays loaded until it is fixed.
    q, Ctrl-C, SIGTERM or closing the terminal stops everything (exit 0): stages still
    running get --grace seconds to finish, then are cancelled; a second Ctrl-C cancels
    them at once.

    The engine (broker, worker pool, file watcher) runs in processes of its own; this
    terminal shows it. `pivot attach` shows it in another terminal, `pivot ps` lists
    its processes, `pivot workers` adds a pool to it.
    """
    from pivot.cli.launch import UpOptions, start_live

    opts = UpOptions(stages, force, jobs, keep_going, debounce_ms, poll, restart, grace_s,
                     "json" if as_json else display, detach, bind)
    root = find_root()
    pivot_dir(root)
    return start_live(root, opts)
