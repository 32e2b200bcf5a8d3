"""Temporary files and folders of Pivot's processes, named after the pid that made them,
so that what a killed process left behind is found and removed by the next one; and the
role logs (a process's raw output), rotated so that none grows without bound.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO

from pivot.launch.procs import is_alive

__all__ = [
    "LOG_ROTATE_BYTES", "SHORT_TEMP", "attempts_temp", "multiprocessing_scratch", "open_role_log", "scratch_dir",
    "scratch_file", "sweep",
]

LOG_ROTATE_BYTES = 10 << 20


def scratch_dir(kind: str, folder: str | None = None) -> Path:
    """A new temp folder `pivot-KIND-PID-XXXX` (in `folder`, else the temp folder)."""
    import tempfile  # (imported where used in this module: ~2 ms that a no-op need not pay)

    return Path(tempfile.mkdtemp(prefix=f"pivot-{kind}-{os.getpid()}-", dir=folder))


SHARED_MEMORY = "/dev/shm"
# Below this free, a memory folder is a container's (Docker gives 64 MB): what a stage
# prints waits there until its pool reads it, and a full folder would fail the stage.
MIN_MEMORY_FREE = 1 << 30
_TEMP_VARIABLES = ("TMPDIR", "TEMP", "TMP")


def attempts_temp() -> str:
    """Where a local pool keeps its attempts' files: each running stage's pid file,
    markers and what it prints until the pool has read it. Four files made and removed
    per stage: on this machine's ext4 that cost 15-18 % of a cold 1000-stage run
    (docs/benchmarks.md), so they go to memory (`/dev/shm`) when it is a folder of its
    own with room. A TMPDIR (TEMP, TMP) set by the user is where they go, always."""
    import tempfile

    if any(os.environ.get(name) for name in _TEMP_VARIABLES):
        return tempfile.gettempdir()
    try:
        room = os.statvfs(SHARED_MEMORY)
    except OSError:
        return tempfile.gettempdir()
    if room.f_bavail * room.f_frsize < MIN_MEMORY_FREE or not os.access(SHARED_MEMORY, os.W_OK | os.X_OK):
        return tempfile.gettempdir()
    return SHARED_MEMORY


def scratch_file(kind: str, suffix: str = "") -> tuple[int, str]:
    """A new temp file `pivot-KIND-PID-XXXX` (its fd and path, as mkstemp)."""
    import tempfile

    return tempfile.mkstemp(prefix=f"pivot-{kind}-{os.getpid()}-", suffix=suffix)


def multiprocessing_scratch() -> Path:
    """This process's multiprocessing temp folder (its forkserver's socket), made a
    scratch folder of ours. multiprocessing's own (`pymp-*`) is removed by a finalizer
    that a process ending in `os._exit` (the pool) or SIGKILL never runs: one folder
    was left in the temp folder by every pool that started workers. Ours is removed by
    its owner, or swept once it is gone (kind "mp")."""
    from multiprocessing import process

    config = process.current_process()._config  # type: ignore[attr-defined]
    if "tempdir" not in config:  # (what multiprocessing.util.get_temp_dir looks for)
        folder = scratch_dir("mp")
        if len(str(folder)) > MAX_SOCKET_FOLDER and os.path.isdir(SHORT_TEMP):
            # The server's socket path would pass the 108 bytes a Unix socket allows:
            # every worker would fail to start ("AF_UNIX path too long").
            folder.rmdir()
            import tempfile

            folder = Path(tempfile.mkdtemp(prefix=f"pivot-mp-{os.getpid()}-", dir=SHORT_TEMP))
        config["tempdir"] = str(folder)
    return Path(config["tempdir"])


MAX_SOCKET_FOLDER = 80  # + "/listener-XXXXXXXX" stays under a Unix socket's 108 bytes
SHORT_TEMP = "/tmp"


def sweep(kind: str, folder: str | None = None) -> int:
    """Remove what processes now gone left of `kind` in the temp folder (or `folder`: a
    pool or loader killed outright leaves its folder). Returns how many were removed."""
    import shutil
    import tempfile

    prefix = f"pivot-{kind}-"
    removed = 0
    folder = folder or tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if not entry.name.startswith(prefix):
                continue
            pid_text = entry.name[len(prefix):].partition("-")[0]
            if not pid_text.isdigit() or is_alive(int(pid_text)):
                continue  # not ours to judge, or its process still runs
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed += 1
    return removed


def open_role_log(path: Path) -> BinaryIO:
    """A role's log (its raw output), opened to append; over LOG_ROTATE_BYTES it is
    renamed ROLE.log.1 first (one old file kept): a stage writing to its process's own
    output must not fill the disk over many runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
    return open(path, "ab")
