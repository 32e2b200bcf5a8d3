"""The pipeline's loader, forked by the `pivot` script first thing (pivot/cli/entry.py)
for the commands that load the pipeline at once (`repro`, `status`): before the command
line's own imports (click, the state and the broker's modules: ~45 ms here), which then
run beside the load instead of before it. The command takes it where it would have
forked its loader (pivot/launch/spawn.py `start_loader`); one it does not take (another
project root, `--force` found by click, a usage error) is killed at exit.

It is forked only where the command's own fork would be (a single thread, no ZeroMQ,
pidfds), for a project that no engine serves (no `.pivot/run/endpoints.json`): there the
command asks the engine instead of loading. A project's first run gains most (no lock to
read: the load is all the command waits for before its engine starts).
Nothing but `os` and `sys` is imported here until it forks: every command pays for it.
The modules both the loader and the command import are imported just before the fork,
once (`_import_shared`).
"""

from __future__ import annotations

import os

__all__ = ["Early", "EarlyLocks", "discard", "fork_loader", "fork_lock_reader", "take", "take_locks"]

_COMMANDS = frozenset({"repro", "status"})
# With these the command loads nothing itself (an engine runs it, or every stage runs,
# or it only prints its help); short ones may come together (`-fj2`).
_SKIPPING = frozenset({"--force", "--watch", "--broker", "--help"})
_SKIPPING_SHORT = frozenset("fwh")
_TEMP_VARIABLES = ("TMPDIR", "TEMP", "TMP")
# Sizes of a `.pivot/stages` folder (its entries' names: ~20 bytes each on tmpfs and
# btrfs, in 4 KiB blocks on ext4). Above SOME_LOCKS_BYTES (~200 locks) its locks are read
# by a process of their own (`fork_lock_reader`): with fewer, the process's start (its
# imports, the state cache) costs about what reading them in the command's thread does.
# Below MANY_LOCKS_BYTES (~700 locks) the loader is done well before the command needs
# it, and the reader waits for its exit: the two shared a core, and the command the other
# one less (300 stages: -6 to -9 ms a no-op); with more, the loader is what the command
# waits for, and the reader starts at once (docs/benchmarks.md).
SOME_LOCKS_BYTES = 4096
MANY_LOCKS_BYTES = 16384


class Early:
    """A loader forked here: what `spawn.ForkedLoaderRun` needs to wait for its answer."""

    __slots__ = ("output_path", "pid", "pidfd", "ready", "result_path", "root")

    def __init__(self, root: str, pid: int, pidfd: int, ready: int, result_path: str, output_path: str) -> None:
        self.root, self.pid, self.pidfd, self.ready = root, pid, pidfd, ready
        self.result_path, self.output_path = result_path, output_path


class EarlyLocks:
    """A lock reader forked here beside the loader (pivot/state/lock.py `LockPrefetch`):
    every lock, and the digest of every file they name, down a pipe."""

    __slots__ = ("pid", "read_fd", "root")

    def __init__(self, root: str, pid: int, read_fd: int) -> None:
        self.root, self.pid, self.read_fd = root, pid, read_fd

    def answer(self) -> bytes:
        """Its answer once it exited well (read to the end: it waits on a full pipe till
        then); ChildProcessError when it did not."""
        chunks = []
        try:
            while chunk := os.read(self.read_fd, 1 << 20):
                chunks.append(chunk)
        finally:
            os.close(self.read_fd)
            self.read_fd = -1
            _, status = os.waitpid(self.pid, 0)
        if status != 0:
            raise ChildProcessError(f"the lock reader (pid {self.pid}) ended with status {status}")
        return b"".join(chunks)


_forked: list[Early] = []
_lock_readers: list[EarlyLocks] = []


def _forget() -> None:
    """In a process forked from the command (its pool, a loader): those are the
    command's; killed by this one's exit, their pids might be another's by then."""
    _forked.clear()
    _lock_readers.clear()


os.register_at_fork(after_in_child=_forget)


def fork_loader(argv: list[str]) -> None:
    """Fork the loader of the project here if `argv` (the script's arguments) is a
    command that loads it at once."""
    if not _wanted(argv) or not hasattr(os, "pidfd_open"):
        return
    root = _root(os.path.realpath(os.getcwd()))
    if root is None:
        return
    if os.path.lexists(os.path.join(root, ".pivot", "run", "endpoints.json")):
        return
    try:
        result_path = _scratch(".msgpack")
        output_path = _scratch(".out")
    except OSError:
        return
    _import_shared()
    with _sigint_held():
        ready, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child (measured by the tests' results)
            _sigint_released()
            os.close(ready)
            _load(root, result_path, output_path, ready_w)
        os.close(ready_w)
        early = Early(root, pid, -1, ready, result_path, output_path)
        _forked.append(early)
        if len(_forked) == 1:
            import atexit

            atexit.register(discard)
        try:
            early.pidfd = os.pidfd_open(pid)
        except OSError:
            discard()
            return
        from pivot.faults import reached

        reached("forked")
        try:
            locks_size = os.stat(os.path.join(root, ".pivot", "stages")).st_size
        except OSError:
            return  # (a first run has no lock to read)
        if locks_size > SOME_LOCKS_BYTES:
            fork_lock_reader(root, after=early.pidfd if locks_size < MANY_LOCKS_BYTES else -1)


class _sigint_held:  # (a context manager; contextlib is not imported here)
    """Ctrl-C held back (pending) until the forks are done and recorded: raised in an
    at-fork hook (logging's, which releases its lock) Python ignores it and that lock
    stays held (the command hung ~8 s, then said "a Pivot problem"); raised between a
    fork and its record, the child would be no one's. It is raised as the block ends."""

    def __enter__(self) -> None:
        import signal

        self.before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def __exit__(self, *_: object) -> None:
        import signal

        signal.pthread_sigmask(signal.SIG_SETMASK, self.before)


def _sigint_released() -> None:  # pragma: no cover - in the children
    import signal

    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def fork_lock_reader(root: str, after: int = -1) -> EarlyLocks | None:
    """The locks are read and the files they name hashed in a process of their own: in a
    thread of the command they took its interpreter's lock from its imports and the
    loader's answer (1000 stages: ~34 ms more of a no-op, docs/benchmarks.md). With
    `after` (a pidfd: the loader's), it begins once that process has exited."""
    try:
        read_fd, write_fd = os.pipe()
    except OSError:
        return None
    with _sigint_held():
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child (measured by the tests' results)
            _sigint_released()
            os.close(read_fd)
            _read_locks(root, write_fd, after)
        os.close(write_fd)
        reader = EarlyLocks(root, pid, read_fd)
        _lock_readers.append(reader)
        if len(_lock_readers) == 1 and not _forked:
            import atexit

            atexit.register(discard)
    return reader


def take(root: str) -> Early | None:
    """The loader forked for `root` (a resolved path), now the caller's; None if there is
    none (one forked for another root is killed)."""
    early = _forked.pop() if _forked else None
    if early is not None and early.root != root:
        _forked.append(early)
        discard()
        return None
    return early


def take_locks(root: str) -> EarlyLocks | None:
    """The lock reader forked for `root` (a resolved path), now the caller's; None if
    there is none (one forked for another root is killed)."""
    reader = _lock_readers.pop() if _lock_readers else None
    if reader is not None and reader.root != root:
        _lock_readers.append(reader)
        discard()
        return None
    return reader


def discard() -> None:
    """Kill and reap a loader or lock reader no command took, and remove the loader's files."""
    import contextlib

    while _lock_readers:
        reader = _lock_readers.pop()
        with contextlib.suppress(OSError):
            os.kill(reader.pid, 9)
            os.waitpid(reader.pid, 0)
        with contextlib.suppress(OSError):
            os.close(reader.read_fd)
    while _forked:
        early = _forked.pop()
        with contextlib.suppress(OSError):
            os.kill(early.pid, 9)
            os.waitpid(early.pid, 0)
        for fd in (early.ready, early.pidfd):
            if fd >= 0:
                os.close(fd)
        for path in (early.result_path, early.output_path):
            with contextlib.suppress(OSError):
                os.unlink(path)


def _import_shared() -> None:
    """The modules the loader imports that the command imports too (all but ~5 ms of the
    loader's): imported after the fork, each process imported them itself, ~30 ms of CPU
    twice on two cores, beside the command's own path (a no-op's CPU, all processes:
    chain 100 144 -> 118 ms, layered 1000 222 -> 197 ms; docs/benchmarks.md). The loader
    starts later by as much as its imports are shorter."""
    import logging  # noqa: F401

    import msgpack  # noqa: F401
    import xxhash  # noqa: F401

    import pivot.pipeline.manifest
    import pivot.pipeline.params  # noqa: F401


def _wanted(argv: list[str]) -> bool:
    if not argv or argv[0] not in _COMMANDS:
        return False
    if os.environ.get("PIVOT_PRELOAD", "1") == "0" or os.environ.get("PIVOT_BROKER"):
        return False
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg.partition("=")[0] in _SKIPPING:
            return False
        if arg[:1] == "-" and arg[1:2] != "-" and _SKIPPING_SHORT.intersection(arg[1:]):
            return False
    return True


def _root(here: str) -> str | None:
    """pivot/pipeline/project.py `find_root`, without pathlib: the nearest folder with
    pipeline.py, else the top-most with a dvc.yaml."""
    top_dvc = None
    folder = here
    while True:
        if os.path.isfile(os.path.join(folder, "pipeline.py")):
            return folder
        if os.path.isfile(os.path.join(folder, "dvc.yaml")):
            top_dvc = folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return top_dvc
        folder = parent


def _scratch(suffix: str) -> str:
    """A new empty file named as pivot/launch/scratch.py `scratch_file` names the
    loader's (its pid in the name: what a killed process leaves is swept)."""
    folder = next((os.environ[n] for n in _TEMP_VARIABLES if os.path.isdir(os.environ.get(n, ""))), "/tmp")
    path = os.path.join(folder, f"pivot-manifest-{os.getpid()}-{os.urandom(6).hex()}{suffix}")
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    return path


def _read_locks(root: str, out: int, after: int) -> None:  # pragma: no cover - the child
    code = 1
    try:
        if after >= 0:
            import select

            select.select([after], [], [])  # (a pidfd is readable once its process exited)
        import logging

        # What the state cache says goes with the answer (`packed_prefetch`): the command
        # says it. Nothing else is said here (logging's last resort would print it).
        logging.getLogger().addHandler(logging.NullHandler())
        from pivot.state.lock import packed_prefetch

        data = memoryview(packed_prefetch(root))
        while data:
            data = data[os.write(out, data):]
        code = 0
    except BaseException:  # (its command reads the locks itself)
        pass
    finally:
        os._exit(code)


def _load(root: str, result_path: str, output_path: str, ready: int) -> None:  # pragma: no cover - the child
    code = 1
    try:
        from pivot.faults import reached

        reached("loading")
        from pivot.runtime.loader import forked_main

        forked_main(root, result_path, output_path, ())
        os.write(ready, b"1")
        code = 0
    except KeyboardInterrupt:
        code = 130  # a terminal's Ctrl-C reaches it too: the command says "interrupted"
    except BaseException:
        import traceback

        traceback.print_exc()  # into its output file once it redirected
    finally:
        os._exit(code)
