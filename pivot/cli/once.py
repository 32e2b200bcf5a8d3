"""A one-shot run (`pivot repro`, `pivot run STAGE`): asked of the project's running
engine, or of one started for it in this process. Without click: the common command
lines of `pivot repro` come here without it (pivot/cli/direct.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pivot.pipeline.project import find_root, pivot_dir

if TYPE_CHECKING:
    from pivot.cli.settled import Settled
    from pivot.pipeline.manifest import Manifest
    from pivot.pipeline.select import Selection

__all__ = ["run_once"]


def run_once(
    stages: tuple[str, ...], *, force: bool, jobs: int | None, keep_going: bool, display: str,
    selection: Selection, glob: bool = False,
    broker: str | None = None, key: Path | None = None, broker_key: Path | None = None,
) -> int:
    """One wave: asked of the project's running engine (or the one `broker` names), else
    of an engine started for it in this process. Its exit code."""
    from pivot.cli.remote import connect
    from pivot.pipeline.select import check_text

    check_text(stages)
    root = find_root()
    pivot_dir(root)
    engine = connect(root, "repro", broker, key, broker_key, required=False)
    if engine is not None:
        # An engine owns the project (or was named): ask it for the wave, not a second one.
        with engine:
            from pivot.cli.follow import run_wave

            return run_wave(engine, stages, force, keep_going, display, selection, glob)
    # The pipeline's loader starts now (a fork, before any thread), for a run with nothing
    # to do settled here (pivot/cli/settled.py); the engine's modules are imported meanwhile.
    from pivot.launch.spawn import start_loader

    loading = None if force else start_loader(root)  # --force: every stage runs
    from pivot.cli.stack import Stack
    from pivot.launch.cpus import usable_cpus

    jobs = jobs or usable_cpus()

    def settle() -> Settled:
        from pivot.cli.settled import Settled, settle

        if loading is None:
            return Settled()
        return settle(root, loading, stages, keep_going, display, selection, glob, jobs, sys.stdout, sys.stderr)

    with Stack(root, jobs, settle=settle) as stack:
        if stack.settled is not None:
            return stack.settled
        from pivot.cli.follow import run_wave  # after the pool started: see follow.py

        rc = run_wave(stack, stages, force, keep_going, display, selection, glob)
        if stack.broker is not None and stack.broker.state.manifest is not None:
            _say_code_moved(root, stack.broker.state.manifest)
        return rc


def _say_code_moved(root: Path, manifest: Manifest) -> None:
    """A project file the stages' code came from, saved with other content while the run
    ran: the stages the pipeline's workers had imported it for ran the version loaded
    (their locks name it), and nothing watches for the save (`pivot up` loads it again).
    Said, rather than the run ending as if everything were current."""
    import xxhash

    from pivot.cli.ending import say

    expected: dict[str, str] = {}
    for spec in manifest.stages:
        expected.update(spec.code_sources)
    moved = []
    for rel, digest in sorted(expected.items()):
        try:
            with open(root / rel, "rb") as f:
                now = xxhash.xxh3_128_hexdigest(f.read())
        except OSError:
            now = ""
        if now != digest:
            moved.append(rel)
    if moved:
        shown = ", ".join(moved[:3]) + (" ..." if len(moved) > 3 else "")
        say(f"warning: {shown} changed while this run ran: stages using it ran the version loaded; "
            "`pivot status` says which are stale now, `pivot repro` runs them")
