"""How many stages to run at once by default."""

from __future__ import annotations

import os

__all__ = ["MAX_JOBS", "usable_cpus"]

# -j at most: a worker process each (a larger number overflowed in the pool, exit 1).
MAX_JOBS = 4096


def usable_cpus() -> int:
    """CPUs this process may run on (affinity-aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
