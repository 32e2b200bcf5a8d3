"""The stage DAG: which stages feed which, in a topological order.

Plain dicts rather than networkx: importing networkx costs ~100 ms and its cycle search
~400 ms on a 1000-stage pipeline, both on the path of every `pivot repro` (see
docs/architecture.md). Paths are matched to producers by `ProducerIndex`.
"""

from __future__ import annotations

import heapq

from pivot.errors import PipelineError
from pivot.gcpause import paused
from pivot.pipeline.manifest import Manifest
from pivot.pipeline.producers import producer_index
from pivot.protocol.record import Record, record

__all__ = ["StageGraph", "build_graph"]


@record
class StageGraph(Record):
    order: tuple[str, ...]  # topological, ties broken by declaration order
    upstream: dict[str, frozenset[str]]
    downstream: dict[str, frozenset[str]]

    def with_upstream(self, targets: list[str]) -> set[str]:
        """The targets plus every stage they transitively depend on."""
        seen: set[str] = set()
        todo = list(targets)
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(self.upstream[name])
        return seen

    def downstream_of(self, names: set[str]) -> set[str]:
        """Every stage transitively downstream of `names` (excluding them)."""
        seen: set[str] = set()
        todo = [d for n in names for d in self.downstream[n]]
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(self.downstream[name])
        return seen - names


def build_graph(manifest: Manifest) -> StageGraph:
    """Validate the manifest's graph: no cycle, no stage depending on its own output.

    A dependency that no stage produces and that does not exist is no graph error: only
    its stage fails when it must run (`dep_missing`), and everything else works."""
    with paused():
        return _build_graph(manifest)


def _build_graph(manifest: Manifest) -> StageGraph:
    index = producer_index(manifest)
    upstream: dict[str, set[str]] = {s.name: set() for s in manifest.stages}
    downstream: dict[str, set[str]] = {s.name: set() for s in manifest.stages}
    for spec in manifest.stages:
        for dep in spec.deps:
            found = index.producers_of(dep)
            if spec.name in found:
                raise PipelineError(f"stage {spec.name!r} depends on its own output {dep!r}")
            upstream[spec.name] |= found
            for producer in found:
                downstream[producer].add(spec.name)
    order = _topological(manifest, upstream, downstream)
    return StageGraph(
        order,
        {k: frozenset(v) for k, v in upstream.items()},
        {k: frozenset(v) for k, v in downstream.items()},
    )


def _topological(
    manifest: Manifest, upstream: dict[str, set[str]], downstream: dict[str, set[str]]
) -> tuple[str, ...]:
    """Kahn's algorithm; among stages ready at once, the one declared first goes first."""
    position = {spec.name: i for i, spec in enumerate(manifest.stages)}
    waiting = {name: len(ups) for name, ups in upstream.items()}
    ready = [(position[n], n) for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for d in downstream[name]:
            waiting[d] -= 1
            if waiting[d] == 0:
                heapq.heappush(ready, (position[d], d))
    if len(order) < len(position):
        cycle = _find_cycle({n for n, count in waiting.items() if count > 0}, upstream, position)
        raise PipelineError("dependency cycle between stages: " + " -> ".join(cycle))
    return tuple(order)


def _find_cycle(stuck: set[str], upstream: dict[str, set[str]], position: dict[str, int]) -> list[str]:
    """One cycle among stages Kahn's algorithm could not order, in dependency direction.

    Every stuck stage has a stuck upstream stage, so walking upstream from any of them
    must revisit a stage; the walk from that first visit on is a cycle.
    """
    name = min(stuck, key=position.__getitem__)
    seen: dict[str, int] = {}
    path: list[str] = []
    while name not in seen:
        seen[name] = len(path)
        path.append(name)
        name = min((u for u in upstream[name] if u in stuck), key=position.__getitem__)
    loop = path[seen[name]:]
    loop.reverse()  # walked against the edges; show producer -> consumer
    return [*loop, loop[0]]
