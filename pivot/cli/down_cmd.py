"""`pivot down`: stop a running engine."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from pivot.cli.options import broker_options


@click.command("down")
@broker_options
@click.option("--grace", "grace_s", type=click.FloatRange(min=0, max=3600), default=5.0,
              show_default=True,
              help="Seconds running stages get to finish before they are cancelled.")
def down(broker: str | None, key: Path | None, broker_key: Path | None, grace_s: float) -> int:
    """Stop the engine (`pivot up -d`, `pivot broker`): nothing new starts, running
    stages get --grace seconds to finish, then every process of the engine stops."""
    from pivot.cli.remote import connect
    from pivot.cli.target import root_or_none
    from pivot.launch.limits import HARD_KILL_S
    from pivot.transport.rundir import engine_info

    root = root_or_none(broker)
    engine = connect(root, "down", broker, key, broker_key, required=bool(broker))
    if engine is None:
        info = engine_info(root) if root is not None else {}
        held = info.get("pid")
        if info.get("mode") == "repro" and isinstance(held, int) and _running(held):
            # Its engine is the command's own: it ends with its run.
            click.echo(f"error: a `pivot repro` (pid {held}) is running for {root}: it stops once its run "
                       "ends; Ctrl-C in its terminal (or `kill -INT` that pid) stops it now", err=True)
            return 1
        click.echo(f"no Pivot engine is running for {root}", err=True)
        return 0
    pid = engine.info.pid
    local = root is not None and engine_info(root).get("pid") == pid
    with engine:
        engine.client.shutdown(timeout=grace_s + HARD_KILL_S + 10.0, grace_s=grace_s)
    if local:  # wait for the broker's process too: `pivot up` may start again at once
        from pivot.launch.procs import is_alive

        deadline = time.monotonic() + 15.0
        while is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if is_alive(pid):
            print(f"pivot: the broker (pid {pid}) has not exited yet", file=sys.stderr)
            return 1
    click.echo("stopped")
    return 0


def _running(pid: int) -> bool:
    from pivot.launch.procs import is_alive

    return is_alive(pid)
