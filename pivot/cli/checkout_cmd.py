"""`pivot checkout`: put outputs back from the cache, as the lock files record them."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click

from pivot.errors import UserError

_HASH = re.compile(r"d?[0-9a-f]{32}")


@click.command()
@click.argument("targets", nargs=-1)
@click.option("--hash", "digest", metavar="HASH",
              help="Place this cached object at PATH (the single TARGET) instead.")
def checkout(targets: tuple[str, ...], digest: str | None) -> None:
    """Restore outputs from the cache to what each stage's lock file records.

    TARGETS are stage names or output paths (default: every output of every stage that
    ran and is still in pipeline.py). An output whose content is not in the cache yet (e.g. a hand edit) is stored
    first, and its hash printed, so nothing is lost. With --hash HASH PATH, place one
    cached object (a hash printed by Pivot) at PATH.
    """
    from pivot.pipeline.project import find_root, pivot_dir
    from pivot.transport.rundir import RunDir

    root = find_root()
    pivot_dir(root)  # the engine lock lives there: made with its .gitignore
    guard = RunDir(root)
    guard.lock("check out outputs")
    try:
        if digest is not None:
            _place_hash(root, digest, targets)
        else:
            _checkout(root, targets)
    finally:
        guard.release()


_PROJECT_FILES = frozenset({"pipeline.py", "params.yaml", "dvc.yaml", "dvc.lock", ".gitignore", ".pivotignore"})


def _relative(root: Path, target: str) -> str:
    path = (Path.cwd() / target).resolve()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        raise UserError(f"{target}: not inside the project {root}") from None


def _place_hash(root: Path, digest: str, targets: tuple[str, ...]) -> None:
    from pivot.state.outputs import ProjectState, preserve, restore

    if len(targets) != 1:
        raise UserError("--hash takes exactly one PATH: pivot checkout --hash HASH PATH")
    if not _HASH.fullmatch(digest):
        raise UserError(f"{digest!r} is not a Pivot content hash (32 hex digits, 'd' first for a directory)")
    rel = _relative(root, targets[0])
    top = rel.partition("/")[0]
    if rel in _PROJECT_FILES or top in (".pivot", ".git") or rel == ".":
        # Placed there, an object would take the project's own files (pipeline.py made a
        # folder: no command runs, not even the one that would put it back).
        raise UserError(f"{targets[0]}: not a place for an output (the project's own file or folder); "
                        "give the path of an output, or a new one")
    state = ProjectState.open(root)
    try:
        if not state.cache.has(digest):
            raise UserError(f"no object {digest} in the cache (.pivot/cache); was it removed by `pivot gc`?")
        for saved in preserve(state, [rel], {}):
            click.echo(saved.note())
        restore(state, {rel: digest})
    finally:
        state.close()
    click.echo(f"placed {digest} at {rel}")


def _checkout(root: Path, targets: tuple[str, ...]) -> None:
    from pivot.launch.spawn import run_loader
    from pivot.state.cache import DamagedObject
    from pivot.state.lock import read_lock
    from pivot.state.outputs import ProjectState, preserve, restore

    # Only the locks of stages the pipeline still declares, for outputs it still declares:
    # the lock of a renamed or removed stage must not overwrite what another stage wrote.
    manifest = run_loader(root)
    locks = {}
    for spec in manifest.stages:
        lock = read_lock(root, spec.name)
        if lock is not None:
            outs = {o: d for o, d in lock.outs.items() if o in spec.outs}
            locks[spec.name] = dataclasses.replace(lock, outs=outs)
    wanted: list[tuple[str, str, str]] = []  # (stage, out, digest)
    for target in targets or tuple(locks):
        if target in locks:
            wanted += [(target, out, d) for out, d in sorted(locks[target].outs.items())]
            continue
        rel = _relative(root, target).rstrip("/")
        found = [(s, o, d) for s, lk in locks.items() for o, d in lk.outs.items() if o.rstrip("/") == rel]
        if not found:
            raise UserError(
                f"{target}: not a stage that ran nor an output recorded in a lock file; "
                f"stages with locks: {', '.join(locks) or 'none'}"
            )
        wanted += found
    state = ProjectState.open(root)
    missing = []
    try:
        for stage, out, digest in wanted:
            if state.hashes.hash_path(root / out) == digest:
                continue
            if not state.cache.has(digest):
                missing.append(f"{out} (stage {stage})")
                continue
            for saved in preserve(state, [out], {out: digest}):
                click.echo(saved.note())
            try:
                restore(state, {out: digest})
            except DamagedObject:  # found so while placed, and removed: as good as missing
                missing.append(f"{out} (stage {stage}; its cache object was damaged, now removed)")
                continue
            click.echo(f"restored {out} (stage {stage})")
    finally:
        state.close()
    if missing:
        raise UserError(
            "not in the cache, run the stages to regenerate them: " + ", ".join(missing)
        )
    if not wanted:
        click.echo("nothing to check out: no stage has run yet")
