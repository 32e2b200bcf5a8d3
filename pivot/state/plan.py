"""What to do with a stage before any worker is involved: skip it, restore it, or run it.

Used by the worker pool (per dispatched stage, and per wave in one batch) and by the CLI
for `status` and `repro --dry-run`. Restoring from the run cache happens here, in the
pool's own threads: placing files needs no worker process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import field
from pathlib import Path

from pivot.gcpause import paused
from pivot.pipeline.manifest import Manifest, StageSpec
from pivot.pipeline.producers import ProducerIndex, producer_index
from pivot.protocol.record import Record, record
from pivot.state.cache import MissingObject
from pivot.state.decide import Decision, PathHasher, decide
from pivot.state.lock import StageLock, read_lock, write_lock
from pivot.state.outputs import ProjectState, preserve, restore
from pivot.state.reasons import Reason, ReasonCode
from pivot.state.runcache import run_key
from pivot.state.stagelogs import note_restored
from pivot.state.statecache import NeedsRead

__all__ = ["Prepared", "dep_producers", "plan_wave", "prepare", "prepare_quickly", "restorable"]

DepProducers = Mapping[str, Mapping[str, frozenset[str]]]  # stage -> dep -> producing stages
QUICK_READ_BYTES = 256 * 1024  # read in the pool's loop: ~0.1 ms from the page cache here


@record
class Prepared(Record):
    decision: Decision
    run_key: str = ""
    restored: dict[str, str] | None = None  # outputs placed from the run cache
    notes: list[str] = field(default_factory=list)

    @property
    def reason(self) -> Reason:
        if self.restored is None:
            return self.decision.reason
        why = self.decision.reason
        return Reason(
            ReasonCode.RESTORED,
            f"restored from run cache ({why.message})",
            {"outs": self.restored, "stale": str(why.code), "stale_details": why.details},
        )


def dep_producers(manifest: Manifest) -> DepProducers:
    """For each stage, which stages write each of its deps (for "upstream changed").
    Raises PipelineError when two stages write one path."""
    return _Producers(manifest)


class _Producers(Mapping[str, Mapping[str, frozenset[str]]]):
    """A dep's producers are looked up when asked for: only a changed dep's reason names
    them, and a no-op asks for none (10,000 stages: ~30 ms of a plan, made for every
    stage decided)."""

    def __init__(self, manifest: Manifest) -> None:
        self.index = producer_index(manifest)
        self.specs = manifest.by_name

    def __getitem__(self, stage: str) -> _StageProducers:
        return _StageProducers(self.index, self.specs[stage].deps)

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)


class _StageProducers(Mapping[str, frozenset[str]]):
    """One stage's deps -> the stages writing each, found when a dep is asked for."""

    __slots__ = ("deps", "index")

    def __init__(self, index: ProducerIndex, deps: tuple[str, ...]) -> None:
        self.index, self.deps = index, deps

    def __getitem__(self, dep: str) -> frozenset[str]:
        if dep not in self.deps:
            raise KeyError(dep)
        return frozenset(self.index.producers_of(dep))

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(self.deps))

    def __len__(self) -> int:
        return len(set(self.deps))


def restorable(state: ProjectState, spec: StageSpec, key: str) -> dict[str, str] | None:
    """The run cache's outputs for `key`, if every object is still in the content cache.

    Never for a stage without outputs: its effect is elsewhere (an upload, a message),
    so "restoring" it would silently do nothing.
    """
    if not spec.outs:
        return None
    outs = state.runs.lookup(key)
    if outs is None or set(outs) != set(spec.outs):
        return None
    if not all(state.cache.has(digest) for digest in outs.values()):
        return None
    return outs


def prepare_quickly(
    state: ProjectState, spec: StageSpec, *, force: bool = False, producers: DepProducers | None = None,
) -> Prepared | None:
    """`prepare`'s answer when it takes little I/O: no file to read larger than
    QUICK_READ_BYTES (a file whose stat matches its row in the state cache is not read;
    an upstream output written a moment ago is), no folder to walk, nothing to restore
    from the run cache. None otherwise: `prepare` then, in a thread. For the pool's loop,
    which must not wait on I/O (a thread's handoff was 0.7 ms of a stage's 2.5 here)."""
    try:
        with state.hashes.reading_at_most(QUICK_READ_BYTES):
            decision = decide(
                state.root, spec, state.hashes, force=force,
                producers=producers.get(spec.name) if producers else None,
            )
    except NeedsRead:
        return None
    if not decision.run or decision.missing_deps:
        return Prepared(decision)
    key = run_key(spec, decision.dep_hashes)
    if not force and not spec.always and restorable(state, spec, key) is not None:
        return None  # placing files is I/O
    return Prepared(decision, key)


def prepare(
    state: ProjectState,
    spec: StageSpec,
    *,
    force: bool = False,
    producers: DepProducers | None = None,
    use_run_cache: bool = True,
) -> Prepared:
    decision = decide(
        state.root, spec, state.hashes, force=force,
        producers=producers.get(spec.name) if producers else None,
    )
    if not decision.run or decision.missing_deps:
        return Prepared(decision)
    key = run_key(spec, decision.dep_hashes)
    # An always_changed stage reads what no dependency says (a clock, a server): run it.
    outs = restorable(state, spec, key) if use_run_cache and not force and not spec.always else None
    if outs is None:
        return Prepared(decision, key)
    recorded = decision.lock.outs if decision.lock else {}
    notes = [saved.note() for saved in preserve(state, list(spec.outs), recorded)]
    try:
        restore(state, outs)
    except MissingObject as exc:  # gone or damaged since `restorable` looked: run it
        return Prepared(decision, key, notes=[*notes, f"not restored from the run cache: {exc}"])
    write_lock(
        state.root,
        StageLock(spec.name, spec.fingerprint, spec.params, decision.dep_hashes, outs, spec.code_parts),
    )
    note_restored(state.root, spec.name, state.runs.log_path(key), state.hashes, key)
    return Prepared(decision, key, outs, notes)


def plan_wave(
    state: ProjectState,
    manifest: Manifest,
    stages: list[str],
    upstream: Mapping[str, list[str]],
    producers: DepProducers | None = None,
    read: Callable[[Path, str], StageLock | None] = read_lock,
    hasher: PathHasher | None = None,
) -> list[str]:
    """The stages (topological order given) that are up to date with all their upstream.

    Such a stage will be skipped whatever else the wave does: nothing it reads is
    written by a stage that will run. `hasher`: the state cache's, by default.
    """
    clean: set[str] = set()
    hashes = hasher if hasher is not None else state.hashes
    with state.hashes.batched(snapshot=True), paused():  # decides only: writes no file
        for name in stages:
            spec = manifest.by_name.get(name)
            if spec is None or not clean.issuperset(upstream.get(name, ())):
                continue
            decision = decide(
                state.root, spec, hashes,
                producers=producers.get(name) if producers else None, read=read,
            )
            if not decision.run and not decision.frozen_missing:  # that one fails: its pool says so
                clean.add(name)
    return [s for s in stages if s in clean]
