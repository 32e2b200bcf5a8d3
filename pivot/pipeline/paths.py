"""Declared paths: relative to the project root, POSIX, inside the project."""

from __future__ import annotations

import posixpath

from pivot.errors import PipelineError

__all__ = ["normalize"]


# path -> its normal form: a pipeline names most paths twice (an output, then a dep) and
# a loader normalizes 25,000 at 10,000 stages. Bounded, for long-lived processes.
_normal: dict[str, str] = {}
_NORMAL_MAX = 200_000


def normalize(stage: str, field: str, path: str) -> str:
    """Normalize `path`; a trailing "/" (a directory) is kept."""
    known = _normal.get(path) if type(path) is str else None
    if known is not None:
        return known
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
    result = norm + "/" if is_dir else norm
    if len(_normal) < _NORMAL_MAX:
        _normal[path] = result
    return result
