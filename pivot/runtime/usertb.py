"""Tracebacks as the user should see them: their frames, not Pivot's or importlib's."""

from __future__ import annotations

import importlib
import traceback
from pathlib import Path

__all__ = ["user_traceback"]

_PIVOT_DIR = str(Path(__file__).resolve().parents[1])
_IMPORTLIB_DIR = str(Path(importlib.__file__).resolve().parent)


def _is_internal(filename: str) -> bool:
    return filename.startswith((_PIVOT_DIR, _IMPORTLIB_DIR, "<frozen "))


def user_traceback(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _is_internal(f.filename)]
    lines = ["Traceback (most recent call last):\n"] if frames else []
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip("\n")
