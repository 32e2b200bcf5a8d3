"""`python -m workers`: start the pipeline loader first, then import the pool.

The loader (a process importing the user's pipeline, forked from this one while it has
a single thread: pivot/launch/spawn.py `start_loader`) is the slowest step to a first
manifest; starting it before the pool imports ZeroMQ and the state modules runs the two
side by side.
"""

import logging
import os
import sys

from pivot.launch.spawn import Loading, given_manifest, start_loader
from workers.args import parse_args

args = parse_args(sys.argv[1:])
# Loaded by `pivot repro` already (pivot/cli/settled.py), else by a loader forked now,
# while this process has no thread yet.
first_load: Loading = given_manifest(args.manifest) if args.manifest is not None else start_loader(args.root)
if args.manifest is not None and args.start_workers:
    # Stages will run: the workers' forkserver starts now (an interpreter that imports
    # Pivot's worker modules and the pipeline's libraries: ~70 ms here), beside this
    # process's own imports, not once the pool is up. Its modules come with the pipeline.
    import contextlib

    from pivot.errors import PivotError
    from pivot.launch.scratch import multiprocessing_scratch
    from pivot.runtime.preload import start_server

    try:
        handed = first_load.result()
    except PivotError:
        pass  # said by the pool, which asks again
    else:
        multiprocessing_scratch()  # (its socket's folder: ours, removed with the pool)
        with contextlib.suppress(OSError):  # the pool tries again with its workers, and says why
            start_server(handed.preload, handed.preload_key)

from workers.pool import main  # noqa: E402 - deliberately after the loader started

rc = main(args, first_load)
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
# The pool has closed its sockets and stopped its workers; skipping interpreter teardown
# (tens of ms of module finalization) shortens every `pivot repro`, which waits for it.
os._exit(rc)
