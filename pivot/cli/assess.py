"""Which stages are stale and why, computed in the CLI's own process (no engine).

Shared by `pivot status` and `pivot repro --dry-run`. A stage downstream of a stale one
is reported stale too ("upstream stale"): whether it really runs depends on what its
upstream writes (early cutoff), which only a run can tell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pivot.gcpause import paused
from pivot.launch.spawn import LoaderExited, start_loader
from pivot.pipeline.graph import StageGraph, build_graph
from pivot.pipeline.manifest import Manifest
from pivot.pipeline.project import pivot_dir
from pivot.pipeline.select import Selection, resolve_names, to_run
from pivot.state.decide import decide
from pivot.state.lock import LockPrefetch
from pivot.state.outputs import ProjectState
from pivot.state.plan import dep_producers, restorable
from pivot.state.reasons import Reason, ReasonCode
from pivot.state.runcache import run_key

__all__ = ["Assessment", "StageAssessment", "assess"]


@dataclass
class StageAssessment:
    name: str
    reasons: list[Reason] = field(default_factory=list)
    restorable: bool = False  # its outputs for these inputs are in the run cache
    fails: bool = False  # it fails without running (frozen, and an output is missing)

    @property
    def stale(self) -> bool:
        # A frozen stage's only reason says why it is up to date, not why it would run.
        return any(r.code is not ReasonCode.UP_TO_DATE for r in self.reasons)

    def to_json(self) -> dict[str, Any]:
        return {
            "stale": self.stale,
            "reasons": [r.to_json() for r in self.reasons],
            "restorable": self.restorable,
        }


@dataclass
class Assessment:
    manifest: Manifest
    graph: StageGraph
    stages: dict[str, StageAssessment]  # topological order


def assess(
    root: Path,
    targets: tuple[str, ...] = (),
    *,
    force: bool = False,
    explain: bool = False,
    selection: Selection = Selection.UPSTREAM,
    glob: bool = False,
) -> Assessment:
    """Decide every stage `repro TARGETS` would take in (default all) against its lock."""
    pivot_dir(root)  # the state cache lives there; made with its .gitignore
    loading = start_loader(root)
    state = ProjectState.open(root)
    # Read while the loader runs (started after it: a thread), with the files they name
    # when every stage is assessed.
    locks = LockPrefetch(root, state.hashes if not targets else None)
    try:
        try:
            manifest = loading.result()
        except LoaderExited:
            # As `pivot repro` (whose pool loads it again): once more, in a loader of
            # its own; a pipeline.py that ends its process says so the second time too.
            manifest = start_loader(root).result()
        graph = build_graph(manifest)
        names = resolve_names(targets, graph.order, glob=glob)
        wanted = to_run(graph, names, selection)
        producers = dep_producers(manifest)
        result: dict[str, StageAssessment] = {}
        stale_names: set[str] = set()  # (10,000 stages: each one's upstream looked up in it)
        read = locks.reader()
        hasher = locks.hasher(state.hashes)
        with state.hashes.batched(snapshot=True), paused():  # one write for what it hashes again; reads only
            for name in graph.order:
                if name not in wanted:
                    continue
                spec = manifest.by_name[name]
                decision = decide(
                    root, spec, hasher, force=force, producers=producers[name],
                    all_reasons=explain, read=read,
                )
                row = StageAssessment(name, list(decision.reasons), fails=bool(decision.frozen_missing))
                unproduced = [d for d in decision.missing_deps if not producers[name].get(d)]
                if unproduced and not any(r.code is ReasonCode.DEP_MISSING for r in row.reasons):
                    # Nothing will make it: the run fails this stage (and only it) until it exists.
                    row.reasons.insert(0, Reason(
                        ReasonCode.DEP_MISSING,
                        f"dependency missing, and no stage writes it: {', '.join(unproduced)}",
                        {"paths": unproduced},
                    ))
                stale_up = sorted(graph.upstream[name] & stale_names) if stale_names else []
                if stale_up and not spec.frozen:  # (a frozen stage never runs, whatever changed)
                    row.reasons.append(
                        Reason(
                            ReasonCode.UPSTREAM_STALE,
                            f"upstream stale: {', '.join(stale_up)}",
                            {"stages": stale_up},
                        )
                    )
                # An always_changed stage is never restored from the run cache (plan.prepare).
                if decision.run and not decision.missing_deps and not force and not spec.always:
                    row.restorable = restorable(state, spec, run_key(spec, decision.dep_hashes)) is not None
                result[name] = row
                if row.stale:
                    stale_names.add(name)
    finally:
        locks.join()  # (it uses the state cache)
        state.close()
    return Assessment(manifest, graph, result)
