"""Declared paths: relative to the project root, POSIX, inside the project."""

from __future__ import annotations

import posixpath

from pivot.errors import PipelineError

__all__ = ["normalize"]


def normalize(stage: str, field: str, path: str) -> str:
    """Normalize `path`; a trailing "/" (a directory) is kept."""
    raw = path.replace("\\", "/")
    is_dir = raw.endswith("/")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise PipelineError(
            f"stage {stage!r}: {field} path {path!r} is absolute; "
            "declare paths relative to the project root (the folder with pipeline.py)"
        )
    norm = posixpath.normpath(raw)
    if norm == "." or norm == ".." or norm.startswith("../"):
        raise PipelineError(
            f"stage {stage!r}: {field} path {path!r} points outside the project root"
        )
    if norm == ".pivot" or norm.startswith(".pivot/"):
        raise PipelineError(f"stage {stage!r}: {field} path {path!r} is inside .pivot/")
    return norm + "/" if is_dir else norm
