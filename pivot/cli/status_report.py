"""What `pivot status` prints (pivot/cli/status_cmd.py has its options and help).

Without click: `pivot status` with only STAGES and flags runs here without it
(pivot/cli/direct.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pivot.cli.ending import say, write_line
from pivot.display.strictjson import dumps

if TYPE_CHECKING:
    from pivot.cli.assess import StageAssessment
    from pivot.protocol.messages import Snapshot

__all__ = ["show_status"]


def show_status(
    stages: tuple[str, ...], *, explain: bool, as_json: bool, check: bool, quiet: bool,
    broker: str | None = None, key: Path | None = None, broker_key: Path | None = None,
) -> int:
    """Print the stages' verdicts (and a running engine's view); the exit code."""
    from pivot.cli.assess import assess
    from pivot.cli.engine_view import (
        engine_json,
        fetch_snapshot,
        header_lines,
        live_verdict,
        up_running,
    )
    from pivot.errors import PipelineError
    from pivot.pipeline.project import find_root
    from pivot.pipeline.select import check_text

    check_text(stages)
    root = find_root()
    if quiet:
        return 1 if any(row.stale for row in assess(root, stages).stages.values()) else 0
    # A running `pivot up` is asked for its view after the assessment, so that view is
    # the fresher one. Without one, neither zmq nor the display client is imported.
    live = bool(broker or os.environ.get("PIVOT_BROKER")) or up_running(root)

    def engine_snapshot() -> Snapshot | None:
        snap, warning = fetch_snapshot(root, broker=broker, key=key, broker_key=broker_key)
        if warning:
            say(f"warning: {warning}")
        return snap

    try:
        result = assess(root, stages, explain=explain)
    except PipelineError:
        # The engine keeps its last good pipeline loaded: say what it sees, then the error.
        snap = engine_snapshot() if live and not as_json else None
        if snap is not None and (lines := header_lines(snap)):
            _print("\n".join(lines))
        raise
    snap = engine_snapshot() if live else None
    if as_json:
        rows = {name: row.to_json() for name, row in result.stages.items()}
        engine = engine_json(snap, set(result.stages) if stages else None) if snap is not None else None
        _print(dumps({"stages": rows, "engine": engine}, indent=2))
        return 1 if check and any(row.stale for row in result.stages.values()) else 0
    for warning in result.manifest.warnings:
        say(f"warning: {warning}")
    # One write at the end (10,000 stages: one line each).
    out = header_lines(snap) if snap is not None else []
    stale: list[str] = []
    for name, row in result.stages.items():
        is_stale = row.stale  # (a property: once a row)
        if is_stale:
            stale.append(name)
        live_line = live_verdict(name, snap, row) if snap is not None else None
        if live_line is not None:
            out.append(live_line)
            if explain:
                _explain(row, out)
            continue
        if not is_stale:
            note = f" ({row.reasons[0].message})" if row.reasons else ""  # frozen: why it never runs
            out.append(f"{name}: up to date{note}")
            continue
        restore = " [restorable from run cache]" if row.restorable else ""
        if not explain:
            out.append(f"{name}: stale ({row.reasons[0].message}){restore}")
            continue
        out.append(f"{name}: stale{restore}")
        _explain(row, out)
    total = len(result.stages)
    out.append(f"{len(stale)} of {total} stages stale" if stale else "everything is up to date")
    _print("\n".join(out))
    return 1 if check and stale else 0


def _explain(row: StageAssessment, out: list[str]) -> None:
    for reason in row.reasons:
        out.append(f"  - {reason.code}: {reason.message}")
        for key, value in reason.details.items():
            if key == "changes":
                for param, (old, new) in value.items():
                    out.append(f"      {param}: {old!r} -> {new!r}")
            elif value:
                out.append(f"      {key}: {_show(value)}")


def _print(text: str) -> None:
    write_line(sys.stdout, text)


def _show(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_show(v)}" for k, v in value.items())
    return str(value)
