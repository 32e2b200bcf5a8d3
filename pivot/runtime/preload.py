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
import importlib.util
import logging
import os
import sys
from collections.abc import Iterable
from typing import Any, Protocol

__all__ = [
    "drop_standby", "enabled", "imported_tops", "install_stamp", "keep_standby", "loader_context",
    "serve_loaders", "server_key", "take_standby", "third_party", "warm_up", "worker_context",
]

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
    return file if installed_path(file) else None


def installed_path(file: str) -> bool:
    return any(part in _INSTALLED for part in os.path.normpath(file).split(os.sep))


def install_stamp() -> tuple[tuple[str, int], ...]:
    """The installed-package folders on `sys.path` (site-packages, dist-packages) and
    their mtimes: an install, an upgrade or a removal makes or removes a dist-info folder
    in one, which changes it (a project folder on `sys.path` changes with every save)."""
    found = []
    for entry in sys.path:
        if entry and installed_path(entry):
            try:
                found.append((entry, os.stat(entry).st_mtime_ns))
            except OSError:
                found.append((entry, -1))
    return tuple(found)


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

    if _current != (preload, key):
        if _current is not None:
            # Not waited for (`_let_server_go`): what it forked (a load under way, a
            # worker spared by a code change) runs on, and nothing new comes from it, whose
            # modules may be an upgraded package's old version.
            drop_standby()
            _let_server_go()
        _reap_servers()
        # (pivot/runtime/heapfreeze.py last: what the others imported is frozen)
        multiprocessing.set_forkserver_preload(
            [*_PIVOT_MODULES, *preload, "pivot.runtime.guardhere", "pivot.runtime.heapfreeze"]
        )
        _current = (preload, key)
        log.info("workers fork from a server preloading %s", ", ".join(preload) or "Pivot only")
    return multiprocessing.get_context("forkserver")


# Servers told to stop, reaped once they have: each exits when the last process it forked
# has (each holds its end of the server's "alive" pipe), and a worker spared by a code
# change (workers/processes.py `replace(keep=...)`) may run for hours yet.
_stopping: list[int] = []


def _let_server_go() -> None:
    """The forkserver told to stop, without waiting for it (the stdlib's `_stop` waits,
    which held the pool's loop while a worker of the old server ran its stage). Its
    socket goes at once: nothing is forked from it again."""
    from multiprocessing import forkserver, util

    server: Any = forkserver._forkserver  # (its private fields: what `_stop` resets)
    with server._lock:
        pid = server._forkserver_pid
        if pid is None:
            return
        os.close(server._forkserver_alive_fd)
        address = server._forkserver_address
        server._forkserver_alive_fd = server._forkserver_pid = server._forkserver_address = None
    if address is not None and not util.is_abstract_socket_namespace(address):
        with contextlib.suppress(OSError):
            os.unlink(address)
    _stopping.append(pid)


def _reap_servers() -> None:
    for pid in list(_stopping):
        try:
            done = os.waitpid(pid, os.WNOHANG)[0] != 0
        except ChildProcessError:  # (reaped by someone else)
            done = True
        if done:
            _stopping.remove(pid)


class _Standby(Protocol):
    server: object  # the server it was forked from (`server_key`)

    def alive(self) -> bool: ...

    def drop(self) -> None: ...


# A loader forked from the server ahead of the next load, waiting for it
# (pivot/launch/spawn.py `Standby`).
_standby: list[_Standby] = []
_standby_exit: list[bool] = []  # (dropped at exit, once registered)


def server_key() -> object:
    """What identifies the server forks come from now (a restart changes it)."""
    return _current


def keep_standby(standby: _Standby) -> None:
    drop_standby()
    if not _standby_exit:
        # Before multiprocessing's own exit handler (registered earlier, so run later),
        # which would wait for this child to end while it waits for its load.
        import atexit

        atexit.register(drop_standby)
        _standby_exit.append(True)
    _standby.append(standby)


def take_standby() -> _Standby | None:
    """The loader waiting for the next load, if it is alive and its server the current
    one (else it is stopped)."""
    while _standby:
        standby = _standby.pop()
        if standby.server == _current and standby.alive():
            return standby
        standby.drop()
    return None


def drop_standby() -> None:
    """Stop the waiting loader: it holds its server open (the stdlib's server exits once
    every process it forked has), and the pool is stopping or the server restarting."""
    while _standby:
        _standby.pop().drop()


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
    process when it may be one, as its resource tracker (pivot/runtime/mpforks.py)."""
    if worker_context(preload, key) is not None:
        from multiprocessing import forkserver

        from pivot.runtime.mpforks import fork_server, fork_tracker

        if root is None or not fork_server([*_PIVOT_MODULES, *preload], root, _OURS):
            forkserver.ensure_running()
        elif not fork_tracker():
            from multiprocessing import resource_tracker

            resource_tracker.ensure_running()


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
