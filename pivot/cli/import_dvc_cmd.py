"""`pivot import-dvc`: write pipeline.py from the project's dvc.yaml files
(pivot/pipeline/dvcimport.py); never touches params.yaml, dvc.yaml, dvc.lock or .dvc/."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import click

from pivot.errors import UserError
from pivot.pipeline.project import DVC_FILE, PIPELINE_FILE, find_root


@click.command("import-dvc")
@click.option("--dry-run", is_flag=True, help="Print the pipeline.py it would write; write nothing.")
@click.option("--force", is_flag=True, help="Replace an existing pipeline.py.")
def import_dvc(dry_run: bool, force: bool) -> None:
    """Write pipeline.py with the stages of the project's dvc.yaml files.

    One stage(name=..., cmd=...) call per stage, foreach and matrix variants included,
    with its deps, outs, metrics, params, wdir, persist, cache: false, frozen and
    always_changed. A ${...} in a command that comes from params.yaml stays one, its key
    in the stage's params: editing params.yaml runs the stage with the new value. Values
    from vars, foreach and matrix are written out. A stage of sub/dvc.yaml is named
    sub.NAME (a new lock: the next run restores its outputs from the run cache, or runs
    it); every other stage keeps its lock, and runs only if it would have under dvc.yaml.

    It never writes params.yaml, dvc.yaml, dvc.lock or .dvc/, and replaces an existing
    pipeline.py only with --force. Pivot refuses a stage declared in both pipeline.py and
    a dvc.yaml, and reads the dvc.yaml files git knows below pipeline.py, so then move
    every dvc.yaml it read away, as it prints (docs/dvc.md):

    \b
        git mv dvc.yaml dvc.yaml.bak
        git mv sub/dvc.yaml sub/dvc.yaml.bak
        pivot repro
    """
    from pivot.pipeline.dvcimport import render, verify

    root = find_root()
    if not (root / DVC_FILE).is_file():
        raise UserError(f"no {DVC_FILE} in {root}: `pivot import-dvc` writes {PIPELINE_FILE} from a DVC project's")
    target = root / PIPELINE_FILE
    if target.exists() and not dry_run and not force:
        raise UserError(f"{target} exists: `pivot import-dvc --force` replaces it (--dry-run shows the new one)")
    imported = render(root)
    verify(imported, root)
    if dry_run:
        click.echo(imported.text, nl=False)
        for old, new in imported.renamed:
            click.echo(f"renamed: {old} -> {new}", err=True)
        return
    tmp = target.with_name(f".{PIPELINE_FILE}.{os.getpid()}")
    tmp.write_text(imported.text)
    os.replace(tmp, target)
    click.echo(f"wrote {target}: {len(imported.stages)} stages from {', '.join(imported.files)}")
    for old, new in imported.renamed:
        click.echo(f"renamed: {old} -> {new} (a name pipeline.py cannot hold)")
    if imported.unowned_metrics:
        click.echo(
            f"warning: {', '.join(imported.unowned_metrics)}: top-level metrics no stage writes are not in "
            f"{PIPELINE_FILE} (`pivot metrics` reads a stage's metrics=): add each to the stage that makes it",
            err=True,
        )
    # Below a pipeline.py, the dvc.yaml files git knows are still read: every one imported
    # must go, or its stages clash with their copies in pipeline.py.
    what = DVC_FILE if imported.files == (DVC_FILE,) else "every dvc.yaml it read"
    click.echo(f"next: Pivot refuses a stage declared in both {PIPELINE_FILE} and a {DVC_FILE}; move {what} away:")
    for file in imported.files:
        click.echo(f"    {_move_command(root, file)} {file} {file}.bak")
    if imported.rerun:
        click.echo(
            "then `pivot repro`; these stages have a new name, so a new lock: it restores their outputs from the "
            f"run cache, or runs them: {', '.join(imported.rerun)}"
        )
    else:
        click.echo("then `pivot repro`")


def _move_command(root: Path, file: str) -> str:
    """`git mv` for a file git tracks, else `mv`."""
    try:
        tracked = subprocess.run(
            ["git", "ls-files", "--error-unmatch", "--", file], cwd=root, capture_output=True, timeout=30,
        ).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        tracked = False
    return "git mv" if tracked else "mv"
