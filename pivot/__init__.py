"""Pivot: reactive, content-addressed pipelines for data and ML work.

`import pivot` must stay light: every worker and every user module pays for it, so
nothing here imports zmq, rich or loky. `stage` is imported when first asked for
(`from pivot import stage`): the `pivot` command imports this package before it forks
the pipeline's loader (pivot/launch/early.py), and the decorator's module (dataclasses,
inspect: ~15 ms) is the loader's to import, not the command's.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing costs every command ~8 ms here
if TYPE_CHECKING:
    from typing import Any

    from pivot.pipeline.stage import stage

__all__ = ["stage"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "stage":
        from pivot.pipeline.stage import stage

        return stage
    raise AttributeError(f"module 'pivot' has no attribute {name!r}")
