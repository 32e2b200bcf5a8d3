"""What a running `pivot up` says about the stages, for `pivot status`.

Light to import: zmq and the display client (through `RemoteEngine`) are loaded only
when a `pivot up` runs, so a plain `pivot status` stays as fast as it was. The engine's
snapshot becomes the `engine` object of `status --json` and the lines `pivot status`
prints next to its own verdicts (docs/cli.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pivot.errors import PivotError

if TYPE_CHECKING:
    from pivot.cli.assess import StageAssessment
    from pivot.protocol.messages import Snapshot, StageView

__all__ = [
    "ANSWER_WITHIN_S",
    "engine_json",
    "fetch_snapshot",
    "header_lines",
    "live_verdict",
    "up_running",
]

# A `pivot up` answers a snapshot request in milliseconds; one that holds the lock but
# says nothing for this long is wedged, and status falls back to its own verdicts.
ANSWER_WITHIN_S = 2.0

# Outcomes that leave a stage not up to date; worth saying why it is still stale.
NOT_DONE = ("failed", "blocked", "cancelled", "lost")


def up_running(root: Path) -> bool:
    """Whether a `pivot up` serves the project (`remote.running_engine`). Without the
    endpoints file none does, and the lock check and its imports are skipped."""
    if not (root / ".pivot" / "run" / "endpoints.json").exists():
        return False
    from pivot.cli.remote import running_engine

    return running_engine(root)


def fetch_snapshot(
    root: Path,
    timeout: float = ANSWER_WITHIN_S,
    broker: str | None = None,
    key: Path | None = None,
    broker_key: Path | None = None,
) -> tuple[Snapshot | None, str]:
    """(the running engine's snapshot, "") within about `timeout` seconds, or (None, a
    warning to print); no warning when the engine stopped meanwhile. `broker` names
    another engine than this project's."""
    import zmq

    from pivot.cli.remote import connect, running_engine

    try:
        engine = connect(root, "status", broker, key, broker_key, required=False, timeout=timeout)
        if engine is None:
            return None, ""
        with engine:
            return engine.snapshot(timeout), ""
    except (PivotError, zmq.ZMQError, OSError) as exc:
        if not broker and not running_engine(root):
            return None, ""
        who = f"the broker at {broker}" if broker else "`pivot up` is running but its engine"
        return None, f"{who} did not answer ({exc}); showing the state on disk only"


def _in_wave(view: StageView, snap: Snapshot) -> bool:
    return snap.wave_running and view.wave == snap.wave


def _names(snap: Snapshot) -> list[str]:
    return [n for n in snap.order if n in snap.stages] + sorted(set(snap.stages) - set(snap.order))


def engine_json(snap: Snapshot, only: set[str] | None = None) -> dict[str, Any]:
    """The `engine` object of `pivot status --json` (docs/cli.md); `only` limits its
    stages to those `pivot status STAGES` reports."""
    stages = {}
    for name in _names(snap):
        if only is not None and name not in only:
            continue
        view = snap.stages[name]
        stages[name] = {
            "status": view.status, "reason_code": view.reason_code, "reason": view.reason,
            "wave": view.wave,
        }
    return {
        "mode": "up",
        "wave": snap.wave,
        "wave_running": snap.wave_running,
        "paused": snap.paused,
        "pipeline_error": (
            {"message": snap.pipeline_error.message, "detail": snap.pipeline_error.detail}
            if snap.pipeline_error else None
        ),
        "stages": stages,
    }


def header_lines(snap: Snapshot) -> list[str]:
    """`engine: pivot up is running (wave 7 running); 1 running, 2 queued`, and the
    pipeline error the engine reports, if any."""
    if snap.wave_running:
        state = f"wave {snap.wave} running" + (", paused after it" if snap.paused else "")
        views = [v for v in snap.stages.values() if _in_wave(v, snap)]
        counts = [
            f"{sum(1 for v in views if v.status == s)} {word}"
            for s, word in (("running", "running"), ("pending", "queued"))
        ]
        summary = ", ".join(counts)
    else:
        state = "paused" if snap.paused else "idle"
        last = snap.last_wave
        if last is None:
            summary = "no wave ran yet"
        else:
            from pivot.protocol.messages import STATUSES

            parts = [f"{len(names)} {status}" for status in STATUSES if (names := getattr(last, status))]
            summary = f"last wave {last.wave}: {', '.join(parts) or 'no stages'}"
    lines = [f"engine: pivot up is running ({state}); {summary}"]
    error = snap.pipeline_error
    if error:
        kept = "; it keeps the last good pipeline loaded" if snap.stages else ""
        lines.append(f"engine: pipeline error: {error.message}{kept}")
    return lines


def live_verdict(name: str, snap: Snapshot, row: StageAssessment) -> str | None:
    """The engine's line for a stage when it says more than the local verdict `row`:
    running or queued in the wave in flight, or stale because it failed (or was blocked)
    in the engine. None: the local line says it all."""
    view = snap.stages.get(name)
    if view is None:
        return None
    status, wave, reason = view.status, view.wave, view.reason
    if _in_wave(view, snap) and status in ("running", "pending"):
        if not reason and row.stale:
            reason = row.reasons[0].message  # why it runs: it is stale here
        word = "running" if status == "running" else "queued"
        return f"{name}: {word} (wave {wave}{'; ' + reason if reason else ''})"
    if status in NOT_DONE and row.stale:
        return f"{name}: {status} in wave {wave}{f' ({reason})' if reason else ''}"
    return None
