"""Imported last by the workers' forkserver (pivot/runtime/preload.py `worker_context`):
the server's heap, its preloaded libraries included, is frozen for the collector.

A process forked from the server (a worker, a pipeline loader after a code change)
shares the server's memory until it writes to it; the collector writes into every
object it scans, so a fork's first collections copied the pages of the libraries' objects
(scikit-learn: ~120,000) and scanned them all. Measured with a fork of a process holding
scikit-learn (bench-like loop, 5 forks each): a pipeline load in the child took 14-25 ms,
frozen 14 ms, and the fork's start 5.9-8.4 -> 5.3-6.8 ms (end to end, `bench/live.py`
could not tell: helper edit -> s0 started with scikit-learn 74, 73 -> 69, 71 ms p50).
Frozen objects are never collected; the server's are never freed anyway.

Its module names are copied into strings allocated one after the other first. A fork
that reads every name of `sys.modules` (a loader does, to tell Pivot's and the
libraries' modules from the pipeline's) writes each one's reference count, copying the
pages they are on: ~1,600 names spread over as many pages of a server holding
scikit-learn took 3-4.5 ms a load, packed 0.5-0.8 ms (a fork's loop, 14 loads each).
"""

import gc
import sys


def _pack_module_names() -> None:
    modules = sys.modules
    for name in list(modules):  # (one entry out at a time, the order kept)
        modules[(name + ".")[:-1]] = modules.pop(name)


_pack_module_names()
gc.freeze()
