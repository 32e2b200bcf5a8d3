"""Third-party imports preloaded in a forkserver, so new workers start warm.

A code change replaces every worker (no module of the old code may survive). Fresh
workers would import numpy, torch, pandas... again, which can take seconds. Instead the
pool's worker processes are forked from a multiprocessing forkserver that imported the
pipeline's third-party modules once, and never any project module: a worker forked from
it starts with those imports done and none of the user's code.

Loader side (`third_party`): the top-level modules the pipeline imported or its stages
import in their bodies (the fingerprinter's externals) whose files live in a
site-packages or dist-packages folder, plus a key over their files' stat, so that a
package upgraded since (pip install) restarts the forkserver instead of forking stale
code. Pool side (`worker_context`): the context for its workers, with the forkserver restarted
when the list or the key changed.

The same server forks the pool's pipeline loaders once it runs (`loader_context`,
pivot/launch/spawn.py `ForkedLoaderRun`): a load after a code change then costs the
pipeline's own import, not an interpreter's start and its libraries' imports. It
preloads Pivot's worker modules too, so it serves pipelines without third-party imports
as well.

`PIVOT_PRELOAD=0` turns it off (workers and loaders in fresh interpreters): a
library that starts threads when imported is not safe to fork.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Iterable
from typing import Any, NoReturn, Protocol

__all__ = ["enabled", "imported_tops", "load_ended", "load_started", "loader_context", "serve_loaders", "third_party", "warm_up", "worker_context"]

log = logging.getLogger(__name__)

_INSTALLED = ("site-packages", "dist-packages")
_OURS = frozenset({"pivot", "broker", "workers"})


def enabled() -> bool:
    return os.environ.get("PIVOT_PRELOAD", "1") != "0"


def _installed_file(top: str) -> str | None:
    """The file of top-level module `top` if it is an installed (third-party) one."""
    module = sys.modules.get(top)
    file = getattr(module, "__file__", None) if module is not None else None
    if file is None and module is None:
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return None
        file = spec.origin if spec is not None else None
    if not file:
        return None
    return file if _installed_path(file) else None


def _installed_path(file: str) -> bool:
    return any(part in _INSTALLED for part in os.path.normpath(file).split(os.sep))


def imported_tops() -> set[str]:
    """The top-level names of every module imported in this process so far."""
    return {name.partition(".")[0] for name in list(sys.modules)}


def third_party(
    externals: Iterable[str], pivots: Iterable[str] = (), submodules: Iterable[str] = (),
) -> tuple[tuple[str, ...], str]:
    """(modules to preload, a key that changes when one of their files does). `pivots`:
    the ones Pivot itself imported before the pipeline, left out (the server imports
    those anyway), so that a loader forked from the server, which has more of them, and
    a fresh one give the same list for the same pipeline. `submodules`: dotted modules the
    stages use or import (`sklearn.linear_model`), preloaded too: a package does not
    import them all itself (sklearn's take ~50 ms more)."""
    import xxhash

    tops = imported_tops() | set(externals)
    found: list[tuple[str, str]] = []
    for top in sorted(tops - _OURS - set(pivots)):
        if not top or top.startswith("_"):
            continue
        file = _installed_file(top)
        if file is not None:
            found.append((top, file))
    h = xxhash.xxh3_64()
    for top, file in found:
        try:
            st = os.stat(file)
            stamp = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "?"
        h.update(f"{top}\0{file}\0{stamp}\n".encode())
    tops_found = {top for top, _ in found}
    deeper = sorted({m for m in submodules if "." in m and m.partition(".")[0] in tops_found})
    return (*(top for top, _ in found), *deeper), h.hexdigest() if found else ""


_current: tuple[tuple[str, ...], str] | None = None
# Pivot's own modules a worker or a loader runs: imported once in the server, never again.
_PIVOT_MODULES = ("pivot.runtime.worker",)


def worker_context(preload: tuple[str, ...], key: str) -> Any:
    """The multiprocessing context for the pool's workers and its loaders: a
    forkserver preloading Pivot's modules and `preload`, restarted when (`preload`,
    `key`) changed; None (fresh interpreters) when off."""
    global _current
    if not enabled():
        return None
    import multiprocessing
    from multiprocessing import forkserver

    if _current != (preload, key):
        if _current is not None:
            if _running_loads():
                # The server exits once every process it forked has: it would wait for
                # the loads (and hold the pool's loop). Its modules are stale, which
                # makes imports slower, never wrong; the next call restarts it.
                return multiprocessing.get_context("forkserver")
            # A private stdlib method (its unit tests use it); the server forks no new
            # worker after this, and workers forked before are already stopped.
            forkserver._forkserver._stop()  # type: ignore[attr-defined]
        multiprocessing.set_forkserver_preload([*_PIVOT_MODULES, *preload])
        _current = (preload, key)
        log.info("workers fork from a server preloading %s", ", ".join(preload) or "Pivot only")
    return multiprocessing.get_context("forkserver")


class _Load(Protocol):
    answered: bool

    def exited(self) -> bool: ...

    def reap(self) -> None: ...


_loads: set[_Load] = set()  # forked loads running (pivot/launch/spawn.py)


def load_started(load: _Load) -> None:
    for gone in [earlier for earlier in _loads if earlier.answered and earlier.exited()]:
        _loads.discard(gone)  # (answered loads stay until they have exited)
    _loads.add(load)


def load_ended(load: _Load) -> None:
    _loads.discard(load)


def _running_loads() -> bool:
    """Whether a load forked from the server is still running. One that answered is only
    exiting (a few ms): waited for."""
    for load in list(_loads):
        if load.answered and not load.exited():
            load.reap()
        if load.exited():
            _loads.discard(load)
    return bool(_loads)


def loader_context() -> tuple[Any, tuple[str, ...]] | None:
    """The forkserver's context once this process has one (`worker_context`), and the
    third-party modules it preloads, for a pipeline loader forked warm
    (pivot/launch/spawn.py); else None: a fresh interpreter."""
    if _current is None or not enabled():
        return None
    import multiprocessing

    return multiprocessing.get_context("forkserver"), _current[0]


def serve_loaders(preload: tuple[str, ...], key: str) -> None:
    """Have the server running now (it imports in the background): the next pipeline
    load forks from it instead of starting an interpreter. A server already set up keeps
    its modules: restarting it would break the workers forked from it (their exit status
    comes through it); a stale list only makes imports slower, never wrong."""
    if _current is not None or worker_context(preload, key) is not None:
        from multiprocessing import forkserver

        if enabled():
            forkserver.ensure_running()


def start_server(preload: tuple[str, ...], key: str, root: str | None = None) -> None:
    """The server started now (it imports in the background, beside this process's own
    start), for workers known to be coming. With `root` (the project's), a fork of this
    process when it may be one (`_fork_server`)."""
    if worker_context(preload, key) is not None:
        from multiprocessing import forkserver

        if root is None or not _fork_server([*_PIVOT_MODULES, *preload], root):
            forkserver.ensure_running()


def _fork_server(modules: list[str], root: str) -> bool:
    """multiprocessing's forkserver, started as a fork of this process instead of a
    fresh interpreter: the same server (`forkserver.main`, its protocol, its exit when
    the pool's end of its pipe closes) without an interpreter's start and the imports
    this process has done already (a pool that `pivot repro` forked has Pivot's: the
    server's CPU 0.13 -> ~0.05 s here, ready that much sooner). Only while this process
    has one thread (a fork of a thread's lock held is a deadlock) and none of the
    project's modules (a worker must import the project's code as it is when it runs).
    False: not started (`ensure_running` starts it the usual way)."""
    import socket
    import threading
    from multiprocessing import connection, forkserver, resource_tracker, spawn

    server: Any = forkserver._forkserver
    if threading.active_count() != 1 or server._forkserver_pid is not None or _project_imported(root):
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
            _serve_forked(listener.fileno(), alive_r, modules, data)
        os.close(alive_r)
    server._forkserver_address = address
    server._forkserver_alive_fd = alive_w
    server._forkserver_pid = pid
    resource_tracker.ensure_running()  # (a fresh interpreter of its own: the stdlib's)
    return True


def _project_imported(root: str) -> bool:
    """Whether a module of the project under `root` is imported in this process (not
    Pivot's, nor one installed in a virtual environment inside the project)."""
    tops = tuple({os.path.join(os.path.abspath(root), ""), os.path.join(os.path.realpath(root), "")})
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if (isinstance(file, str) and os.path.abspath(file).startswith(tops)
                and name.partition(".")[0] not in _OURS and not _installed_path(file)):
            return True
    return False


def _serve_forked(listener_fd: int, alive_r: int, modules: list[str], data: dict[str, Any]) -> NoReturn:
    """The forked server's life: what the stdlib's `python -c` server runs, with its
    argv and no descriptor of this process's but its two and the standard ones."""
    import gc
    from multiprocessing import forkserver

    from pivot.launch.spawn import forget_services

    code = 1
    try:
        keep = sorted({listener_fd, alive_r})
        os.closerange(3, keep[0])
        os.closerange(keep[0] + 1, keep[-1])
        os.closerange(keep[-1] + 1, os.sysconf("SC_OPEN_MAX"))
        sys.argv[:] = ["-c"]
        forget_services()  # a project's own `workers` or `broker` is what its stages import
        _fresh_signals()
        # What the pool held (a 10,000-stage pipeline's manifest) stays shared with it
        # and with the workers: the collector, which writes into every object it scans,
        # leaves frozen ones alone. Frozen again once the server's own imports are done.
        gc.freeze()
        for name in modules:  # (as the server does first)
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
        gc.freeze()
        forkserver.main(listener_fd, alive_r, modules, **data)
        code = 0
    except SystemExit as exc:  # how it ends: the pool's end of its pipe closed
        code = exc.code if isinstance(exc.code, int) else 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _fresh_signals() -> None:
    """The signal handling a fresh interpreter starts with (its workers inherit it): no
    Python handler but SIGINT's, and no fault handler (the pool's own)."""
    import faulthandler
    import signal

    faulthandler.disable()
    for sig in signal.valid_signals():
        with contextlib.suppress(OSError, ValueError, TypeError):
            handler = signal.getsignal(sig)
            if callable(handler) and handler is not signal.default_int_handler:
                signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def warm_up(preload: tuple[str, ...], key: str) -> None:
    """Restart a forkserver already in use whose modules changed now (it imports in the
    background), so the next workers do not wait for it. The first one starts with the
    first workers: a run with nothing to do starts none."""
    if _current is None:
        return
    context = worker_context(preload, key)
    if context is not None:
        from multiprocessing import forkserver

        forkserver.ensure_running()
