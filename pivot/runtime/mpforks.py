"""multiprocessing's two helper processes, the workers' forkserver and the resource
tracker, started as forks of the pool instead of fresh interpreters.

The stdlib starts each as `python -c ...`: an interpreter's start, its site, the imports
(Pivot's worker modules for the server), ~0.13 s and ~0.05 s of CPU here, in the window
where a cold `pivot repro` starts everything at once on two cores. A pool that `pivot
repro` forked has those imports already and a single thread: a fork of it runs the
stdlib's own code (`multiprocessing.forkserver.main`, `resource_tracker.main`) with
the same protocols, so that everything else (workers started through the server, their
exit codes, the tracker's pipe, the server's stop) is the stdlib's.

What a fork carries that a fresh interpreter does not is undone: every descriptor but
the helper's own is closed, the heap it inherited is frozen for the collector (it stays
shared with the pool), Pivot's `broker`/`workers` packages are dropped (a project's own
modules of those names are what its stages import), the signal handlers and the fault
handler are a fresh interpreter's. A fork is refused while another thread runs (a lock
it held would stay held) or a project module is imported (a worker imports the
project's code as it is when the worker runs); the stdlib's start is then used.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

__all__ = ["fork_server", "fork_tracker"]


def fork_server(modules: list[str], root: str, ours: Iterable[str]) -> bool:
    """The workers' forkserver, preloading `modules`, forked from this process (module
    docstring); False: not started. `ours`: top-level names of Pivot's packages, never
    the project's."""
    import socket
    from multiprocessing import connection, forkserver, spawn

    server: Any = forkserver._forkserver
    if threading.active_count() != 1 or server._forkserver_pid is not None or _project_imported(root, set(ours)):
        return False
    data = {k: v for k, v in spawn.get_preparation_data("ignore").items() if k in {"main_path", "sys_path"}}
    with socket.socket(socket.AF_UNIX) as listener:
        address = connection.arbitrary_address("AF_UNIX")  # type: ignore[attr-defined]
        listener.bind(address)
        os.chmod(address, 0o600)
        listener.listen()
        alive_r, alive_w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(alive_r)
            os.close(alive_w)
            os.unlink(address)
            return False
        if pid == 0:
            fd = listener.fileno()
            _run_forked((fd, alive_r), lambda: _serve(fd, alive_r, modules, data, root))
        os.close(alive_r)
    server._forkserver_address = address
    server._forkserver_alive_fd = alive_w
    server._forkserver_pid = pid
    return True


def fork_tracker() -> bool:
    """multiprocessing's resource tracker forked from this process (module docstring),
    where a worker's semaphores and shared memory are cleaned up if it leaks them; False:
    not started."""
    from multiprocessing import resource_tracker

    tracker: Any = resource_tracker._resource_tracker
    if threading.active_count() != 1 or tracker._fd is not None:
        return False
    r, w = os.pipe()
    # As the stdlib does: the tracker ignores these, and must not die of one meanwhile.
    stopping = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stopping)
        os.close(r)
        os.close(w)
        return False
    if pid == 0:  # (its main unblocks them once it ignores them)
        _run_forked((r,), lambda: resource_tracker.main(r))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stopping)
    os.close(r)
    tracker._fd, tracker._pid = w, pid
    return True


def _run_forked(keep: tuple[int, ...], body: Callable[[], object]) -> NoReturn:
    """A forked helper's life: no descriptor above the standard ones but `keep`, fresh
    state (module docstring), `body`, exit."""
    code = 1
    try:
        import gc

        from pivot.launch.spawn import forget_services

        low = 3
        for fd in sorted(keep):
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, os.sysconf("SC_OPEN_MAX"))
        sys.argv[:] = ["-c"]
        forget_services()
        _fresh_signals()
        # What the pool held (a 10,000-stage pipeline's manifest) stays shared with it:
        # the collector, which writes into every object it scans, leaves frozen ones alone.
        gc.freeze()
        body()
        code = 0
    except SystemExit as exc:  # how the server ends: the pool's end of its pipe closed
        code = exc.code if isinstance(exc.code, int) else 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _serve(listener_fd: int, alive_r: int, modules: list[str], data: dict[str, Any], root: str) -> None:
    import gc
    from multiprocessing import forkserver

    from pivot.runtime.freshcode import guard_project_bytecode

    for name in modules:  # (as the server does first; then its own heap is frozen too)
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    guard_project_bytecode(root)  # once here, not in each loader and worker (guardhere.py)
    gc.freeze()
    forkserver.main(listener_fd, alive_r, modules, **data)


def _project_imported(root: str, ours: set[str]) -> bool:
    """Whether a module of the project under `root` is imported in this process (not
    Pivot's, nor one installed in a virtual environment inside the project)."""
    from pivot.runtime.preload import installed_path

    tops = tuple({os.path.join(os.path.abspath(root), ""), os.path.join(os.path.realpath(root), "")})
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if (isinstance(file, str) and os.path.abspath(file).startswith(tops)
                and name.partition(".")[0] not in ours and not installed_path(file)):
            return True
    return False


def _fresh_signals() -> None:
    """The signal handling a fresh interpreter starts with: no Python handler but
    SIGINT's, and no fault handler (the pool's own)."""
    import faulthandler

    faulthandler.disable()
    for sig in signal.valid_signals():
        with contextlib.suppress(OSError, ValueError, TypeError):
            handler = signal.getsignal(sig)
            if callable(handler) and handler is not signal.default_int_handler:
                signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
