"""The cyclic garbage collector paused while Pivot builds many objects at once.

Building a 10,000-stage manifest or graph allocates ~100,000 containers, and each
allocation count past the collector's threshold scans the young objects, then, now and
then, every object in the process: 10-20 % of a load here. Nothing built in these blocks
is cyclic garbage; user code (the pipeline's own import) is never run with it paused.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["paused"]


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No collection in the block (nested blocks are fine); as it was after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
