"""Tracebacks as the user should see them: their frames, not Pivot's or importlib's."""

from __future__ import annotations

import traceback
from pathlib import Path

__all__ = ["user_traceback"]

_PIVOT_DIR = str(Path(__file__).resolve().parents[1])


def _is_internal(filename: str) -> bool:
    return filename.startswith(_PIVOT_DIR) or filename.startswith("<frozen ")


def user_traceback(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _is_internal(f.filename)]
    lines = ["Traceback (most recent call last):\n"] if frames else []
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip("\n")
