"""A wave and the run requests waiting to become one: a sub-machine of the broker's state
(`broker/state.py`), pure.

A wave's stages are dispatched by dependency counting: `waiting` holds, per stage, the
upstream stages in the wave not yet finished as ran, restored or skipped; a stage is
`ready` at zero, `running` once an attempt of it is out, `done` with its final status.
Each stage is in at most one of ready, running and done.

A stage may also be running while it still waits: `behind`, given to the pool that runs
(or holds) the attempts of its unfinished upstream stages, which starts it when they end
well (protocol.md, "Behind its upstream"). When the last of them finishes it is simply
running; when one does not end well its attempt is dropped and it waits again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import field

from pivot.pipeline.graph import StageGraph
from pivot.protocol.messages import STATUSES, WaveFinished
from pivot.protocol.record import MutableRecord, mutable_record

__all__ = ["PendingRun", "Wave"]


@mutable_record
class Wave(MutableRecord):
    number: int
    stages: list[str]  # topological order
    force: bool
    keep_going: bool
    waiting: dict[str, int]  # stage -> upstream stages in the wave not yet finished
    ready: list[str] = field(default_factory=list)
    running: dict[str, str] = field(default_factory=dict)  # attempt -> stage
    started: set[str] = field(default_factory=set)  # attempts whose pool said it runs them
    done: dict[str, str] = field(default_factory=dict)  # stage -> final status
    halted: bool = False  # fail-fast tripped: dispatch nothing new
    planner: str | None = None  # the pool asked which stages are up to date; None = not waiting
    code_halt: bool = False  # stopped by a code change: cancelled stages run again after it
    charges: dict[str, int] = field(default_factory=dict)  # stage -> deaths of its own worker
    restarting: set[str] = field(default_factory=set)  # `--restart`: cancel asked, runs again
    behind: dict[str, str] = field(default_factory=dict)  # stage -> its attempt, given behind its upstream
    # Attempts taken over from the wave a code change stopped (their stages' code did
    # not change): one cancelled after all runs again in this wave.
    adopted: set[str] = field(default_factory=set)
    moved: list[str] = field(default_factory=list)  # stages whose attempts the next wave took over
    position: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.position = {s: i for i, s in enumerate(self.stages)}

    def sort_ready(self) -> None:
        self.ready.sort(key=self.position.__getitem__)

    @classmethod
    def plan(cls, number: int, graph: StageGraph, wanted: set[str], force: bool, keep_going: bool) -> Wave:
        """Wave `number` of the `wanted` stages, in the graph's order; those without
        upstream stages in it are ready."""
        stages = [s for s in graph.order if s in wanted]
        wave = cls(number, stages, force, keep_going, waiting={s: len(graph.upstream[s] & wanted) for s in stages})
        wave.ready = [s for s in stages if wave.waiting[s] == 0]
        return wave

    def adopt(self, attempts: dict[str, str]) -> None:
        """Attempts of the wave before, running (begun) on: running in this one."""
        for attempt, stage in attempts.items():
            self.unready(stage)
            self.running[attempt] = stage
            self.started.add(attempt)
            self.adopted.add(attempt)

    def hand_over(self, attempts: dict[str, str]) -> None:
        """`attempts`, running, go to the next wave: their stages leave this one."""
        for attempt in attempts:
            del self.running[attempt]
        stages = set(attempts.values())
        self.moved = [s for s in self.stages if s in stages]
        self.stages = [s for s in self.stages if s not in stages]

    def is_running(self, stage: str) -> bool:
        return stage in self.running.values()

    def unstarted(self) -> list[str]:
        """Stages neither done nor running, in order."""
        running = set(self.running.values())
        return [s for s in self.stages if s not in self.done and s not in running]

    def unready(self, stage: str) -> None:
        if stage in self.ready:
            self.ready.remove(stage)

    def requeue(self, stage: str) -> None:
        """`stage` (lost, or cancelled to restart) is ready again, or waits again for
        its upstream when it was given behind it."""
        self.behind.pop(stage, None)
        if self.waiting.get(stage, 0) > 0:
            return
        self.ready.append(stage)
        self.sort_ready()

    def drop_behind(self, upstream: str, graph: StageGraph) -> list[str]:
        """`upstream` did not end well: the stages given behind it, and behind those,
        lose their attempts (their pool reports them lost, unstarted) and wait again.
        Returns them, in order."""
        dropped = {upstream}
        changed = True
        while changed:
            changed = False
            for stage, attempt in list(self.behind.items()):
                if graph.upstream[stage] & dropped:
                    del self.behind[stage]
                    self.running.pop(attempt, None)
                    dropped.add(stage)
                    changed = True
        dropped.discard(upstream)
        return sorted(dropped, key=self.position.__getitem__)

    def release_downstream(self, downstream: Iterable[str], skipping: frozenset[str] = frozenset()) -> None:
        """A stage finished fine: its `downstream` stages in the wave have one upstream
        less to wait for (those in `skipping` are about to be finished as skipped)."""
        for d in downstream:
            if d not in self.waiting:
                continue
            self.waiting[d] -= 1
            if self.waiting[d] or d in self.done or d in skipping:
                continue
            if self.behind.pop(d, None) is None:  # (else: given behind it, it runs already)
                self.ready.append(d)

    @property
    def complete(self) -> bool:
        return len(self.done) >= len(self.stages)

    def summary(self) -> WaveFinished:
        """Its `wave_finished`: every stage in the list of its final status."""
        by_status: dict[str, list[str]] = {}
        for s in self.stages:
            by_status.setdefault(self.done[s], []).append(s)
        ran, restored, skipped, failed, blocked, cancelled, lost = (by_status.get(k, []) for k in STATUSES)
        return WaveFinished(self.number, ran, restored, skipped, failed, blocked, cancelled, lost, list(self.moved))

    def validate(self) -> None:
        running = set(self.running.values())
        assert len(running) == len(self.running), "a stage has two live attempts"
        for s in self.ready:
            assert s not in self.done and s not in running, f"{s} ready but done/running"
        for s in self.done:
            assert s not in running, f"{s} done but still running"
        assert len(self.ready) == len(set(self.ready)), f"a stage ready twice: {self.ready}"
        for s, attempt in self.behind.items():
            assert self.running.get(attempt) == s, f"{s} behind without its attempt running"
            assert self.waiting.get(s, 0) > 0, f"{s} behind with no upstream to wait for"


@mutable_record
class PendingRun(MutableRecord):
    stages: set[str] | None  # None = every stage
    force: bool
    keep_going: bool
    # exact: these stages and their downstream (a change's effect), without their upstream
    exact: bool = False
    trigger: str = "run"
    paths: list[str] = field(default_factory=list)
    # The id of the message that caused it (a run_request, a files_changed): the wave's
    # wave_started names it as its parent, so a wave can be traced to its cause.
    cause: str | None = None
    # only: these stages alone (`pivot repro -s`), neither their upstream nor downstream
    only: bool = False

    def merge(self, other: PendingRun) -> None:
        self.cause = self.cause or other.cause
        if self.stages is None or other.stages is None:
            self.stages = None
        else:
            self.stages |= other.stages
        self.exact = self.exact and other.exact and self.stages is not None
        self.only = self.only and other.only and self.stages is not None
        self.force = self.force or other.force
        self.keep_going = other.keep_going
        if other.trigger != self.trigger:
            # The weightiest cause names the merged wave (a params change beside a data
            # edit was said to be "code").
            self.trigger = min(self.trigger, other.trigger, key=_weight)
        self.paths = sorted(set(self.paths) | set(other.paths))


_TRIGGERS = ("run", "code", "params", "files")  # weightiest first (docs/events.md)


def _weight(trigger: str) -> int:
    return _TRIGGERS.index(trigger) if trigger in _TRIGGERS else len(_TRIGGERS)
