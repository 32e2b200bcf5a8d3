"""The `pivot` script: the pipeline's loader is forked before the command line is
imported (pivot/launch/early.py), then the command runs (pivot/cli/main.py)."""

from __future__ import annotations

import sys


def main() -> None:
    from pivot.launch.early import fork_loader

    fork_loader(sys.argv[1:])
    from pivot.cli.main import main as run

    run()
