"""A pool's lease: a file in its folder of attempts that its loop rewrites every second
(a counter: its content, read anew, is what counts, not its mtime, which an NFS client
may cache). A stage's process that sees it unchanged for LEASE_S while its pool runs
takes its pool for gone, cut off or hung, and stops: LEASE_S is the pool's own silence
window, shorter than the broker's wait before it runs the stage elsewhere (that window
plus a margin: broker/pools.py). Read by this host's clock: no skew between hosts.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["LEASE_NAME", "LEASE_S", "read_lease"]

LEASE_NAME = "lease"
LEASE_S = 3.0


def read_lease(path: Path | None) -> str:
    """The lease's content ("" when there is none, or it cannot be read)."""
    if path is None:
        return ""
    try:
        return path.read_text()
    except OSError:
        return ""
