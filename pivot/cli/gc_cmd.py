"""`pivot gc`: remove cache objects nothing refers to any more."""

from __future__ import annotations

import click


@click.command()
@click.option("--force", is_flag=True, help="Delete; without it, only report what would go.")
@click.option("--run-cache", "run_cache", is_flag=True,
              help="Also empty the run cache, so only what lock files name is kept.")
def gc(force: bool, run_cache: bool) -> None:
    """Remove cached objects referenced by neither a lock file nor the run cache.

    Dry run by default. Only the lock files in the working tree count: objects that only
    another git branch's locks name are removed too (check out that branch's outputs
    first, or keep the cache). A lock file that cannot be read (a merge conflict) stops
    it: the objects it names would be removed.
    """
    from pivot.errors import UserError
    from pivot.pipeline.project import find_root, pivot_dir
    from pivot.state.lock import lock_problem, read_lock, stage_of_file
    from pivot.state.outputs import ProjectState
    from pivot.state.stagelogs import RUN_NOTES
    from pivot.transport.rundir import RunDir

    root = find_root()
    pivot_dir(root)  # the engine lock lives there: made with its .gitignore
    guard = RunDir(root)
    guard.lock("collect garbage")
    state = ProjectState.open(root)
    try:
        keep: set[str] = set()
        unreadable: list[str] = []
        for path in sorted((root / ".pivot" / "stages").glob("*.lock")):
            lock = read_lock(root, stage_of_file(path.stem))
            if lock is not None:
                keep.update(lock.outs.values())
            elif (problem := lock_problem(root, stage_of_file(path.stem))) is not None:
                unreadable.append(f"{path.relative_to(root)} ({problem})")
        if unreadable:
            # Its outputs' objects would all count as unused (a merge conflict's markers:
            # both sides' outputs were removed, and `--run-cache` took every copy).
            raise UserError(
                f"cannot read {len(unreadable)} lock file(s): {'; '.join(unreadable)}; the objects they name "
                "would be removed: resolve them (a git merge conflict: `git checkout --ours` or "
                "`--theirs` the lock files) or remove them, then run gc again"
            )
        entries = list(state.runs.entries())
        if not run_cache:
            for entry in entries:
                keep.update(str(d) for d in entry["outs"].values())
        report = state.cache.gc(keep, dry_run=not force)
        cleared = 0
        if run_cache and force:
            cleared = state.runs.clear()
            state.hashes.drop_notes(RUN_NOTES)  # the quiet runs' logs (pivot/state/stagelogs.py)
    finally:
        state.close()
        guard.release()
    size = _size(report.bytes)
    if force:
        click.echo(f"removed {report.count} cache objects ({size})")
        if run_cache:
            click.echo(f"emptied the run cache ({cleared} entries)")
    else:
        runs = f" and the run cache ({len(entries)} entries)" if run_cache else ""
        click.echo(f"would remove {report.count} cache objects ({size}){runs}; run with --force to delete")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"
