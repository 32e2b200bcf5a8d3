"""Which source files belong to the project: under its root, outside environments.

Project-local code counts in a fingerprint by its source; everything else by version.
A file is local when its real path lies under the project root and no folder on the way
is a virtual environment (`pyvenv.cfg`) or a package/tool folder (site-packages,
node_modules, .pivot, ...). Pivot's own package and the standard library never are,
whatever the root (a project may live inside a checkout of Pivot).
"""

from __future__ import annotations

import os

__all__ = ["ProjectFiles"]

_NOT_PROJECT_DIRS = frozenset(
    {".venv", "venv", "site-packages", "dist-packages", ".pivot", "node_modules"}
)
_PIVOT_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
_STDLIB_DIR = os.path.dirname(os.path.realpath(os.__file__))


class ProjectFiles:
    """Answers about file paths, each computed once (realpath costs a syscall per part)."""

    def __init__(self, real_root: str) -> None:
        self.root = real_root
        self._realpaths: dict[str, str] = {}
        self._relpaths: dict[str, str] = {}
        self._local: dict[str, bool] = {}
        self._venvs: dict[str, bool] = {}

    def is_local(self, file: str) -> bool:
        known = self._local.get(file)
        if known is None:
            known = self._local[file] = self._check(self.realpath(file))
        return known

    def realpath(self, file: str) -> str:
        real = self._realpaths.get(file)
        if real is None:
            real = self._realpaths[file] = os.path.realpath(file)
        return real

    def relpath(self, file: str) -> str:
        """The project-relative POSIX path of a local file."""
        rel = self._relpaths.get(file)
        if rel is None:
            rel = os.path.relpath(self.realpath(file), self.root).replace(os.sep, "/")
            self._relpaths[file] = rel
        return rel

    def _check(self, real: str) -> bool:
        for outside in (_PIVOT_DIR, _STDLIB_DIR):
            if real.startswith(outside + os.sep):
                return False
        prefix = self.root.rstrip(os.sep) + os.sep
        if not real.startswith(prefix):
            return False
        folders = real[len(prefix) :].split(os.sep)[:-1]
        if _NOT_PROJECT_DIRS.intersection(folders):
            return False
        folder = self.root
        for part in folders:
            folder = os.path.join(folder, part)
            if self._is_venv(folder):
                return False
        return True

    def _is_venv(self, folder: str) -> bool:
        known = self._venvs.get(folder)
        if known is None:
            known = self._venvs[folder] = os.path.exists(os.path.join(folder, "pyvenv.cfg"))
        return known
