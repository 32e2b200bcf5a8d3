"""The pool's command line, parsed before any heavy import (see workers/__main__.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["parse_args"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    from pivot.launch.cpus import usable_cpus

    parser = argparse.ArgumentParser(prog="python -m workers", description="A Pivot worker pool.")
    parser.add_argument("--root", required=True, type=Path)
    link = parser.add_mutually_exclusive_group(required=True)
    link.add_argument("--work", help="the broker's work endpoint (a pool its engine started)")
    link.add_argument("--broker", help="the broker's control endpoint (a pool started on its own)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--jobs", type=int, default=None, help="stages at once [usable CPUs]")
    parser.add_argument("--tag", action="append", default=[], help="a tag of this pool (repeatable)")
    parser.add_argument(
        "--manifest", type=Path, default=None,
        help="the pipeline as its starter loaded it (a file, removed once read): no load of its own",
    )
    parser.add_argument(
        "--handed", default="", metavar="TOKEN",
        help="(a pool forked by pivot repro) its broker holds the pipeline it was forked with under this token",
    )
    parser.add_argument(
        "--planned", action="store_true",
        help="(a pool started by pivot repro) its first wave is planned already: no locks read ahead for it",
    )
    parser.add_argument(
        "--start-workers", type=int, default=0, metavar="N",
        help="start this many workers (at most --jobs) once the pipeline is in: its starter knows stages will run",
    )
    parser.add_argument(
        "--broker-timeout", type=float, default=None,
        help="exit after the broker has been silent this long [--work: 3 s; --broker: never]",
    )
    parser.add_argument(
        "--one-shot", action="store_true",
        help="serve one run with no watcher (pivot repro): its workers' writes to the state database are batched",
    )
    parser.add_argument("--key", type=Path, default=None, help="this pool's CURVE secret key file")
    parser.add_argument("--broker-key", type=Path, default=None, help="the broker's CURVE public key file")
    parser.add_argument("--dask", default=None, metavar="SCHEDULER",
                        help="run stages as tasks on this Dask scheduler's cluster [-j: its threads]")
    parser.add_argument("--dask-timeout", type=float, default=None, metavar="SECONDS",
                        help="how long to wait for the Dask scheduler to answer [10 s]")
    args = parser.parse_args(argv)
    args.root = args.root.resolve()
    if args.jobs is None and not args.dask:
        args.jobs = usable_cpus()
    args.key = args.key or (Path(os.environ["PIVOT_KEY"]) if os.environ.get("PIVOT_KEY") else None)
    if args.broker_key is None and os.environ.get("PIVOT_BROKER_KEY"):
        args.broker_key = Path(os.environ["PIVOT_BROKER_KEY"])
    return args
