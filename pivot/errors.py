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
]


class PivotError(Exception):
    """Base of every error Pivot raises on purpose."""


class UserError(PivotError):
    """The user can fix this: bad pipeline, params, paths or options."""


class PipelineError(UserError):
    """The pipeline could not be loaded or is inconsistent.

    `detail` holds extra text shown under the message (e.g. the user's traceback).
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class StackRunning(UserError):
    """Another Pivot engine already owns this project's run directory."""


class InfraError(PivotError):
    """A Pivot process or link failed; not the user's fault."""


class ProtocolError(InfraError):
    """A message could not be decoded: unknown kind, wrong version, bad fields."""


class Unreachable(PivotError):
    """Nothing answered where a peer was expected (no broker at that endpoint): the
    user checks the endpoint or starts it; not a bug of Pivot's. Exit code 1."""
