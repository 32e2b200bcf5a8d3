"""Pivot's error tree, grouped by what the caller does about it.

- `UserError`: the user's pipeline, params or command line is wrong. Say what, where
  (file, stage, field) and how to fix it. CLI exit code 2, never a traceback.
- `StageFailed`: a stage ran and raised; carries the user's traceback text.
- `InfraError`: something of ours broke (peer lost, protocol error, start-up timeout).
"""

from __future__ import annotations

__all__ = [
    "InfraError",
    "PipelineError",
    "PivotError",
    "ProtocolError",
    "StackRunning",
    "Unreachable",
    "UserError",
    "describe_os_error",
]


class PivotError(Exception):
    """Base of every error Pivot raises on purpose."""


class UserError(PivotError):
    """The user can fix this: bad pipeline, params, paths or options."""


# What one message may say (a stage's failure, a pipeline error): far below the
# transport's 16 MiB limit, over which a message is dropped and its sender looks lost.
MAX_REASON_CHARS = 4000
MAX_DETAIL_CHARS = 100_000


def clip(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters and a note of how many more there were."""
    if len(text) <= limit:
        return text
    return text[:limit] + f" [pivot: {len(text) - limit} more characters not kept]"


class PipelineError(UserError):
    """The pipeline could not be loaded or is inconsistent.

    `detail` holds extra text shown under the message (e.g. the user's traceback). Both
    are clipped: an exception whose text is megabytes long made the pipeline error too
    large to send, and `pivot repro` waited for it forever.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(clip(message, MAX_REASON_CHARS))
        self.detail = clip(detail, MAX_DETAIL_CHARS)


class StackRunning(UserError):
    """Another Pivot engine already owns this project's run directory."""


class InfraError(PivotError):
    """A Pivot process or link failed; not the user's fault."""


class ProtocolError(InfraError):
    """A message could not be decoded: unknown kind, wrong version, bad fields."""


class Unreachable(PivotError):
    """Nothing answered where a peer was expected (no broker at that endpoint): the
    user checks the endpoint or starts it; not a bug of Pivot's. Exit code 1."""


def describe_os_error(exc: OSError, near: object = None) -> str:
    """What a file system error means for the user, naming the file (or, when the error
    names none, as a failed write does, the folder `near` it happened): a full disk, a
    read-only mount, a permission; any other one as the system words it."""
    import errno

    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "disk is full" if exc.errno == errno.ENOSPC else "disk quota is used up"
        if not where and near is not None:
            return f"the {what} on the file system of {near} ({exc.strerror}): free some space, then run again"
        return f"the {what} writing{where} ({exc.strerror}): free some space, then run again"
    if exc.errno == errno.EROFS:
        return f"cannot write{where}: it is on a read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied:{where} ({exc.strerror})"
    return f"{exc.strerror or exc}:{where}" if where else str(exc)
