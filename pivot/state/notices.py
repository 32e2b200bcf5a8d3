"""Warnings about the project's stored state (a corrupt state cache moved aside, a cache
that cannot be used), said on every display: not only in the log of the process that
met them (a pool's, or the CLI's when it settles a run with nothing to do)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["StoredStateNotices", "stored_state_notices"]

LOGGER = "pivot.state"


class StoredStateNotices(logging.Handler):
    """Hands each warning of `pivot.state` to `say`, each text once."""

    def __init__(self, say: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self.say = say
        self.said: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text not in self.said:
            self.said.add(text)
            self.say(text)


@contextmanager
def stored_state_notices(say: Callable[[str], None]) -> Iterator[StoredStateNotices]:
    """`StoredStateNotices` attached to the `pivot.state` logger meanwhile, in place of
    the loggers above it (the CLI's standard error: the notice says it once)."""
    handler = StoredStateNotices(say)
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield handler
    finally:
        logger.propagate = propagate
        logger.removeHandler(handler)
