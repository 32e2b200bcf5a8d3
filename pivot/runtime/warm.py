"""`python script.py ARGS` in a warm process (issue 13, point 4).

A command stage that runs a Python script (or `python -m pkg.mod`) with the worker's
own interpreter is not started as a new interpreter: the worker forks, and the child
becomes what `python script.py ARGS` would have been, then runs the script as
`__main__`. The worker was forked from the pool's preloading server, so the script's
third-party imports (numpy, pandas, torch...: pivot/runtime/preload.py, fed with the
scripts' imports by pivot/state/scripts.py) are already done, and what a fresh
interpreter spends seconds on costs a fork.

What the child resets, so that a script sees what a fresh interpreter gives it:
- its own session (so cancel, `--restart` and a lost pool stop everything it starts,
  pivot/runtime/command.py), default signal handlers and mask, stdin from /dev/null;
- the working directory (the stage's wdir), the environment (the params added),
  `sys.argv`, `sys.orig_argv`, `sys.path` (the script's folder, or the working
  directory for `-m`, then the interpreter's own path: never the project root the
  worker added), `__main__` with its `__file__`;
- no project module: every module loaded from the project (pipeline.py and what it
  imported) is dropped from `sys.modules`, so the script's imports read its files now;
- fresh `sys.stdout`/`sys.stderr` on the attempt's files (a lock another thread of the
  worker held at the fork is never touched), flushed every 50 ms as a stage's are;
- logging without handlers, the warning filters the interpreter started with, no
  `atexit` handler of the worker's, multiprocessing as in a main process (its spawn
  and forkserver methods start their helpers afresh), numpy's global random state
  reseeded (a fork would repeat the worker's);
- at the end, as Python's own shutdown: non-daemon threads joined, `atexit` handlers
  run, the streams flushed, the exit code of `sys.exit` (0, N, a message: 1).

It differs from a fresh interpreter in what cannot be undone in a running one: modules
of Pivot and third-party ones are already imported (a library that monkeypatches at
import, or reads an environment variable only then, sees the worker's moment), and
`sys.flags` and the hash seed are the worker's. Interpreter flags other than `-u`,
`-B` and `-W` run cold, as does any command a shell must read (pipes, `&&`,
redirections, `$VAR`, globs). Opt out per stage (`warm=False`, dvc.yaml's
`meta: {pivot: {warm: false}}`), for the project (`[tool.pivot]` `warm = false` in
pyproject.toml) or everywhere (`PIVOT_WARM=0`).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import sys
from dataclasses import field
from pathlib import Path
from typing import Any, NoReturn

from pivot.protocol.record import Record, record

__all__ = ["ForkedProcess", "ScriptRun", "enabled", "script_run", "start"]

# The interpreter's own path, as the worker started (before the loader put the project
# root in front, or pipeline.py changed it), without the entry Python put first for its
# main script, module or -c (none with -P): the worker's server may be a fork of a
# process started as the `pivot` script, whose folder a script's interpreter never has
# (pivot/runtime/mpforks.py).
_BASE_PATH = [p for p in (sys.path if sys.flags.safe_path else sys.path[1:]) if p]
_BASE_WARNINGS: list[Any] = []
with contextlib.suppress(Exception):
    import warnings

    _BASE_WARNINGS = list(warnings.filters)

_LIBC: list[Any] = []
_SHELL_CHARS = frozenset("|&;<>()$`\\\n*?[]{}~#!")  # quotes are read as a shell would (shlex)
_PYTHON_NAMES = ("python", "python3", f"python3.{sys.version_info.minor}")


def enabled(root: Path | None = None) -> bool:
    """Warm scripts are on unless `PIVOT_WARM=0`, or the project's pyproject.toml says
    `[tool.pivot]` `warm = false` (a setting committed with the project, for scripts that
    need a clean interpreter). Read at each command: an edit applies to the next run."""
    if os.environ.get("PIVOT_WARM", "1") == "0":
        return False
    if root is None:
        return True
    from pivot.pipeline.settings import setting

    return setting(root, "warm", True) is not False


@record
class ScriptRun(Record):
    """What `python [-u] [-B] [-W arg] (script | -m module) ARGS` asks for."""

    module: bool  # -m: `target` is a module name; else a script's path, as given
    target: str
    args: tuple[str, ...]
    program: str  # as given (argv[0] of the interpreter)
    flags: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    @property
    def unbuffered(self) -> bool:
        return "-u" in self.flags


def script_run(line: str | list[str], env: dict[str, str]) -> ScriptRun | None:
    """The script run `line` asks for, if this interpreter can run it warm: its program
    is this interpreter (found on the command's PATH), with no flag it cannot honour and
    nothing a shell would have to read."""
    if isinstance(line, str):
        if any(ch in _SHELL_CHARS for ch in line):
            return None
        try:
            tokens = shlex.split(line)
        except ValueError:
            return None
    else:
        tokens = list(line)
    if not tokens or not _is_this_python(tokens[0], env):
        return None
    flags: list[str] = []
    warns: list[str] = []
    i = 1
    while i < len(tokens):
        token = tokens[i]
        if token in ("-u", "-B"):
            flags.append(token)
        elif token == "-W" and i + 1 < len(tokens):
            warns.append(tokens[i + 1])
            i += 1
        elif token.startswith("-W") and len(token) > 2:
            warns.append(token[2:])
        elif token == "-m" and i + 1 < len(tokens):
            return ScriptRun(True, tokens[i + 1], tuple(tokens[i + 2:]), tokens[0], tuple(flags), tuple(warns))
        elif token.startswith("-m") and len(token) > 2:
            return ScriptRun(True, token[2:], tuple(tokens[i + 1:]), tokens[0], tuple(flags), tuple(warns))
        elif token.startswith("-") or token == "":
            return None  # -c, -, -O, -I, -X...: a fresh interpreter's business
        else:
            return ScriptRun(False, token, tuple(tokens[i + 1:]), tokens[0], tuple(flags), tuple(warns))
        i += 1
    return None


def _is_this_python(program: str, env: dict[str, str]) -> bool:
    if Path(program).name not in _PYTHON_NAMES:
        return False
    found = program if "/" in program else shutil.which(program, path=env.get("PATH", os.defpath))
    if found is None:
        return False
    # The same folder as this interpreter (a venv's python is a link to the system's:
    # resolving it would take another venv's for ours).
    return os.path.dirname(os.path.abspath(found)) == os.path.dirname(os.path.abspath(sys.executable))


class ForkedProcess:
    """The warm child, waited for as a subprocess.Popen is (its group is its pid)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is not None:  # only used after a SIGKILL: short
            import time

            deadline = time.monotonic() + timeout
            while self.poll() is None:
                if time.monotonic() > deadline:
                    import subprocess

                    raise subprocess.TimeoutExpired(str(self.pid), timeout)
                time.sleep(0.01)
            return self.returncode  # type: ignore[return-value]
        if self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)  # a cancel's exception interrupts it
            except ChildProcessError:
                self.returncode = -1
            else:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def start(run: ScriptRun, cwd: Path, env: dict[str, str], root: Path) -> ForkedProcess:
    """Fork the warm child that runs `run`; returns once it leads a session of its own
    (so that its group can be signalled at once)."""
    if not _LIBC:  # once per worker, not in every child
        import ctypes

        _LIBC.append(ctypes.CDLL(None))
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.setsid()
            os.write(ready_w, b"1")
            os.close(ready_w)
            _become_fresh(run, cwd, env, root)
            _run(run)
        except BaseException:  # never back into the worker's code
            with contextlib.suppress(BaseException):
                import traceback

                os.write(2, f"pivot: the warm process failed to start the script:\n{traceback.format_exc()}".encode())
            os._exit(70)
    os.close(ready_w)
    try:
        os.read(ready_r, 1)
    except BaseException:  # cancelled this very moment: the child goes too
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    finally:
        os.close(ready_r)
    return ForkedProcess(pid)


def _become_fresh(run: ScriptRun, cwd: Path, env: dict[str, str], root: Path) -> None:
    import gc
    import importlib

    gc.freeze()  # the worker's objects: never scanned, never finalized here
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD,
                signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python starts
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    _fresh_streams(run.unbuffered or bool(env.get("PYTHONUNBUFFERED")))
    folders = {root.resolve(), cwd.resolve()}
    first = str(cwd.resolve()) if run.module else os.path.dirname(os.path.realpath(run.target))
    folders.add(Path(first))
    sys.path[:] = [first, *(p for p in _BASE_PATH if Path(p).resolve() not in folders)]
    _drop_project_modules(folders)
    importlib.invalidate_caches()
    # As given (`-m` becomes the module's file when it is found, as Python does).
    sys.argv = ["-m" if run.module else run.target, *run.args]
    sys.orig_argv = [run.program, *run.flags, *(f"-W{w}" for w in run.warnings),
                     *(["-m"] if run.module else []), run.target, *run.args]
    if "-B" in run.flags:
        sys.dont_write_bytecode = True
    _fresh_logging_and_warnings(run.warnings)
    _fresh_multiprocessing(cwd)
    _fresh_atexit()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        with contextlib.suppress(Exception):
            numpy.random.seed()


def _fresh_streams(unbuffered: bool) -> None:
    import io

    from pivot.runtime.capture import start_flushing

    def writer(fd: int, like: Any, line_buffering: bool) -> io.TextIOWrapper:
        raw = io.FileIO(fd, "w", closefd=False)
        encoding = getattr(like, "encoding", None) or "utf-8"
        errors = getattr(like, "errors", None) or "strict"
        if unbuffered:
            return io.TextIOWrapper(raw, encoding=encoding, errors=errors, write_through=True)
        return io.TextIOWrapper(io.BufferedWriter(raw), encoding=encoding, errors=errors,
                                line_buffering=line_buffering)

    out = writer(1, sys.__stdout__, False)
    err = writer(2, sys.__stderr__, True)
    stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                             encoding=getattr(sys.__stdin__, "encoding", None) or "utf-8")
    sys.stdout, sys.stderr, sys.stdin = out, err, stdin
    for name, stream in (("__stdout__", out), ("__stderr__", err), ("__stdin__", stdin)):
        setattr(sys, name, stream)  # what a script restores, after redirecting
    start_flushing([out, err])


def _drop_project_modules(folders: set[Path]) -> None:
    """Forget every module loaded from the project: the script imports its own, now."""
    # A module's file is named from the sys.path entry it was found on: the folders as
    # given and resolved, and no realpath per module (hundreds of them, at every run).
    inside = tuple({f"{f}{os.sep}" for folder in folders for f in (str(folder), os.path.realpath(folder))})
    skip = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}", f"{os.sep}.venv{os.sep}")
    for name, module in list(sys.modules.items()):
        files = [getattr(module, "__file__", None) or "", *list(getattr(module, "__path__", None) or [])]
        for file in files:
            if isinstance(file, str) and file.startswith(inside) and not any(s in file for s in skip):
                del sys.modules[name]
                break
    sys.modules.pop("pipeline", None)


def _fresh_logging_and_warnings(options: tuple[str, ...]) -> None:
    import logging
    import warnings

    logging.disable(logging.NOTSET)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    warnings.filters[:] = _BASE_WARNINGS  # type: ignore[index]
    warnings._filters_mutated()  # type: ignore[attr-defined]
    for option in options:  # as -W does (the last given wins: inserted in front)
        with contextlib.suppress(Exception):
            warnings._setoption(option)  # type: ignore[attr-defined]


def _fresh_multiprocessing(cwd: Path) -> None:
    """The child is a main process: the worker's pool, children, finalizers,
    resource tracker and forkserver are not its own."""
    if "multiprocessing" not in sys.modules:
        return
    import itertools
    from multiprocessing import forkserver, process, resource_tracker, util

    class _MainProcess(process.BaseProcess):  # as multiprocessing/process.py's own (it deletes it)
        def __init__(self) -> None:
            self._identity = ()
            self._name = "MainProcess"
            self._parent_pid = None
            self._popen = None
            self._closed = False
            self._config = {"authkey": process.AuthenticationString(os.urandom(32)),  # type: ignore[attr-defined]
                            "semprefix": "/mp"}

        def close(self) -> None:
            pass

    process._current_process = _MainProcess()  # type: ignore[attr-defined]
    process._parent_process = None  # type: ignore[attr-defined]
    process._children = set()  # type: ignore[attr-defined]
    process._process_counter = itertools.count(1)  # type: ignore[attr-defined]
    process.ORIGINAL_DIR = str(cwd)  # type: ignore[attr-defined]
    util._finalizer_registry.clear()  # type: ignore[attr-defined]
    resource_tracker._resource_tracker = resource_tracker.ResourceTracker()
    forkserver._forkserver = forkserver.ForkServer()
    import multiprocessing.context as context

    context._default_context._actual_context = None  # type: ignore[attr-defined]


def _fresh_atexit() -> None:
    import atexit

    atexit._clear()
    if "multiprocessing.util" in sys.modules:  # registered when multiprocessing was imported
        from multiprocessing import util

        atexit.register(util._exit_function)  # type: ignore[attr-defined]


def _run(run: ScriptRun) -> NoReturn:
    """Run the script as `__main__`, then shut down as Python does, and exit."""
    import runpy
    import types

    code = 0
    interrupted = False
    try:
        if run.module:
            runpy._run_module_as_main(run.target, alter_argv=True)  # type: ignore[attr-defined]
        else:
            path = os.path.join(os.getcwd(), run.target)  # as Python: joined, not normalized
            try:
                with open(path, "rb") as f:
                    source = f.read()
            except OSError as exc:
                sys.stderr.write(f"{run.program}: can't open file {path!r}: [Errno {exc.errno}] {exc.strerror}\n")
                _exit(2)
            main = types.ModuleType("__main__")
            main.__file__ = path
            main.__builtins__ = __builtins__  # type: ignore[attr-defined]
            from importlib.machinery import SourceFileLoader

            main.__loader__ = SourceFileLoader("__main__", path)
            main.__spec__ = None
            sys.modules["__main__"] = main
            exec(compile(source, path, "exec"), main.__dict__)  # the script is the stage
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        _print_exception(exc)
        code = 1
    _shutdown()
    if interrupted:  # as Python: it dies of the SIGINT it got
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    _exit(code)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    with contextlib.suppress(Exception):
        sys.stderr.write(f"{exc.code}\n")
    return 1


def _print_exception(exc: BaseException) -> None:
    """As Python prints it: the script's frames, not the ones of this module."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    with contextlib.suppress(Exception):
        sys.excepthook(type(exc), exc, tb)


def _shutdown() -> None:
    import atexit
    import threading

    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()


def _exit(code: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    with contextlib.suppress(BaseException):  # C code's buffered stdout, as exit() would
        _LIBC[0].fflush(None)
    os._exit(code)
