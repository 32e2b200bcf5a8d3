"""A pool process's start: `python -m workers` (workers/__main__.py), or a child that
`pivot repro` forks (pivot/cli/stack.py), which holds the pipeline already.

The loader (a process importing the user's pipeline, forked from this one while it has
a single thread: pivot/launch/spawn.py `start_loader`) is the slowest step to a first
manifest; starting it before the pool imports ZeroMQ and the state modules runs the two
side by side. A pool handed the pipeline and told stages will run starts its workers'
forkserver instead, at once.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, NoReturn

from pivot.launch.spawn import Loading, given_manifest, handed_manifest, start_loader
from workers.args import parse_args

if TYPE_CHECKING:
    from pivot.pipeline.manifest import Manifest

__all__ = ["forked_pool", "run"]


def run(argv: list[str], handed: Manifest | None = None) -> NoReturn:
    """The pool of `argv` (workers/args.py), until it exits; `handed`: the pipeline,
    loaded by the process this one was forked from."""
    # A crash in native code (SIGSEGV, SIGABRT, ...) says where each thread was, on the
    # pool's standard error (pool.log; a container's log): a pool exited 139 once on
    # SIGTERM in the compose stack, with nothing to show why.
    faulthandler.enable()
    args = parse_args(argv)
    first_load: Loading
    if handed is None:
        args.handed = ""  # (only a pool forked with the pipeline has it to name)
    if handed is not None:
        first_load = handed_manifest(handed)
    elif args.manifest is not None:  # loaded by `pivot repro` already (pivot/cli/settled.py)
        first_load = given_manifest(args.manifest)
    else:  # a loader forked now, while this process has no thread yet
        first_load = start_loader(args.root)
    if args.start_workers and (handed is not None or args.manifest is not None):
        _start_forkserver(first_load, str(args.root))

    from workers.pool import main  # deliberately after the loader started

    rc = main(args, first_load)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # The pool has closed its sockets and stopped its workers; skipping interpreter
    # teardown (tens of ms of module finalization) shortens every `pivot repro`, which
    # waits for it.
    os._exit(rc)


def _start_forkserver(first_load: Loading, root: str) -> None:
    """Stages will run: the workers' forkserver starts now (a fork of this process, which
    imports Pivot's worker modules and the pipeline's libraries: pivot/runtime/mpforks.py),
    beside this process's own imports, not once the pool is up. Its modules come with the
    pipeline."""
    from pivot.errors import PivotError
    from pivot.launch.scratch import multiprocessing_scratch
    from pivot.runtime.preload import start_server

    try:
        manifest = first_load.result()
    except PivotError:
        return  # said by the pool, which asks again
    multiprocessing_scratch()  # (its socket's folder: ours, removed with the pool)
    with contextlib.suppress(OSError):  # the pool tries again with its workers, and says why
        start_server(manifest.preload, manifest.preload_key, root)


def forked_pool(argv: list[str], handed: Manifest, log_fd: int, root: str) -> NoReturn:
    """The body of a pool forked from `pivot repro` (a single thread, ZeroMQ not yet
    imported): what `python -m workers` would be, without its interpreter's start and
    the imports the two share (~50 ms of every stale run here), nor the pipeline's trip
    through a file. Its own session, its output to `log_fd`, no descriptor of the CLI's
    (the run directory's lock stays the CLI's alone)."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    os.chdir(root)
    # As a fresh interpreter has them (the pool sets its own once it runs).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    logging.getLogger().handlers.clear()  # the CLI's (its standard error): the pool sets its own
    _main_as_workers()
    run(argv, handed)


def _main_as_workers() -> None:
    """The main module `python -m workers` has, in place of the CLI's script. A process
    multiprocessing starts (a worker, a loader: from its forkserver) runs its parent's
    main script again first, unless that is a package's `__main__`: the `pivot` script
    imports the CLI and click, ~22 ms of every worker's start here."""
    import importlib.util
    import types

    main = types.ModuleType("__main__")
    main.__spec__ = importlib.util.find_spec("workers.__main__")
    sys.modules["__main__"] = main
