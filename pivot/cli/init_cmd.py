"""`pivot init`: create .pivot/ with a .gitignore that keeps only lock files in git."""

from __future__ import annotations

from pathlib import Path

import click

from pivot.errors import UserError
from pivot.pipeline.project import DVC_FILE, PIPELINE_FILE, pivot_dir


@click.command()
def init() -> None:
    """Create .pivot/ in the current folder (lock files go to .pivot/stages/).

    In a folder below a project (a parent holds pipeline.py or .pivot/), it says so and
    creates nothing: Pivot commands run there already belong to that project."""
    root = Path.cwd().resolve()
    for parent in root.parents:
        if (parent / PIPELINE_FILE).is_file() or (parent / ".pivot" / "stages").is_dir():
            raise UserError(
                f"{root} is inside the Pivot project at {parent}; run Pivot commands here "
                f"(they use that project), or `pivot init` in a folder outside it"
            )
    existed = (root / ".pivot").exists()
    state = pivot_dir(root)
    click.echo(f"{'found' if existed else 'created'} {state}")
    if (root / DVC_FILE).is_file() and not (root / PIPELINE_FILE).exists():
        click.echo(f"next: `pivot repro` runs the stages of {DVC_FILE} (docs/dvc.md)")
    elif not (root / PIPELINE_FILE).exists():
        click.echo(f"next: write {PIPELINE_FILE} with @stage functions, then run `pivot repro`")
