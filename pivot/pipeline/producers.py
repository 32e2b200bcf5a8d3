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
    """Output path -> producing stage, checked for two producers of one path.

    Any output may be a folder, declared with its "/" or not (dvc.yaml's never have it):
    a path below an output is that output's stage's, as a dependency (its stage runs
    after it) and as another stage's output (refused: two stages would write it)."""

    def __init__(self, manifest: Manifest) -> None:
        self.exact: dict[str, str] = {}  # output path without trailing "/" -> stage
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
        self.sorted_keys = sorted(self.exact)
        for inner, stage in self.exact.items():
            for key in self._above(inner):
                if self.exact[key] != stage:
                    raise PipelineError(
                        f"two stages produce {inner!r}: {self.exact[key]!r} (its output {key!r} holds it) "
                        f"and {stage!r}; each path must have exactly one producing stage"
                    )

    def _above(self, key: str) -> list[str]:
        """The outputs that hold `key` (a path by its folders: as many lookups as it is deep)."""
        found = []
        end = key.find("/")
        while end != -1:
            if key[:end] in self.exact:
                found.append(key[:end])
            end = key.find("/", end + 1)
        return found

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
        found.update(self.exact[above] for above in self._above(key))
        if dep.endswith("/") or key not in self.exact:
            # A folder dep (or a path that may be one) also reads what is written inside it.
            found.update(self.exact[p] for p in self._under(key + "/"))
        return found
