"""`pivot init`: create .pivot/ with a .gitignore that keeps only lock files in git."""

from __future__ import annotations

from pathlib import Path

import click

from pivot.pipeline.project import PIPELINE_FILE, pivot_dir


@click.command()
def init() -> None:
    """Create .pivot/ in the current folder (lock files go to .pivot/stages/)."""
    root = Path.cwd()
    existed = (root / ".pivot").exists()
    state = pivot_dir(root)
    click.echo(f"{'found' if existed else 'created'} {state}")
    if not (root / PIPELINE_FILE).exists():
        click.echo(f"next: write {PIPELINE_FILE} with @stage functions, then run `pivot repro`")
