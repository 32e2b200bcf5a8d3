"""Writing a small file so a crash leaves the old content or the new, never half."""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["write_atomic"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to a temp file beside `path` (a hidden `.NAME.*.tmp`), then rename it
    over `path`. `mode` None gives 0600, as mkstemp did. Raises OSError; no temp file is
    left."""
    # Named for this process and thread, so no other writer uses it: no random name to
    # draw and no exclusive create to retry (mkstemp took a third of a small write), and
    # the folder is made only when it is missing.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, _FLAGS, 0o600)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, _FLAGS, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if mode is not None:
            os.fchmod(fd, mode)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
