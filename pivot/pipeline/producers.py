"""Which stage writes a path: exact outputs by dict lookup, directory outputs by prefix.

Kept free of networkx so the worker pool can use it (it classifies a changed dep as
"upstream changed") without paying for the graph library.
"""

from __future__ import annotations

import bisect

from pivot.errors import PipelineError
from pivot.pipeline.manifest import Manifest

__all__ = ["ProducerIndex", "inside"]


def inside(path: str, folder: str) -> bool:
    """Whether `path` lies inside the directory `folder` (with or without its "/")."""
    return path.startswith(folder.rstrip("/") + "/")


class ProducerIndex:
    """Output path -> producing stage, checked for two producers of one path."""

    def __init__(self, manifest: Manifest) -> None:
        self.exact: dict[str, str] = {}  # output path without trailing "/" -> stage
        self.dirs: list[tuple[str, str]] = []  # (directory output with "/", stage)
        for spec in manifest.stages:
            for out in spec.outs:
                key = out.rstrip("/")
                other = self.exact.get(key)
                if other is not None:
                    raise PipelineError(
                        f"two stages produce {out!r}: {other!r} and {spec.name!r}; "
                        "each output must have exactly one producing stage"
                    )
                self.exact[key] = spec.name
                if out.endswith("/"):
                    self.dirs.append((key + "/", spec.name))
        self.sorted_keys = sorted(self.exact)
        for folder, stage in self.dirs:
            for inner in self._under(folder):
                if self.exact[inner] != stage:
                    raise PipelineError(
                        f"two stages produce {inner!r}: {stage!r} (its output directory "
                        f"{folder!r}) and {self.exact[inner]!r}; each path must have exactly "
                        "one producing stage"
                    )

    def _under(self, folder: str) -> list[str]:
        """Exact outputs whose path starts with `folder` (which ends with "/")."""
        keys = self.sorted_keys
        found = []
        for i in range(bisect.bisect_left(keys, folder), len(keys)):
            if not keys[i].startswith(folder):
                break
            found.append(keys[i])
        return found

    def producers_of(self, dep: str) -> set[str]:
        """Every stage writing `dep`, a directory holding it, or (for a folder) inside it."""
        key = dep.rstrip("/")
        found = set()
        if key in self.exact:
            found.add(self.exact[key])
        for folder, stage in self.dirs:
            if inside(key, folder):
                found.add(stage)
        if dep.endswith("/") or key not in self.exact:
            # A folder dep (or a path that may be one) also reads what is written inside it.
            found.update(self.exact[p] for p in self._under(key + "/"))
        return found
