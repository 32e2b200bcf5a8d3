"""Which stage writes a path: exact outputs by dict lookup, directory outputs by prefix.

Kept free of networkx so the worker pool can use it (it classifies a changed dep as
"upstream changed") without paying for the graph library.
"""

from __future__ import annotations

import bisect

from pivot.errors import PipelineError
from pivot.pipeline.manifest import Manifest

__all__ = ["ProducerIndex", "inside", "producer_index"]


def inside(path: str, folder: str) -> bool:
    """Whether `path` lies inside the directory `folder` (with or without its "/")."""
    return path.startswith(folder.rstrip("/") + "/")


def producer_index(manifest: Manifest) -> ProducerIndex:
    """The manifest's index, made once: the graph and the stages' decisions both ask
    (10,000 stages: ~5 ms each time)."""
    index: ProducerIndex | None = manifest.__dict__.get("_producer_index")
    if index is None:
        index = ProducerIndex(manifest)
        object.__setattr__(manifest, "_producer_index", index)  # (a record: no field, not compared)
    return index


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
        exact = self.exact
        for inner, stage in exact.items():
            end = inner.find("/")  # the folders above it, each an output maybe (inlined: 10,000 outputs)
            while end != -1:
                holder = exact.get(inner[:end])
                if holder is not None and holder != stage:
                    raise PipelineError(
                        f"two stages produce {inner!r}: {holder!r} (its output {inner[:end]!r} holds it) "
                        f"and {stage!r}; each path must have exactly one producing stage"
                    )
                end = inner.find("/", end + 1)

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
        exact = self.exact
        found = set()
        own = exact.get(key)
        if own is not None:
            found.add(own)
        end = key.find("/")  # an output above it holds it (inlined: every dep of every stage)
        while end != -1:
            holder = exact.get(key[:end])
            if holder is not None:
                found.add(holder)
            end = key.find("/", end + 1)
        if own is None or dep.endswith("/"):
            # A folder dep (or a path that may be one) also reads what is written inside it.
            found.update(self.exact[p] for p in self._under(key + "/"))
        return found
