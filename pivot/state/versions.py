"""Which installed distribution (and version) provides a top-level module.

Third-party code counts in fingerprints by its version. `packages_distributions()`
reads every installed distribution's metadata (~200 ms here), too slow to pay on every
pipeline load, so answers are kept on disk. They stay valid while no directory on
sys.path changed: installing, upgrading or removing a package creates or deletes a
`*.dist-info` folder there, which changes that directory's mtime.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgpack

from pivot.state.atomic import write_atomic

__all__ = ["VersionCache"]

_STAMP = 1


def _install_signature(project: str | None) -> list[list[Any]]:
    sig: list[list[Any]] = []
    for entry in sys.path:
        if project is not None and os.path.abspath(entry or ".") == project:
            # The project folder is on sys.path (its modules) but nothing is installed
            # there; its mtime changes with every file a stage or an editor creates in
            # it, which would make every pipeline load look versions up again.
            continue
        try:
            sig.append([entry, os.stat(entry or ".").st_mtime_ns])
        except OSError:
            sig.append([entry, None])
    return sig


class VersionCache:
    def __init__(self, cache_file: Path | None, project: Path | str | None = None) -> None:
        self.cache_file = cache_file
        self._signature = _install_signature(os.path.abspath(project) if project is not None else None)
        self._known: dict[str, str] = self._load()
        self._dirty = False
        self._distributions: Mapping[str, list[str]] | None = None

    def _load(self) -> dict[str, str]:
        if self.cache_file is None:
            return {}
        try:
            data = msgpack.unpackb(self.cache_file.read_bytes(), raw=False)
            if data["stamp"] == _STAMP and data["signature"] == self._signature:
                return {str(k): str(v) for k, v in data["versions"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # missing, stale or unreadable: look versions up again
        return {}

    def version(self, top: str) -> str:
        """"dist==version" (comma-joined if several dists provide `top`), or a note."""
        known = self._known.get(top)
        if known is None:
            known = self._known[top] = self._find(top)
            self._dirty = True
        return known

    def _find(self, top: str) -> str:
        import importlib.metadata  # 15 ms to import: only when third-party code is reached

        if self._distributions is None:
            self._distributions = importlib.metadata.packages_distributions()
        dists = sorted(set(self._distributions.get(top, ())))
        if dists:
            return ",".join(f"{d}=={_dist_version(d)}" for d in dists)
        version = getattr(sys.modules.get(top), "__version__", None)
        if isinstance(version, str):
            return f"{top}=={version}"
        return f"{top} (no version)" if _installed(top) else f"{top} (not installed)"

    def save(self) -> None:
        """Write the answers if any were looked up; raises OSError when it cannot."""
        if self.cache_file is None or not self._dirty:
            return
        payload = msgpack.packb(
            {"stamp": _STAMP, "signature": self._signature, "versions": self._known},
            use_bin_type=True,
        )
        write_atomic(self.cache_file, payload)
        self._dirty = False


def _dist_version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _installed(top: str) -> bool:
    if top in sys.modules:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False
