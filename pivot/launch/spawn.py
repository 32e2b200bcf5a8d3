"""The pipeline loader as a process: started now, its manifest collected later."""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import select
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgpack

from pivot.errors import InfraError, PipelineError
from pivot.gcpause import paused
from pivot.launch import python_cmd
from pivot.launch.procs import describe_exit
from pivot.launch.scratch import scratch_file
from pivot.pipeline.manifest import Manifest

if TYPE_CHECKING:
    from pivot.launch.early import Early

__all__ = [
    "LOADER_TIMEOUT_S", "Forked", "ForkedLoaderRun", "LoaderExited", "LoaderRun", "Loading", "Standby", "forget_services",
    "given_manifest", "handed_manifest", "python_cmd", "run_loader", "run_view", "stand_by", "start_loader",
    "write_manifest",
]

LOADER_TIMEOUT_S = 300.0
log = logging.getLogger(__name__)

REAP_S = 5.0  # a loader that answered exits within this
T = TypeVar("T")


class Loading(Protocol):
    def result(self, timeout: float = ...) -> Manifest: ...


class LoaderRun:
    """A loader process started now, whose manifest is collected later by `result()`.

    The result travels in a temp file, not a pipe: a manifest larger than the pipe
    buffer would block the loader while we wait for it to exit.
    """

    def __init__(self, root: Path) -> None:
        import subprocess  # (where used here: a no-op's loader is forked, ~1.3 ms it need not pay)

        self.root = root.resolve()
        fd, self.result_path = scratch_file("manifest", ".msgpack")
        try:
            self.proc = subprocess.Popen(
                python_cmd("pivot.runtime.loader", str(self.root), "--result-fd", str(fd)),
                cwd=self.root,
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            os.unlink(self.result_path)
            raise
        finally:
            os.close(fd)

    def result(self, timeout: float = LOADER_TIMEOUT_S) -> Manifest:
        """Wait for the loader. Raises PipelineError for user mistakes."""
        import subprocess

        proc = self.proc
        try:
            try:
                output, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise _too_long(timeout) from None
            except BaseException:  # interrupted (Ctrl-C to this process alone): it goes too
                proc.kill()
                proc.wait()
                raise
            raw = Path(self.result_path).read_bytes()
        finally:
            os.unlink(self.result_path)
        return Manifest.from_wire(_answer(raw, proc.returncode, output.decode(errors="replace").strip())["manifest"])


class ForkedLoaderRun:
    """A loader forked from the pool's preloading server (pivot/runtime/preload.py):
    Pivot's modules and the pipeline's third-party ones are imported already, so a load
    after a code change costs the pipeline's own import, not an interpreter's start
    (a small project: 61 -> 11 ms here). Same answer as `LoaderRun`.

    With no `context`, forked from this process itself (`start_loader`).

    The answer is taken as soon as the child says it is written (a byte on a pipe), not
    once the child has exited: a fork of a process that imported scikit-learn takes
    6-9 ms to exit and have its server report it, on the path from a code edit to its
    stage (issue 14, goal 5). The child is reaped later (`exited`)."""

    def __init__(
        self, root: Path, context: Any = None, preloaded: tuple[str, ...] = (),
        view: Callable[[Manifest], Any] | None = None,
    ) -> None:
        """`view` (forked from this process only): the child answers `view(manifest)`
        instead of the manifest (`run_view`)."""
        from pivot.runtime.preload import take_standby

        self.root = root.resolve()
        self.served = context is not None
        fd, self.result_path = scratch_file("manifest", ".msgpack")
        os.close(fd)
        fd, self.output_path = scratch_file("manifest", ".out")
        os.close(fd)
        _unreaped[:] = [p for p in _unreaped if p.poll() is None]
        if self.served:
            standby = take_standby()
            if isinstance(standby, Standby) and standby.begin(self, preloaded):
                return
        self.ready_r, ready_w = os.pipe()
        ready: Any = ready_w
        args: tuple[Any, ...]
        try:
            if self.served:  # (a Connection travels to a forkserver's child: a plain fd does not)
                from multiprocessing.connection import Connection

                ready = Connection(ready_w, readable=False)
                args = (str(self.root), self.result_path, self.output_path, preloaded, ready)
                self.proc = context.Process(target=_load_in_child, args=args, name="pivot-loader")
            else:
                args = (str(self.root), self.result_path, self.output_path, preloaded, view, ready_w)
                self.proc = Forked(_load_in_child, args)
            self.proc.start()
        except BaseException:
            self._remove()
            raise
        finally:
            # The child's copy is the one that says it is done (or closes as it dies).
            if isinstance(ready, int):
                os.close(ready)
            else:
                ready.close()

    @classmethod
    def adopt(cls, early: Early) -> ForkedLoaderRun:
        """The loader the `pivot` script forked before its imports (pivot/launch/early.py)."""
        run = cls.__new__(cls)
        run.root, run.served = Path(early.root), False
        run.result_path, run.output_path, run.ready_r = early.result_path, early.output_path, early.ready
        run.proc = Forked.adopted(early.pid, early.pidfd)
        return run

    def _remove(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.ready_r)
        for path in (self.result_path, self.output_path):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def result(self, timeout: float = LOADER_TIMEOUT_S) -> Manifest:
        manifest: Manifest = self.answer(timeout)["manifest"]
        return manifest

    def answer(self, timeout: float = LOADER_TIMEOUT_S) -> dict[str, Any]:
        """The child's answer (`manifest`, or `view`); raises PipelineError for user mistakes."""
        proc = self.proc
        try:
            try:
                done = _answered(self.ready_r, proc.sentinel if self.served else proc.pidfd, timeout)
            except BaseException:
                # Interrupted while it loads (a SIGINT to this process alone; a terminal's
                # Ctrl-C reaches both): a load no one will read must not run on.
                proc.kill()
                proc.join()
                raise
            if done is None:
                proc.kill()
                proc.join()
                raise _too_long(timeout)
            if not done:  # it exited without saying so: its exit says why
                proc.join()
            raw = Path(self.result_path).read_bytes()
            printed = Path(self.output_path).read_bytes().decode(errors="replace").strip()
        finally:
            self._remove()
        if not self.served:
            _unreaped.append(proc)
        return _answer(raw, 0 if done else proc.exitcode, printed, pickled=True)


_unreaped: list[Forked] = []  # loaders forked here that answered: reaped at the next fork


class Standby:
    """A loader forked from the pool's server before it is needed, waiting for its one
    load (`ForkedLoaderRun` hands it over): the fork and the loader's start, 11-18 ms
    from a server holding scikit-learn, are off a code edit's way. Like a loader forked
    at the load, it has never imported project code (the server never does); forked
    from a server since restarted, it is not used (pivot/runtime/preload.py)."""

    def __init__(self, context: Any) -> None:
        from pivot.runtime.preload import server_key

        self.server = server_key()
        ours, theirs = context.Pipe(duplex=True)
        try:
            self.proc = context.Process(target=_stand_by, args=(theirs,), name="pivot-loader")
            self.proc.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.conn = ours

    def alive(self) -> bool:
        return bool(self.proc.is_alive())

    def begin(self, run: ForkedLoaderRun, preloaded: tuple[str, ...]) -> bool:
        """Give it `run`'s load; False if it is gone (the load is forked as usual)."""
        try:
            self.conn.send((str(run.root), run.result_path, run.output_path, preloaded))
            run.ready_r = os.dup(self.conn.fileno())  # its answer: a byte, as a forked loader's
        except OSError:
            self.drop()
            return False
        self.conn.close()
        run.proc = self.proc
        return True

    def drop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        if self.proc.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.join(REAP_S)


def _stand_by(conn: Any) -> None:
    """A standby loader's body: the loader's modules imported, then its load, when it
    comes; gone with its pool (the pipe closes) or when dropped."""
    forget_services()
    from pivot.runtime.loader import forked_main

    try:
        load_args = conn.recv()
    except (EOFError, OSError):
        return
    forked_main(*load_args)
    os.write(conn.fileno(), b"1")


def stand_by(context: Any) -> None:
    """Fork the loader of the next load now, from this process's server (`Standby`)."""
    from pivot.runtime.preload import keep_standby

    try:
        keep_standby(Standby(context))
    except OSError as exc:  # the next load forks as usual
        log.warning("could not fork a loader ahead of the next load: %s", exc)


def _answered(ready: int, exit_fd: int, timeout: float) -> bool | None:
    """Wait for the loader's byte on `ready` (True) or its exit on `exit_fd` without one
    (False); None after `timeout`."""
    poller = select.poll()
    poller.register(ready, select.POLLIN)
    poller.register(exit_fd, select.POLLIN)
    if not poller.poll(int(timeout * 1000)):
        return None
    os.set_blocking(ready, False)
    try:
        return os.read(ready, 1) == b"1"  # (written just before an exit: still there)
    except BlockingIOError:
        return False


def _load_in_child(*args: Any) -> None:
    """The forked loader's body. The loader's modules (the fingerprinter: ~18 ms) are
    imported here, in the child, not by the process that forks it (a `repro`, a pool),
    which goes on meanwhile. Its last argument says when the answer is written."""
    *load_args, ready = args
    forget_services()
    from pivot.runtime.loader import forked_main

    forked_main(*load_args)
    os.write(ready if isinstance(ready, int) else ready.fileno(), b"1")


class Forked:
    """`target(*args)` in a child forked from this process: the part of
    multiprocessing.Process that ForkedLoaderRun uses, without importing multiprocessing
    (7 ms) or leaving a resource tracker behind, and the part of Popen a caller that
    holds it as one uses (`poll`, `wait`, `send_signal`). Waits on a pidfd (Linux)."""

    def __init__(self, target: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.target, self.args = target, args
        self.exitcode: int | None = None

    def start(self) -> None:
        for stream in (sys.stdout, sys.stderr):  # else the child writes their buffers again
            stream.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child (measured by the tests' results)
            # This process's objects are never the child's garbage: frozen, the child's
            # collections neither scan them nor copy their pages (pivot/runtime/heapfreeze.py).
            gc.freeze()
            code = 1
            try:
                self.target(*self.args)
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()  # into the child's output file once it redirected
            finally:
                os._exit(code)
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)

    @classmethod
    def adopted(cls, pid: int, pidfd: int) -> Forked:
        """A child of this process forked and started elsewhere (pivot/launch/early.py)."""
        proc = cls(lambda: None, ())
        proc.pid, proc.pidfd = pid, pidfd
        return proc

    def join(self, timeout: float | None = None) -> None:
        if self.exitcode is not None:
            return
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        if poller.poll(None if timeout is None else int(timeout * 1000)):
            self._reap(0)

    def _reap(self, flags: int) -> None:
        pid, status = os.waitpid(self.pid, flags)
        if pid:
            self.exitcode = os.waitstatus_to_exitcode(status)
            os.close(self.pidfd)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    # --- as Popen ---------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        return self.exitcode

    def poll(self) -> int | None:
        if self.exitcode is None:
            self._reap(os.WNOHANG)
        return self.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.join(timeout)
        if self.exitcode is None:
            import subprocess

            raise subprocess.TimeoutExpired(f"process {self.pid}", timeout or 0.0)
        return self.exitcode

    def send_signal(self, sig: int) -> None:
        if self.exitcode is None:  # (its pid may be another process's once reaped)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def forget_services() -> None:
    """Drop Pivot's `workers` and `broker` packages from a forked loader's (or
    server's) modules: a project may have packages of those names, which a fresh
    interpreter would import."""
    for name in [n for n in sys.modules if n.partition(".")[0] in ("workers", "broker")]:
        del sys.modules[name]


def start_loader(root: Path) -> Loading:
    """A loader for `root`, started now: forked from this process (no interpreter to
    start, Pivot's modules imported: ~35 ms sooner) when it runs a single thread, else a
    fresh interpreter. This process must not have imported project code (Pivot's CLI
    and pool never do) nor started ZeroMQ, whose threads `threading` does not count: a
    fork copies no other thread, and a lock one of them held would stay held.
    `PIVOT_PRELOAD=0` starts fresh interpreters (pivot/runtime/preload.py)."""
    from pivot.launch.early import take
    from pivot.runtime.preload import enabled

    early = take(str(root.resolve()))  # forked by the `pivot` script: pivot/launch/early.py
    if early is not None:
        return ForkedLoaderRun.adopt(early)
    if enabled() and threading.active_count() == 1 and has_pidfds():
        return ForkedLoaderRun(root)
    return LoaderRun(root)


@functools.cache
def has_pidfds() -> bool:
    """Linux 5.3+ (a child's exit is waited for with a timeout, without polling)."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


class LoaderExited(PipelineError):
    """The loader ended without an answer: killed (a signal to it alone, the kernel's
    out-of-memory killer), or pipeline.py ended its process."""


def _too_long(timeout: float) -> PipelineError:
    return PipelineError(
        f"loading pipeline.py took longer than {timeout:.0f} s; does importing it run heavy work at module level?"
    )


def _answer(raw: bytes, returncode: int | None, printed: str, pickled: bool = False) -> dict[str, Any]:
    """The answer a loader wrote (`raw`: msgpack, or a pickle from a loader forked from
    this process or its server, pivot/runtime/loader.py `forked_main`), or the error
    to raise."""
    if not raw:
        raise LoaderExited(
            f"the {describe_exit(returncode, 'pipeline loader (the process that imports pipeline.py)')} "
            "before reporting" + (" (out of memory?)" if returncode == -9 else ""),
            detail=printed,
        )
    try:
        result = _unpickled(raw) if pickled else msgpack.unpackb(raw, raw=False)
        if result["ok"]:
            return dict(result)
        detail = result["detail"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InfraError(f"unreadable answer from the pipeline loader: {exc!r}") from exc
    raise PipelineError(result["message"], detail=detail)


def _unpickled(raw: bytes) -> Any:
    import pickle  # (imported where a forked loader answers: ~2 ms of a command's start)

    try:
        with paused():  # 10,000 stages: ~100,000 new containers (pivot/gcpause.py)
            return pickle.loads(raw)
    except (pickle.UnpicklingError, EOFError) as exc:
        raise ValueError(f"a truncated or damaged pickle: {exc}") from exc


class _GivenManifest:
    """A manifest another process loaded and wrote to `path` (as a loader writes its
    answer), read once and removed; `result` may be asked again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.manifest: Manifest | None = None

    def result(self, timeout: float = LOADER_TIMEOUT_S) -> Manifest:
        if self.manifest is not None:
            return self.manifest
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise InfraError(f"the pipeline handed over in {self.path} is gone: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self.manifest = Manifest.from_wire(_answer(raw, 0, "")["manifest"])
        return self.manifest


class _Handed:
    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def result(self, timeout: float = LOADER_TIMEOUT_S) -> Manifest:
        return self.manifest


def handed_manifest(manifest: Manifest) -> Loading:
    """The pipeline as this process (forked from the one that loaded it) has it."""
    return _Handed(manifest)


def given_manifest(path: Path) -> Loading:
    """The pipeline as the process that started this one loaded it (`write_manifest`)."""
    return _GivenManifest(path)


def write_manifest(manifest: Manifest) -> Path:
    """`manifest` in a scratch file, for a process started next (`given_manifest`)."""
    fd, path = scratch_file("manifest", ".msgpack")
    with os.fdopen(fd, "wb") as f:
        f.write(msgpack.packb({"ok": True, "manifest": manifest.to_wire()}, use_bin_type=True))
    return Path(path)


def run_view(root: Path, view: Callable[[Manifest], T], timeout: float = LOADER_TIMEOUT_S) -> T:
    """`view(manifest)` of the pipeline at `root`, computed by the loader forked from this
    process (`start_loader`'s conditions): the manifest is neither sent nor read again
    (10,000 stages: ~0.1 s of packing, unpacking and checking, for a `pivot list`). Else
    on the manifest a fresh loader sends. `view` runs with the project's modules
    imported (in the child) and returns what msgpack packs. It is a view of the stages'
    declarations: the forked loader takes no code fingerprints (pivot/runtime/loader.py
    `build_manifest(code=False)`)."""
    from pivot.runtime.preload import enabled

    if enabled() and threading.active_count() == 1 and has_pidfds():
        answer: T = ForkedLoaderRun(root, view=view).answer(timeout)["view"]
        return answer
    return view(LoaderRun(root).result(timeout))


def run_loader(root: Path, timeout: float = LOADER_TIMEOUT_S) -> Manifest:
    """Load the pipeline in a process that has never imported it: forked from this
    process's preloading server if it has one (a pool's), else as `start_loader` does.
    Raises PipelineError for user mistakes."""
    from pivot.runtime.preload import loader_context

    server = loader_context()
    if server is not None:
        try:
            return ForkedLoaderRun(root, *server).result(timeout)
        finally:
            stand_by(server[0])  # the next one's, forked now
    return start_loader(root).result(timeout)
