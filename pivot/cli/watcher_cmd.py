"""`pivot watcher`: a file watcher of its own, reporting to a broker."""

from __future__ import annotations

import os
from pathlib import Path

import click

from pivot.cli.options import broker_options


@click.command("watcher")
@broker_options
@click.option("--poll", is_flag=True,
              help="Poll the file system instead of OS notifications (Docker Desktop, network mounts).")
@click.option("--broker-timeout", type=click.FloatRange(min=0), default=None,
              help="Exit after this many seconds without a broker [default: keep trying].")
def watcher(
    broker: str | None, key: Path | None, broker_key: Path | None, poll: bool, broker_timeout: float | None,
) -> None:
    """Watch the project and report changed files to a broker, until SIGTERM or Ctrl-C.

    The broker decides what the changes affect. A watcher that joins (or rejoins) makes
    the broker check every stage, since it could not see what changed before.
    """
    from pivot.cli.target import keys_from, resolve
    from pivot.errors import UserError
    from pivot.launch import python_cmd
    from pivot.pipeline.project import find_root

    root = find_root()
    control = resolve(broker, root)
    if control is None:
        raise UserError(f"no broker to report to: none runs for {root}; name one with --broker or PIVOT_BROKER")
    key, broker_key = keys_from(key, broker_key)
    argv = ["--root", str(root), "--broker", control]
    argv += ["--poll"] if poll else []
    argv += ["--broker-timeout", str(broker_timeout)] if broker_timeout is not None else []
    argv += ["--key", str(key)] if key else []
    argv += ["--broker-key", str(broker_key)] if broker_key else []
    cmd = python_cmd("pivot.watch", *argv)
    os.execv(cmd[0], cmd)
