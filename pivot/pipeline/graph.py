"""The pipeline graph: a bipartite artifact/stage graph (networkx) and the stage DAG.

Built from a manifest wherever scheduling happens (broker, CLI), never in workers:
networkx alone costs ~130 ms to import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from pivot.errors import PipelineError
from pivot.pipeline.manifest import Manifest
from pivot.pipeline.producers import ProducerIndex

__all__ = ["StageGraph", "build_graph"]


@dataclass(frozen=True)
class StageGraph:
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


def build_graph(manifest: Manifest, root: Path | None = None) -> StageGraph:
    """Validate the manifest's graph. With `root`, also check unproduced deps exist."""
    g = nx.DiGraph()
    index = ProducerIndex(manifest)
    for spec in manifest.stages:
        g.add_node(("stage", spec.name))
        for out in spec.outs:
            g.add_edge(("stage", spec.name), ("artifact", out))
    for spec in manifest.stages:
        for dep in spec.deps:
            found = index.producers_of(dep)
            if not found and root is not None and not (root / dep).exists():
                raise PipelineError(
                    f"stage {spec.name!r}: dependency {dep!r} does not exist and no stage "
                    "produces it; create the file or add the stage that writes it"
                )
            if spec.name in found:
                raise PipelineError(f"stage {spec.name!r} depends on its own output {dep!r}")
            g.add_edge(("artifact", dep), ("stage", spec.name))
            for producer in found:
                g.add_edge(("stage", producer), ("artifact", dep))
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = [node[1] for edge in cycle for node in edge[:1] if node[0] == "stage"]
        raise PipelineError(
            "dependency cycle between stages: " + " -> ".join([*names, names[0]])
        )
    position = {spec.name: i for i, spec in enumerate(manifest.stages)}
    upstream: dict[str, set[str]] = {s.name: set() for s in manifest.stages}
    downstream: dict[str, set[str]] = {s.name: set() for s in manifest.stages}
    for node in g.nodes:
        if node[0] != "stage":
            continue
        for artifact in g.successors(node):
            for consumer in g.successors(artifact):
                upstream[consumer[1]].add(node[1])
                downstream[node[1]].add(consumer[1])
    stage_dag = nx.DiGraph()
    stage_dag.add_nodes_from(position)
    stage_dag.add_edges_from((u, d) for u, ds in downstream.items() for d in ds)
    order = tuple(nx.lexicographical_topological_sort(stage_dag, key=position.__getitem__))
    return StageGraph(
        order,
        {k: frozenset(v) for k, v in upstream.items()},
        {k: frozenset(v) for k, v in downstream.items()},
    )
