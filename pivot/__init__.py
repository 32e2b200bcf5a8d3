"""Pivot: reactive, content-addressed pipelines for data and ML work.

`import pivot` must stay light: every worker and every user module pays for it, so
nothing here imports zmq, rich or loky.
"""

from __future__ import annotations

from pivot.pipeline.stage import stage

__all__ = ["stage"]
__version__ = "0.1.0"
