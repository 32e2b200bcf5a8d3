"""Starting and stopping Pivot's own processes: what the CLI, the broker, the pool and
the watcher share (command lines, process groups, log files, limits).

Nothing here runs inside a user's process, and nothing here imports user code; what does
(the pipeline loader, the stage runner, cancellation) is `pivot.runtime`, which the
broker never imports.
"""

from __future__ import annotations

import sys

__all__ = ["python_cmd"]


def python_cmd(module: str, *args: str) -> list[str]:
    """`python -P -m MODULE ARGS`: -P keeps the working directory off sys.path, so a
    project module named `workers.py`, `broker.py` or `pivot.py` cannot replace ours."""
    return [sys.executable, "-P", "-m", module, *args]
