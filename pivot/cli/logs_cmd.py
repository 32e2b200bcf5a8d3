"""`pivot logs`: what a stage printed in its last run, or a Pivot process's own log."""

from __future__ import annotations

import time
from pathlib import Path

import click

from pivot.errors import UserError

ROLES = ("pool", "watcher")


@click.command()
@click.argument("stage", required=False)
@click.option("--role", type=click.Choice(ROLES), help="Show a Pivot process's own log instead.")
@click.option("-f", "--follow", is_flag=True, help="With --role: keep printing new lines (Ctrl-C stops).")
def logs(stage: str | None, role: str | None, follow: bool) -> None:
    """Print the captured output (stdout, stderr lines as `! ...`, and a failure's
    traceback) of STAGE's last run, kept under .pivot/logs/stages/.

    With --role pool|watcher, print that process's own log (.pivot/logs/ROLE.log).
    """
    from pivot.pipeline.project import find_root
    from pivot.runtime.worker import stage_log_path

    root = find_root()
    if (stage is None) == (role is None):
        raise UserError("give a STAGE, or --role pool|watcher")
    if role is not None:
        _show(root / ".pivot" / "logs" / f"{role}.log", follow)
        return
    assert stage is not None
    path = stage_log_path(root, stage)
    if not path.is_file():
        raise UserError(f"no log for stage {stage!r}: it has not run in this project (or its name is wrong)")
    if follow:
        raise UserError("--follow goes with --role")
    click.echo(path.read_text(errors="replace"), nl=False)


def _show(path: Path, follow: bool) -> None:
    if not path.is_file():
        raise UserError(f"no log yet at {path}")
    with open(path, errors="replace") as f:
        click.echo(f.read(), nl=False)
        while follow:
            line = f.readline()
            if line:
                click.echo(line, nl=False)
            else:
                time.sleep(0.2)  # polling a file for new lines (tail -f); not a test wait
