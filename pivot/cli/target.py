"""Which broker a command talks to: `--broker`, `PIVOT_BROKER`, or this project's engine.

Every command that joins an engine takes `--broker ENDPOINT` (the broker's control
socket) and the key options; without them it looks for the engine this project runs on
this machine (`.pivot/run/endpoints.json`). Without click: a one-shot run asks it too
(pivot/cli/direct.py).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["keys_from", "local_control", "resolve", "root_or_none"]


def local_control(root: Path, *, one_shot: bool = False) -> str | None:
    """The control endpoint of the engine running for this project here, if any. With
    `one_shot`, also a `pivot repro`'s own engine (it takes viewers, not runs: it stops
    after its wave)."""
    from pivot.transport.rundir import engine_info, engine_running

    info = engine_info(root)
    control = info.get("control")
    modes = ("up", "repro") if one_shot else ("up",)
    if not isinstance(control, str) or info.get("mode") not in modes or not engine_running(root):
        return None
    return control


def resolve(given: str | None, root: Path | None, *, one_shot: bool = False) -> str | None:
    """The endpoint to use: `--broker`, else `PIVOT_BROKER`, else the local engine's."""
    given = given or os.environ.get("PIVOT_BROKER") or None
    if given:
        from pivot.transport.address import normalize

        return normalize(given)
    return local_control(root, one_shot=one_shot) if root is not None else None


def keys_from(key: Path | None, broker_key: Path | None) -> tuple[Path | None, Path | None]:
    """--key / --broker-key, else PIVOT_KEY / PIVOT_BROKER_KEY."""
    if key is None and os.environ.get("PIVOT_KEY"):
        key = Path(os.environ["PIVOT_KEY"])
    if broker_key is None and os.environ.get("PIVOT_BROKER_KEY"):
        broker_key = Path(os.environ["PIVOT_BROKER_KEY"])
    return key, broker_key


def root_or_none(broker: str | None) -> Path | None:
    """The project here, or None when a broker is named (a display, `ps` or `ping` may
    run anywhere); without either, the "no pipeline.py" UserError."""
    from pivot.errors import UserError
    from pivot.pipeline.project import find_root

    try:
        return find_root()
    except UserError:
        if broker or os.environ.get("PIVOT_BROKER"):
            return None
        raise
