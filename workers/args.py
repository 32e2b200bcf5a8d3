"""The pool's command line, parsed before any heavy import (see workers/__main__.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["parse_args"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    from pivot.runtime.cpus import usable_cpus

    parser = argparse.ArgumentParser(prog="python -m workers", description="A Pivot worker pool.")
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--work", required=True, help="the broker's work endpoint")
    parser.add_argument("--name", required=True)
    parser.add_argument("--jobs", type=int, default=None, help="stages at once [usable CPUs]")
    args = parser.parse_args(argv)
    args.root = args.root.resolve()
    if args.jobs is None:
        args.jobs = usable_cpus()
    return args
