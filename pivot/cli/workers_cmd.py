"""`pivot workers`: a worker pool of its own, joining a broker."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import click

from pivot.cli.options import broker_options
from pivot.launch.cpus import MAX_JOBS


@click.command("workers")
@broker_options
@click.option("-j", "--jobs", type=click.IntRange(min=1, max=MAX_JOBS), default=None,
              help="Stages this pool runs at once [default: usable CPUs].")
@click.option("--tag", "tags", multiple=True, metavar="TAG",
              help="A tag of this pool (repeatable): a stage with tags=[...] runs only on pools "
              "with all of them.")
@click.option("--name", default=None, help="The pool's name, unique per engine [HOST-PID].")
@click.option("--broker-timeout", type=click.FloatRange(min=0), default=None,
              help="Exit after this many seconds without a broker [default: keep trying].")
@click.option("--dask", "scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Run the stages as tasks on this Dask scheduler's cluster (pip install "
              "'pivot[dask]'), each in a fresh process there; -j defaults to the cluster's threads.")
@click.option("--dask-timeout", type=click.FloatRange(min=0.1), default=None, metavar="SECONDS",
              help="With --dask: how long to wait for the scheduler to answer before giving up "
              "[default: 10].")
def workers(
    broker: str | None, key: Path | None, broker_key: Path | None, jobs: int | None,
    tags: tuple[str, ...], name: str | None, broker_timeout: float | None, scheduler: str | None,
    dask_timeout: float | None,
) -> None:
    """Run a worker pool that joins a broker and runs the stages it is given.

    Any number of pools may join or leave at any time; a wave's stages go to free slots
    across all of them. The pool needs the project's files and .pivot/ (on other hosts:
    a shared file system). It keeps reconnecting to a broker that went away (until
    --broker-timeout); SIGTERM stops it gracefully.

    With --dask, the stages run on a Dask cluster (SLURM, PBS, Kubernetes...): its
    workers need Pivot, the project's Python dependencies and the project's folder at
    the same path (a shared file system).
    """
    from pivot.cli.target import keys_from, resolve
    from pivot.errors import UserError
    from pivot.launch import python_cmd
    from pivot.pipeline.project import find_root, pivot_dir

    if dask_timeout is not None and not scheduler:
        raise UserError("--dask-timeout goes with --dask: how long to wait for the Dask scheduler")
    root = find_root()
    pivot_dir(root)
    control = resolve(broker, root)
    if control is None:
        raise UserError(f"no broker to join: none runs for {root}; name one with --broker or PIVOT_BROKER")
    key, broker_key = keys_from(key, broker_key)
    argv = ["--root", str(root), "--broker", control,
            "--name", name or f"{socket.gethostname()}-{os.getpid()}"]
    argv += ["--jobs", str(jobs)] if jobs else []
    for tag in tags:
        argv += ["--tag", tag]
    argv += ["--broker-timeout", str(broker_timeout)] if broker_timeout is not None else []
    argv += ["--key", str(key)] if key else []
    argv += ["--broker-key", str(broker_key)] if broker_key else []
    argv += ["--dask", scheduler] if scheduler else []
    argv += ["--dask-timeout", str(dask_timeout)] if dask_timeout is not None else []
    cmd = python_cmd("workers", *argv)
    # The pool takes this process's place: same pid (PID 1 in a container), same signals.
    os.execv(cmd[0], cmd)
