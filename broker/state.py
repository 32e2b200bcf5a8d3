"""The broker's decisions: a pure state machine. Events in, commands out.

No sockets, no clock reads: time arrives inside events (`Tick.now`, `PoolJoined.now`).
`broker.service` owns the I/O and feeds this. Tests feed events and assert commands.

A wave is dispatched by dependency counting: a stage is sent to a pool with a free slot
the moment every upstream stage in the wave has finished as ran or skipped. At most one
wave is in flight; run requests arriving meanwhile are merged into the next one.
"""

from __future__ import annotations

import heapq
from typing import Any

from broker.debounce import ChangeQueue
from broker.events import (
    ChangesConfirmed,
    Command,
    ConfirmChanges,
    Event,
    FilesReported,
    InstallReported,
    LoadOwnManifest,
    ManifestArrived,
    ManifestRejected,
    Note,
    Noticed,
    OutputReceived,
    PauseRequested,
    PoolGone,
    PoolHeard,
    PoolJoined,
    PoolManifest,
    Reply,
    ResultReceived,
    RunRequested,
    SendWork,
    ShutdownRequested,
    SnapshotRequested,
    StageRunningReported,
    Tick,
    WatcherJoined,
    WavePlanned,
)
from broker.pools import PoolInfo, PoolTable
from broker.reload import Reload
from broker.stopping import StopPlan
from broker.view import EngineView
from broker.wave import PendingRun, Wave
from pivot.errors import UserError
from pivot.pipeline.graph import StageGraph
from pivot.pipeline.manifest import Manifest, spec_difference
from pivot.pipeline.params import PARAMS_FILE
from pivot.pipeline.producers import inside
from pivot.pipeline.project import DVC_FILE, PIPELINE_FILE
from pivot.pipeline.select import Selection, resolve_names
from pivot.protocol.messages import (
    CancelStage,
    EngineStopped,
    Heartbeat,
    LoadManifest,
    ManifestAccepted,
    Message,
    Notice,
    Paused,
    PipelineInvalid,
    PipelineLoaded,
    PlanWave,
    PoolLost,
    PoolShutdown,
    PoolWelcome,
    ResultAck,
    Resumed,
    RunReply,
    RunStage,
    ShutdownReply,
    Snapshot,
    StageFinished,
    StageStarted,
    Status,
    WaveStarted,
)
from pivot.protocol.record import MutableRecord, mutable_record
from pivot.state.decide import same_params
from pivot.state.reasons import ReasonCode

__all__ = ["BrokerState"]

HEARTBEAT_S = 1.0
LIVENESS = 3
OK_STATUSES = frozenset({Status.RAN, Status.RESTORED, Status.SKIPPED})
SELF_TRIGGER_LIMIT = 3  # runs in a row caused by a stage's own writes to what it reads
# What a wave's `paths` name when third-party code changed (no project path did).
INSTALLED = "(installed packages)"
MAX_CHARGES = 3  # a stage whose own worker dies this often in one wave fails
# A save is a few paths (the file, a temp file renamed over it, a backup); more is a copy
# or a checkout, which the quiet window groups whatever pauses its writer took.
LONE_PATHS = 4


def _kept_by_pivot(path: str) -> bool:
    """The root's .gitignore, whose block of outputs Pivot keeps (pivot/pipeline/gitignore.py),
    or the temp file it is written to: a save by Pivot, not by its user."""
    return path == ".gitignore" or (path.startswith("..gitignore.") and path.endswith(".tmp"))


@mutable_record
class LiveOptions(MutableRecord):
    """How `pivot up` reacts to changes (fixed at start, used for every later wave)."""

    debounce_s: float = 0.02  # quiet window, extended by each new change
    max_wait_s: float = 5.0  # a stream of changes still yields waves
    keep_going: bool = False
    scope: tuple[str, ...] = ()  # `pivot up STAGES`: only these and their upstream stay live
    # A stage whose inputs change while it runs is cancelled and runs again at once
    # (watchexec's restart policy); without it, it finishes and runs in the next wave.
    restart: bool = False
    # `pivot up` starts its own watcher: no wave before it watches (no edit is missed).
    # A standalone broker runs requests at once; a watcher joining later has every
    # stage checked (it could not see what changed before it came).
    wait_for_watcher: bool = True


class BrokerState:
    def __init__(
        self,
        heartbeat_s: float = HEARTBEAT_S,
        liveness: int = LIVENESS,
        live: LiveOptions | None = None,
        broker_id: str = "",
        manifest_source: str = "pool-1",
    ) -> None:
        self.broker_id = broker_id  # new at every start: attempt ids carry it
        # Whose loader's manifest is the engine's: the pool the engine started in its own
        # checkout (`pivot up`, `pivot repro`), or "" for a loader beside the broker (a
        # standalone broker). Other pools' manifests are compared with it.
        self.manifest_source = manifest_source
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self.live = live  # None: one-shot (`repro`); file changes are not acted on
        # Live mode: raw changed paths waiting for the quiet window, then for a check.
        self.changes = ChangeQueue(live.debounce_s, live.max_wait_s) if live else ChangeQueue(0.0, 0.0)
        self.reload = Reload()
        # Loads asked (each LoadManifest numbered); the broker's own loader's last one.
        self.loads = 0
        self.own_asked: int | None = None
        # Stages that change what they read while they run (broker: _stop_self_triggered).
        self.changed_while_running: dict[str, set[str]] = {}  # path -> its readers then running
        self.self_triggered: dict[str, int] = {}  # stage -> runs in a row its own run caused
        self.looping: set[str] = set()  # stopped for it, until a change made while they do not run
        self.watchers_joined = 0
        self.paused = False  # no new wave starts (changes are still collected)
        self.pools = PoolTable(heartbeat_s, liveness)
        self.manifest: Manifest | None = None
        self.graph: StageGraph | None = None
        self.pipeline_error: PipelineInvalid | None = None  # in force until a manifest loads
        self.warned: set[str] = set()  # the manifest's warnings, said or to be said
        self.unsaid: list[str] = []  # ... not said yet
        self.said_waiting: list[str] = []  # changes held back by a pause, last said
        self.pending: PendingRun | None = None
        # Requests that arrived before any valid manifest: they are answered once stage
        # names can be checked (a fix of a broken pipeline may still come).
        self.unchecked: list[RunRequested] = []
        self.wave: Wave | None = None
        self.wave_count = 0
        self.written: frozenset[str] = frozenset()  # outputs of the stages of the last wave
        self.view = EngineView()
        self.attempt_count = 0
        self.stop = StopPlan()
        self._out: list[Command] = []

    # --- entry point ---------------------------------------------------------------

    def handle(self, event: Event) -> list[Command]:
        if isinstance(event, PoolHeard):  # every message a pool sends: nothing else to do
            self.pools.heard(event.pool, event.now)
            return []
        self._out = []
        match event:
            case PoolJoined():
                self._pool_joined(event)
            case PoolGone() if event.leaving:
                self._pool_leaving(event.pool)
            case PoolGone():
                self._pool_gone(event.pool, event.reason, event.confirmed)
            case ManifestArrived() | PoolManifest() | ManifestRejected() if self._superseded(event.pool, event.load):
                pass  # an answer to an earlier load, read before a later save: its answer comes
            case ManifestArrived():
                self._manifest_arrived(event.pool, event.manifest, event.graph)
            case PoolManifest():
                self._pool_manifest(event)
            case ManifestRejected():
                self.pipeline_error = PipelineInvalid(event.message, event.detail)
                self._publish(self.pipeline_error)
                if self.reload.active:
                    self._cancel_outdated(None)  # no new code to tell which are as they were
                self._reload_answered()
            case RunRequested():
                self._run_requested(event)
            case SnapshotRequested():
                self._out.append(Reply(event.client, self.snapshot()))
            case PauseRequested():
                if event.paused != self.paused:
                    self.paused = event.paused
                    if event.paused:
                        self._say_paused()
                    else:
                        self._publish(Resumed())
                word = "paused" if event.paused else "resumed"
                self._out.append(Reply(event.client, RunReply(True, word)))
            case ShutdownRequested():
                self._shutdown_requested(event)
            case StageRunningReported():
                self._stage_running(event)
            case OutputReceived():
                self._output(event)
            case WavePlanned():
                self._wave_planned(event)
            case FilesReported():
                self._files_reported(event)
            case ChangesConfirmed():
                self._changes_confirmed(event.paths)
            case InstallReported():
                self._install_reported(event)
            case WatcherJoined():
                self._watcher_joined()
            case Noticed():
                self._publish(Notice(event.message))
            case ResultReceived():
                self._result(event)
            case Tick():
                self._tick(event.now)
                self._flush_changes(event.now)
                self._shutdown_deadlines(event.now)
        self._maybe_start_wave()
        self._dispatch()
        self._maybe_stopped()
        return self._out

    # --- pools ---------------------------------------------------------------------

    def _pool_joined(self, event: PoolJoined) -> None:
        running = dict(event.running)
        wave = self.wave
        ours = {a for a in running if wave is not None and a in wave.running}
        old = self.pools.get(event.pool)
        same = old is not None and old.incarnation == event.incarnation
        if old is not None:
            # The same process saying hello again keeps what it still runs; a new process
            # under the old name: the old one may still run its attempts (held back).
            old.attempts -= ours if same else set()
            self._pool_gone(event.pool, "pool reconnected", confirmed=same)
        if self.pools.is_fenced(event.pool):
            # It is back: what it still runs stays its own; the rest may run elsewhere.
            self.pools.keep_fenced_except(event.pool, ours)
            self._release(event.pool)
        # Attempts of this wave it still runs are its own again; others (from before a
        # broker restart) hold their stages until they end.
        new = PoolInfo(
            max(1, event.slots), event.now, event.now, attempts=ours, incarnation=event.incarnation,
            tags=event.tags, host=event.host, pid=event.pid, joined=event.now,
            foreign={a: s for a, s in running.items() if a not in ours}, queue=event.queue,
        )
        if same and old is not None:  # the same process: its manifest has not changed
            new.manifest, new.current, new.mismatched = old.manifest, old.current, old.mismatched
            new.asked = old.asked
        self.pools.add(event.pool, new)
        self._send(event.pool, PoolWelcome(event.pool, self.heartbeat_s, self.liveness, self.broker_id))

    def _superseded(self, pool: str, load: int) -> bool:
        """Whether a loader's answer is to a load other than the last one asked of it."""
        asked = self.own_asked if pool == "" else getattr(self.pools.get(pool), "asked", None)
        return asked is not None and load != asked

    def _pool_manifest(self, event: PoolManifest) -> None:
        pool = self.pools.get(event.pool)
        if pool is None:
            return
        if event.manifest is None:
            pool.current, pool.manifest = False, None
            self._publish(Notice(f"worker pool {event.pool} could not load the pipeline: {event.error}; it gets no stages"))
            return
        pool.manifest = event.manifest
        self._check_pool(event.pool)

    def _check_pool(self, name: str) -> None:
        """Compare a pool's manifest with the engine's: once both are in (after a reload),
        it may run every stage whose spec it shares, and replaces its workers now."""
        pool = self.pools[name]
        if pool.current or pool.manifest is None or self.manifest is None or self.reload.active:
            return
        if self.pipeline_error is not None:
            return  # the engine's own load failed: the pool keeps its workers
        ours, theirs = self.manifest.by_name, pool.manifest.by_name
        if pool.manifest is self.manifest:  # the source's own: nothing to compare
            mismatched: frozenset[str] = frozenset()
        else:
            mismatched = frozenset(s for s in ours if theirs.get(s) != ours[s])
        if mismatched and mismatched != pool.mismatched:
            shown = ", ".join(sorted(mismatched)[:10]) + (" ..." if len(mismatched) > 10 else "")
            first = min(mismatched)
            self._publish(Notice(
                f"worker pool {name} loaded other code or declarations for {shown} (an old "
                f"checkout on its host?): it gets none of those stages ({first}: "
                f"{spec_difference(ours[first], theirs.get(first))})"
            ))
        pool.mismatched, pool.current = mismatched, True
        self._send(name, ManifestAccepted())  # before any stage is sent to it on it

    def _pool_leaving(self, name: str) -> None:
        pool = self.pools.get(name)
        if pool is None:
            return
        pool.leaving = True
        self._forget_if_left(name)

    def _forget_if_left(self, name: str) -> None:
        """A pool that said goodbye is forgotten once none of its attempts is out."""
        if self.pools.forget_if_left(name):
            self._publish(Notice(f"worker pool {name} left"))
            if self.wave is not None and self.wave.planner == name:
                self.wave.planner = None

    def _pool_gone(self, name: str, reason: str, confirmed: bool = True) -> None:
        pool = self.pools.remove(name)
        if pool is None:
            if confirmed and self.pools.is_fenced(name):  # its processes are dead now: no wait
                self._release(name)
            return
        wave = self.wave
        attempts = sorted(a for a in pool.attempts if wave and a in wave.running)
        lost = sorted(wave.running[a] for a in attempts) if wave else []
        # Not those given behind their upstream: they wait for it, as they did before.
        self._publish(PoolLost(name, reason, [s for s in lost if wave is None or s not in wave.behind]))
        if wave is None:
            return
        if wave.planner == name:
            wave.planner = None  # no plan coming: every stage is decided at dispatch
        if not confirmed and attempts:
            # It may still be running them: they stay "running" here until it has had
            # the time to notice and stop them (or its death is confirmed).
            self.pools.fence(name, attempts, reason)
            return
        for attempt in attempts:
            del wave.running[attempt]
        self._requeue_lost(lost, reason)

    def _release(self, name: str) -> None:
        """A lost pool's held-back attempts may run elsewhere now."""
        fenced = self.pools.release(name)
        wave = self.wave
        if fenced is None or wave is None:
            return
        lost = sorted(wave.running.pop(a) for a in fenced.attempts if a in wave.running)
        self._requeue_lost(lost, fenced.reason)

    def _requeue_lost(self, lost: list[str], reason: str) -> None:
        wave = self.wave
        if wave is None:
            return
        for stage in lost:
            if wave.halted:  # nothing new starts in this wave (a failure, code change, stop)
                if wave.code_halt:
                    self.reload.carry.add(stage)
                self._finish(stage, Status.CANCELLED, ReasonCode.CANCELLED, f"not run again: its pool was lost ({reason})", 0.0, None)
                continue
            # Back in the queue (or, given behind its upstream, waiting for it again): the
            # pool that replaces this one runs it.
            self._set_view(stage, Status.PENDING, ReasonCode.POOL_LOST, f"its pool was lost: {reason}", 0.0)
            wave.requeue(stage)
        self._maybe_finish_wave()

    def _tick(self, now: float) -> None:
        due = self.pools.tick(now)
        for name in due.released:
            self._release(name)
        for name, silent_s in due.silent:
            self._pool_gone(name, f"no heartbeat for {silent_s:.1f} s", confirmed=False)
        for name in due.heartbeats:
            self._send(name, Heartbeat(name))

    def _send(self, pool: str, msg: Message) -> None:
        self._out.append(SendWork(pool, msg))

    def note_sent(self, pool: str, now: float) -> None:
        """The service reports when it last wrote to a pool (heartbeats are skipped then)."""
        self.pools.sent(pool, now)

    # --- manifest ------------------------------------------------------------------

    def _manifest_arrived(self, pool: str, manifest: Manifest, graph: StageGraph) -> None:
        old = self.manifest.by_name if self.manifest else {}
        new = manifest.by_name
        added = sorted(set(new) - set(old))
        removed = sorted(set(old) - set(new))
        # (Params of another type with an equal value, 1 -> 1.0, are a change: `==` says not.)
        changed = sorted(n for n in set(old) & set(new)
                         if old[n] != new[n] or not same_params(old[n].params, new[n].params))
        self.manifest, self.graph, self.pipeline_error = manifest, graph, None
        source = self.pools.get(pool)
        if source is not None:
            source.manifest = manifest
        for name in self.pools.names():
            self._check_pool(name)
        for name in graph.order:
            if name not in self.view.stages:
                self._set_view(name, Status.PENDING, "", "", 0.0)
        for name in removed:
            self.view.forget(name)
        self._publish(PipelineLoaded(added, removed, changed))
        # Its warnings (a params.yaml section naming no stage), each once while it holds:
        # every display says them, as `pivot status` does. The first manifest's wait for
        # the first wave: the display that asked for it has joined by then.
        self.unsaid += [w for w in manifest.warnings if w not in self.warned and w not in self.unsaid]
        self.warned = set(manifest.warnings)
        if self.wave_count:
            self._say_warnings()
        waiting, self.unchecked = self.unchecked, []
        for request in waiting:
            self._run_requested(request)
        if self.reload.active:
            affected = self._in_scope((set(added) | set(changed) | self.reload.take_carry()) & set(new))
            self._cancel_outdated(self._in_scope(affected | graph.downstream_of(affected)))
            affected |= self.reload.take_carry()  # (those just cancelled)
            if affected:
                trigger, paths = self.reload.trigger
                run = PendingRun(affected, False, self._keep_going(), True, trigger, paths)
                run.cause = self.changes.cause_of(paths)
                self._queue(run)
        self._reload_answered()

    # --- runs and waves ------------------------------------------------------------

    def _run_requested(self, event: RunRequested) -> None:
        if self.stopping:
            self._out.append(Reply(event.client, RunReply(False, "the engine is shutting down")))
            return
        if self.manifest is None:
            self.unchecked.append(event)
            return
        try:
            selection = Selection(event.select)
            names = resolve_names(event.stages, list(self.manifest.by_name), glob=event.glob)
        except ValueError:
            self._out.append(Reply(event.client, RunReply(False, f"unknown selection {event.select!r}")))
            return
        except UserError as exc:
            self._out.append(Reply(event.client, RunReply(False, str(exc))))
            return
        targets = set(names) if event.stages else None
        if targets is not None and selection is Selection.DOWNSTREAM and self.graph is not None:
            targets |= self.graph.downstream_of(targets)  # their upstream is added as for any run
        run = PendingRun(targets, event.force, event.keep_going, cause=event.cause or None)
        run.only = targets is not None and selection is Selection.SINGLE
        self._queue(run)
        why = "queued; `pivot up` is paused: it runs once resumed (p)" if self.paused else "queued"
        self._out.append(Reply(event.client, RunReply(True, why)))

    def _queue(self, run: PendingRun) -> None:
        if self.pending is None:
            self.pending = run
        else:
            self.pending.merge(run)
        if self.paused and self.pending.paths != self.said_waiting:
            self._say_paused()

    def _say_paused(self) -> None:
        """Paused, with the changes whose wave waits (every display's header lists them)."""
        self.said_waiting = list(self.pending.paths) if self.pending is not None else []
        self._publish(Paused(self.said_waiting))

    def _maybe_start_wave(self) -> None:
        if self.pending is None or self.stopping or self.reload.active:
            return
        if self.wave is not None and not self.wave.code_halt:
            return
        if self.paused or (self.live is not None and self.live.wait_for_watcher and self.watchers_joined == 0):
            return  # live: nothing runs before the watch is registered (no edit is missed)
        if self.live is not None and self.pipeline_error is not None and self.manifest is not None:
            # The source on disk is broken: a fresh worker would import it and fail every
            # stage, and no other copy of the last good code exists. Changes wait for a fix.
            return
        if self.graph is None or self.manifest is None or not self.pools:
            return
        run = self.pending
        # Names were checked on request; a reload may have removed some since.
        targets = sorted(run.stages & set(self.manifest.by_name)) if run.stages is not None else None
        if targets is None:
            wanted = set(self.graph.order)
        elif run.only:
            wanted = set(targets)
        elif run.exact:
            wanted = self._in_scope(set(targets) | self.graph.downstream_of(set(targets)))
        else:
            wanted = self.graph.with_upstream(targets)
        adopted: dict[str, str] = {}
        if self.wave is not None:
            # A code change stopped it; what runs on in it, its code as it was, is taken
            # over rather than waited for (a long stage beside the edited one).
            found = self._adoptable(self.wave, wanted) if wanted else None
            if found is None:
                return
            adopted = found
            self.wave.hand_over(adopted)
            self._maybe_finish_wave()
            assert self.wave is None
        self.pending = None
        if not wanted:
            return
        self.wave_count += 1
        members = wanted | set(adopted.values())
        self.wave = wave = Wave.plan(self.wave_count, self.graph, members, run.force, run.keep_going)
        wave.adopt(adopted)
        stages = wave.stages
        if self.live is not None and self.manifest is not None:
            by_name = self.manifest.by_name
            self.written = frozenset(
                out.rstrip("/") for name in stages if name in by_name for out in by_name[name].outs
            )
        running = set(adopted.values())
        for s in stages:
            if s not in running:
                self._set_view(s, Status.PENDING, "", "", 0.0)
        self.view.last_change = (run.trigger, list(run.paths))
        self._say_warnings()
        self._publish(WaveStarted(wave.number, stages, run.trigger, run.paths), parent=run.cause)
        for stage in sorted(running, key=wave.position.__getitem__):
            seen = self.view.stages.get(stage)
            code, reason = (seen.reason_code, seen.reason) if seen is not None else ("", "")
            self._set_view(stage, Status.RUNNING, code, reason, 0.0)
            # (the same run: `from_wave` tells displays not to start it over)
            self._publish(StageStarted(wave.number, stage, code, reason, {"from_wave": wave.number - 1}))
        planner = self.pools.first_current()
        # A change's wave (saved files, edited code or params: the stages reading what
        # changed, or whose spec did, and their downstream) is not planned: each stage
        # of it is affected, so the plan would find next to nothing up to date, and its
        # first stages would wait for it (a 50-stage chain's first one, for the plan of
        # the 49 after it). Each is decided by the pool it goes to, as after a plan.
        change = run.exact and run.trigger != "run"
        if not run.force and not change and stages and planner is not None:
            # One batch question instead of a round trip per up-to-date stage.
            wave.planner = planner
            upstream = {s: sorted(self.graph.upstream[s] & wanted) for s in stages}
            self._send(wave.planner, PlanWave(wave.number, stages, upstream))
        self._maybe_finish_wave()

    def _dispatch(self) -> None:
        """Ready stages, in order, to free slots of pools with every tag they name."""
        wave = self.wave
        if wave is None or wave.halted or wave.planner is not None or self.stopping:
            return
        free = self.pools.free_slots()
        busy = self.pools.foreign_stages()
        for stage in list(wave.ready):
            if not free:
                return
            if stage in busy:
                continue  # an attempt from before a broker restart still runs it
            tags = self._tags(stage)
            # A free slot anywhere first; a pool's queue only when no pool that takes it
            # has one (two stages that must run side by side would wait in one queue).
            takers = [n for n in free if self.pools[n].takes(stage, tags)]
            name = next((n for n in takers if self.pools[n].idle()), takers[0] if takers else None)
            if name is None:
                self._no_pool(stage, tags)
                continue
            wave.ready.remove(stage)
            self._give(wave, stage, name, free, [])
            if self.wave is None:
                return
        if free:
            self._dispatch_behind(wave, free, busy)

    def _dispatch_behind(self, wave: Wave, free: dict[str, int], busy: set[str]) -> None:
        """Stages whose unfinished upstream stages are all attempts given to one pool, to
        that pool's queue room (protocol.md, "Behind its upstream"): a chain's next stage
        then starts as its upstream ends, where it waited for the broker's round trip
        (two hops and this loop: 15-25 % of a chain's cost per stage here)."""
        assert self.graph is not None
        owner = {a: name for name, pool in self.pools.items() if pool.queue and free.get(name) for a in pool.attempts}
        if not owner:
            return
        attempts = {stage: a for a, stage in wave.running.items()}
        # In the wave's order; a stage given behind brings its own downstream stages in.
        order = wave.position
        candidates = [(order[d], d) for a, u in wave.running.items() if a in owner
                      for d in self.graph.downstream[u] if d in order]
        heapq.heapify(candidates)
        while candidates and free:
            _, stage = heapq.heappop(candidates)
            if wave.waiting[stage] == 0 or stage in wave.done or stage in attempts:
                continue  # ready (or about to be), finished, or given already
            if stage in busy:
                continue
            found = self._upstream_pool(wave, stage, attempts, owner)
            if found is None:
                continue
            name, after = found
            if not free.get(name) or not self.pools[name].takes(stage, self._tags(stage)):
                continue
            attempt = self._give(wave, stage, name, free, after)
            wave.behind[stage] = attempts[stage] = attempt
            owner[attempt] = name
            for d in self.graph.downstream[stage]:
                if d in order:
                    heapq.heappush(candidates, (order[d], d))

    def _give(self, wave: Wave, stage: str, name: str, free: dict[str, int], after: list[str]) -> str:
        """A new attempt of `stage` to pool `name` (one of its `free` slots), behind the
        attempts `after`; returns it."""
        free[name] -= 1
        if not free[name]:
            del free[name]
        self.attempt_count += 1
        attempt = f"{self.broker_id}w{wave.number}-{self.attempt_count}"
        wave.running[attempt] = stage
        pool = self.pools[name]
        pool.attempts.add(attempt)
        # One given behind stays pending as it was: it waits for its upstream stages.
        if not after and len(pool.attempts) > pool.slots:  # held in its queue
            self._set_view(stage, Status.PENDING, "", f"queued on pool {name}", 0.0)
        elif not after:
            self._set_view(stage, Status.RUNNING, "", "", 0.0)
        self._send(name, RunStage(wave.number, stage, attempt, wave.force, after))
        return attempt

    def _upstream_pool(
        self, wave: Wave, stage: str, attempts: dict[str, str], owner: dict[str, str],
    ) -> tuple[str, list[str]] | None:
        """The one pool holding attempts of every upstream stage of `stage` in the wave not
        yet finished well, and those attempts; None when there is no such pool."""
        assert self.graph is not None
        after, pools = [], set()
        for u in self.graph.upstream[stage]:
            if u not in wave.waiting or wave.done.get(u) in OK_STATUSES:
                continue  # outside the wave, or finished well
            a = attempts.get(u)
            if a is None or a not in owner:
                return None  # it waits for the broker, or runs in a pool that cannot hold it
            after.append(a)
            pools.add(owner[a])
        return (pools.pop(), sorted(after)) if len(pools) == 1 else None

    def _tags(self, stage: str) -> frozenset[str]:
        spec = self.manifest.by_name.get(stage) if self.manifest else None
        return frozenset(spec.tags) if spec is not None else frozenset()

    def _no_pool(self, stage: str, tags: frozenset[str]) -> None:
        """No free pool has `tags`. If none connected has them: a one-shot run fails the
        stage now; a live engine lets it wait (said once) for such a pool to join."""
        if self.pools.any_has(tags):
            return  # one has them, busy for now
        wave = self.wave
        assert wave is not None
        needs = ", ".join(sorted(tags))
        if self.live is None:
            wave.ready.remove(stage)
            why = (f"no worker pool has the tags it needs ({needs}); start one with "
                   f"`pivot workers {' '.join('--tag ' + t for t in sorted(tags))}`")
            self._fail_now(stage, ReasonCode.NO_POOL, why, {"tags": sorted(tags)})
            return
        view = self.view.stages.get(stage)
        if view is None or view.reason_code != ReasonCode.NO_POOL or view.wave != wave.number:
            why = f"waiting for a pool with tags {needs}"
            self._set_view(stage, Status.PENDING, ReasonCode.NO_POOL, why, 0.0)
            self._publish(Notice(f"stage {stage} is {why} (`pivot workers --tag ...`)"))

    def _fail_now(self, stage: str, code: str, reason: str, details: dict[str, Any]) -> None:
        """Fail a stage the broker could not dispatch, as a failed result would."""
        wave = self.wave
        assert wave is not None
        self._finish(stage, Status.FAILED, code, reason, 0.0, None, details)
        self._block_downstream(stage)
        if not wave.keep_going:
            wave.halted = True
            self._cancel_rest()
            self._cancel_unstarted(f"stopped before its code ran: {stage} failed")
        self._maybe_finish_wave()

    def _cancel_unstarted(self, why: str) -> None:
        """Nothing new starts: attempts given to a pool that has not started them (held in
        its queue, or being decided) are cancelled there; started ones run on."""
        wave = self.wave
        assert wave is not None
        for name, pool in self.pools.items():
            for attempt in sorted(pool.attempts):
                if attempt in wave.running and attempt not in wave.started:
                    self._send(name, CancelStage(attempt, why))

    def _stage_running(self, event: StageRunningReported) -> None:
        wave = self.wave
        if wave is None or event.attempt not in wave.running:
            return
        stage = wave.running[event.attempt]
        wave.started.add(event.attempt)
        self._set_view(stage, Status.RUNNING, event.reason_code, event.reason, 0.0)
        self.view.started(stage)
        self._publish(StageStarted(wave.number, stage, event.reason_code, event.reason, event.details))

    def _output(self, event: OutputReceived) -> None:
        """Lines a running attempt printed: published as they come, from the pool it was
        given to only."""
        wave, pool = self.wave, self.pools.get(event.pool)
        if wave is None or pool is None or event.attempt not in wave.running or event.attempt not in pool.attempts:
            return
        self._out.extend(self.view.stream(wave.running[event.attempt], event.lines))

    def _result(self, event: ResultReceived) -> None:
        try:
            self._take_result(event)
        finally:
            # Either way: stop resending it. After what the result caused: a pool holds
            # its queued stages after a failure until this ack, so that the cancels of a
            # fail-fast run reach it first (workers/pool.py `unsettled`).
            self._send(event.pool, ResultAck(event.attempt))

    def _take_result(self, event: ResultReceived) -> None:
        pool = self.pools.get(event.pool)
        if pool is not None and event.incarnation and pool.incarnation and event.incarnation != pool.incarnation:
            self._out.append(
                Note(f"rejected the result of {event.attempt} from pool {event.pool!r}: it comes from "
                     f"an earlier run of that pool (incarnation {event.incarnation}, now {pool.incarnation})")
            )
            return
        # Only the pool an attempt was given to may finish it (attempt ids are easy to
        # guess: the broker's id from its welcome, the wave and a counter).
        given = pool is not None and event.attempt in pool.attempts
        if pool is not None:
            pool.attempts.discard(event.attempt)
            foreign = pool.foreign.pop(event.attempt, None) is not None
            self._forget_if_left(event.pool)
            if foreign:
                return  # from before a broker restart: its stage is free to run again
        wave = self.wave
        if wave is None or event.attempt not in wave.running:
            return  # a duplicate, or an attempt that was already declared lost
        if not given:
            self._out.append(
                Note(f"rejected the result of {event.attempt} from pool {event.pool!r}: that attempt "
                     "was not given to it")
            )
            return
        stage = wave.running.pop(event.attempt)
        wave.behind.pop(stage, None)  # (its pool gave it back, unstarted)
        if self.graph is not None and stage not in self.graph.upstream:
            # Removed from the pipeline (or renamed) as it ran: its wave needs it over, and
            # nothing is downstream of it any more, nor is it a stage to show.
            wave.done[stage] = event.status
            self._publish(StageFinished(wave.number, stage, event.status, event.reason_code, event.reason,
                                        event.duration_s, event.error, {}))
            self._maybe_finish_wave()
            return
        if event.attempt in wave.adopted:
            wave.adopted.discard(event.attempt)
            # (one a `--restart` cancelled goes back in the queue by `_restarted`)
            if event.status == Status.CANCELLED and not wave.halted and stage not in wave.restarting:
                # Its pool cancelled it with the old code after all: it runs here.
                self._set_view(stage, Status.PENDING, event.reason_code, event.reason, 0.0)
                wave.requeue(stage)
                return
        if event.status not in OK_STATUSES:
            # Those given behind it: their pool gives them back (its `lost` is ignored).
            assert self.graph is not None
            for dropped in wave.drop_behind(stage, self.graph):
                # Else it waits again: blocked below if `stage` failed for good.
                if wave.halted:  # as the halt finished every stage not running then
                    why = f"not started: the wave stopped before {stage} finished"
                    self._finish(dropped, Status.CANCELLED, ReasonCode.CANCELLED, why, 0.0, None)
        # Dependencies whose content changed while it ran (the pool checks them after the
        # run): a stage writing what it reads would run again and again.
        for path in event.details.get("changed_deps") or ():
            if isinstance(path, str):
                self.changed_while_running.setdefault(path, set()).add(stage)
        if self._restarted(wave, stage, event) or self._retry(wave, stage, event):
            return
        ran = event.status in (Status.RAN, Status.FAILED)  # the stage's code ran
        self._out.extend(self.view.log_lines(stage, event.logs, ran))
        self._finish(
            stage, event.status, event.reason_code, event.reason, event.duration_s, event.error,
            event.details,
        )
        if event.status in OK_STATUSES:
            assert self.graph is not None
            wave.release_downstream(self.graph.downstream[stage])
            wave.sort_ready()
        elif wave.code_halt and event.status == Status.CANCELLED:
            if self.reload.active:
                self.reload.carry.add(stage)
            else:  # (cancelled as its code changed: in the reload's run already)
                self._queue(PendingRun({stage}, False, self._keep_going(), True, "code", []))
        elif event.reason_code == ReasonCode.CODE_OUTDATED:
            self._code_outdated(stage, [p for p in event.details.get("paths") or () if isinstance(p, str)])
        else:
            self._block_downstream(stage)
            # A missing input file fails its stage before any code ran: nothing went wrong
            # that stopping the others could contain, so it halts nothing (as `pivot up`
            # and `pivot status` treat it: only that stage and what needs it fail).
            if not wave.keep_going and event.reason_code != ReasonCode.DEP_MISSING:
                wave.halted = True
                self._cancel_rest()
                self._cancel_unstarted(f"stopped before its code ran: {stage} failed")
        self._maybe_finish_wave()

    def _code_outdated(self, stage: str, paths: list[str]) -> None:
        """A worker found code of `stage` saved since the manifest it was given under was
        taken: nothing more starts on that manifest. Live, the pipeline is loaded again
        (the watcher's report of that save may not have come yet) and the stage runs
        after it; one-shot, the run ends here (the stage's reason says to run it again)."""
        wave = self.wave
        assert wave is not None
        self.reload.carry.add(stage)
        if self.live is not None:
            if not self.reload.active and not self.stopping:
                self._reload(True, paths)
            return
        wave.halted = True
        self._cancel_unstarted("not started: the pipeline's code changed after it was loaded")
        for s in wave.unstarted():
            self._finish(s, Status.CANCELLED, ReasonCode.CANCELLED,
                         "not started: the pipeline's code changed after it was loaded", 0.0, None)
        wave.ready.clear()

    def _restarted(self, wave: Wave, stage: str, event: ResultReceived) -> bool:
        """--restart: a stage cancelled because its inputs changed goes back in the queue
        (no stage_finished: it has not finished in this wave). One that finished before
        the cancel reached it ran on the old inputs: it runs again in the next wave."""
        if stage not in wave.restarting:
            return False
        wave.restarting.discard(stage)
        if event.status != Status.CANCELLED:
            self._queue(PendingRun({stage}, False, self._keep_going(), True, "files", []))
            return False
        if wave.halted:
            return False  # cancelled for good (fail-fast or a code change)
        self._set_view(stage, Status.PENDING, ReasonCode.DEPS_CHANGED, event.reason, 0.0)
        wave.requeue(stage)
        return True

    def _retry(self, wave: Wave, stage: str, event: ResultReceived) -> bool:
        """A stage lost with another stage's worker runs again uncharged; one whose own
        worker died is charged and runs again, until its third charge fails it."""
        if event.status == Status.LOST:
            why = event.reason
        elif event.reason_code == "worker_died":
            wave.charges[stage] = charges = wave.charges.get(stage, 0) + 1
            if charges >= MAX_CHARGES:
                return False
            why = f"{event.reason}; running it again ({charges} of {MAX_CHARGES} tries used)"
        else:
            return False
        if wave.halted:  # fail-fast tripped meanwhile: nothing new starts
            self._finish(stage, Status.CANCELLED, ReasonCode.CANCELLED, f"not run again: an earlier stage failed ({why})", 0.0, None)
            self._maybe_finish_wave()
            return True
        self._set_view(stage, Status.PENDING, event.reason_code, why, 0.0)
        wave.requeue(stage)
        return True

    def _wave_planned(self, event: WavePlanned) -> None:
        wave = self.wave
        if wave is None or wave.number != event.wave or wave.planner != event.pool:
            return  # a late answer for a wave that moved on
        wave.planner = None
        skipping = frozenset(event.up_to_date) & frozenset(wave.waiting)
        for stage in sorted(skipping, key=wave.position.__getitem__):
            if stage in wave.done or wave.is_running(stage):
                continue
            wave.unready(stage)
            self._finish(stage, Status.SKIPPED, ReasonCode.UP_TO_DATE, "up to date", 0.0, None)
            assert self.graph is not None
            wave.release_downstream(self.graph.downstream[stage], skipping)
        wave.sort_ready()
        self._maybe_finish_wave()

    def _downstream_in_wave(self, stage: str, direct: bool = False) -> set[str]:
        assert self.graph is not None and self.wave is not None
        members = set(self.wave.stages)
        found = self.graph.downstream[stage] if direct else self.graph.downstream_of({stage})
        return set(found) & members

    def _block_downstream(self, failed: str) -> None:
        wave = self.wave
        assert wave is not None
        for d in sorted(self._downstream_in_wave(failed), key=wave.position.__getitem__):
            if d not in wave.done and not wave.is_running(d):
                wave.unready(d)
                self._finish(
                    d, Status.BLOCKED, ReasonCode.BLOCKED, f"blocked by failed upstream {failed!r}", 0.0, None,
                    {"upstream": failed},
                )

    def _cancel_rest(self) -> None:
        wave = self.wave
        assert wave is not None
        for s in wave.unstarted():
            self._finish(s, Status.CANCELLED, ReasonCode.CANCELLED, "not started: an earlier stage failed", 0.0, None)
        wave.ready.clear()

    def _finish(
        self,
        stage: str,
        status: str,
        code: str,
        reason: str,
        duration: float,
        error: str | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        wave = self.wave
        assert wave is not None
        wave.done[stage] = status
        self._set_view(stage, status, code, reason, duration, error)
        self._publish(
            StageFinished(wave.number, stage, status, code, reason, duration, error, details or {})
        )

    def _maybe_finish_wave(self) -> None:
        wave = self.wave
        if wave is None or not wave.complete:
            return
        msg = wave.summary()
        self.view.last_wave = msg
        self.wave = None
        self.changes.resume()
        self._publish(msg)

    # --- live mode: changes -> check -> reload or wave ----------------------------------

    def _watcher_joined(self) -> None:
        self.watchers_joined += 1
        if self.live is not None and (self.watchers_joined > 1 or not self.live.wait_for_watcher):
            # A restarted watcher missed what changed while none was watching: every
            # (live) stage is checked again; the wave plan skips what is up to date.
            scope = set(self.live.scope) if self.live.scope else None
            self._queue(PendingRun(scope, False, self._keep_going(), False, "files", []))

    def _say_warnings(self) -> None:
        for warning in self.unsaid:
            if warning in self.warned:  # still true of the pipeline loaded now
                self._publish(Notice(warning))
        self.unsaid = []

    def _keep_going(self) -> bool:
        return self.live.keep_going if self.live else False

    def _files_reported(self, event: FilesReported) -> None:
        if self.live is None or self.stopping:
            return
        # A settled report (every write in it complete) skips the quiet window when it is
        # a lone save: a few paths. The watcher reports a wave's own outputs while it
        # runs and just after it (closed and committed by then), often in the same burst
        # as a save that follows: they do not count, and alone they open no window. Nor
        # does the .gitignore a pool rewrites when it loads a pipeline with new outputs.
        others = [p for p in event.paths if not self._written_by_wave(p) and not _kept_by_pivot(p)]
        lone = event.settled and len(others) <= LONE_PATHS
        self.changes.report(event.paths, event.now, event.cause, settled=lone, counts=bool(others))

    def _written_by_wave(self, path: str) -> bool:
        """Whether `path` is (or is inside) an output of the stages of the last wave."""
        while path:
            if path in self.written:
                return True
            path = path.rpartition("/")[0]
        return False


    def next_deadline(self) -> float | None:
        """When the quiet window of waiting changes ends, or a shutdown step is due (the
        service wakes for it)."""
        due = self.stop.deadlines()
        if (changes := self.changes.deadline()) is not None:
            due.append(changes)
        return min(due, default=None)

    def _is_code(self, path: str) -> bool:
        if path in (PIPELINE_FILE, DVC_FILE) or path.endswith("/" + DVC_FILE):
            return True
        if self.manifest is None or self.pipeline_error is not None:
            # No manifest yet, or the code on disk does not load: any Python file may fix
            # it (a module the broken edit imports is in no manifest's sources).
            return path.endswith(".py")
        return path in self.manifest.sources

    def _flush_changes(self, now: float) -> None:
        busy = self.wave is not None or self.reload.active
        # Data changes wait for the wave in flight (its own outputs are committed by
        # then, so they check as unchanged); code must be seen at once: no stage may
        # start on old code. With --restart, inputs are seen at once too (outputs of the
        # wave's stages still wait: a stage writing its output must not restart itself).
        batch = self.changes.take(
            now, lambda p: not busy or self._is_code(p) or p == PARAMS_FILE or self._restart_input(p)
        )
        if batch is not None:
            unsettled = frozenset(
                s for s, v in self.view.stages.items() if v.status in (Status.FAILED, Status.CANCELLED)
            )
            self._out.append(ConfirmChanges(batch, unsettled))

    def _restart_input(self, path: str) -> bool:
        """--restart: `path` may be checked while the wave runs (it is no output of it)."""
        wave, manifest = self.wave, self.manifest
        if self.live is None or not self.live.restart or wave is None or self.reload.active or manifest is None:
            return False
        specs = [manifest.by_name[s] for s in wave.stages if s in manifest.by_name]
        return not any(self._touches(out, path) for spec in specs for out in spec.outs)

    def _changes_confirmed(self, paths: tuple[str, ...]) -> None:
        checked = self.changes.checked()
        code = [p for p in paths if self._is_code(p)]
        params = [p for p in paths if p == PARAMS_FILE]
        data = [p for p in paths if p not in code and p not in params]
        cause = self.changes.cause_of(data)
        # Only a reload's paths keep their cause, for the wave the reload starts.
        self.changes.forget([p for p in checked if p not in code and p not in params])
        if not paths or self.stopping:
            return
        if code or params:
            self._reload(bool(code), code + params)
        # Only paths some stage declares name the wave's cause (not a stray file saved
        # in the same moment).
        touched = {p: self._affected([p]) for p in data}
        data = [p for p in data if touched[p]]
        looping = self._stop_self_triggered(data, touched)
        for path in checked:
            self.changed_while_running.pop(path, None)
        if data:
            affected = self._in_scope(set().union(*touched.values())) - looping
            handled = affected & self._restart_running(data)
            rest = affected - handled
            if handled and self.graph is not None and self.wave is not None:
                # The wave runs these with the new content; what it does not hold of
                # their downstream (a `pivot repro STAGE` wave) runs after it.
                rest |= self._in_scope(self.graph.downstream_of(handled)) - set(self.wave.stages)
            if rest:
                self._queue(PendingRun(rest, False, self._keep_going(), True, "files", data, cause))

    def _install_reported(self, event: InstallReported) -> None:
        """Third-party code changed on a pool's host (`pip install -U`): under `pivot up`,
        a code change: the stages whose fingerprints name another version now run again,
        on new workers (those alive imported the old one). A one-shot run ends on the
        code it loaded."""
        if self.live is None or self.stopping or event.pool not in self.pools:
            return
        self._reload(True, [INSTALLED])

    def _stop_self_triggered(self, data: list[str], touched: dict[str, set[str]]) -> set[str]:
        """Stages not to run for these changes: every path that would run them changed
        while they ran, SELF_TRIGGER_LIMIT times in a row (they write their own
        dependencies: under `pivot up` they would run forever). A change made while such
        a stage does not run runs it again."""
        paths_of: dict[str, list[str]] = {}
        for path in data:
            for stage in touched[path]:
                paths_of.setdefault(stage, []).append(path)
        stopped: set[str] = set()
        for stage, paths in sorted(paths_of.items()):
            # Once stopped it writes nothing more: whatever changes next is someone else's.
            own = stage not in self.looping and all(stage in self.changed_while_running.get(p, ()) for p in paths)
            if not own:
                self.self_triggered.pop(stage, None)
                self.looping.discard(stage)
                continue
            runs = self.self_triggered[stage] = self.self_triggered.get(stage, 0) + 1
            if runs >= SELF_TRIGGER_LIMIT:
                self.looping.add(stage)
                stopped.add(stage)
                shown = ", ".join(paths[:3]) + (" ..." if len(paths) > 3 else "")
                self._publish(Notice(
                    f"stage {stage} changed what it reads ({shown}) while it ran, {runs} runs in a "
                    "row: not run again for that, or it would run forever. Declare those files as "
                    "its outs (not deps), or stop it writing them; a change made while it does not "
                    "run runs it again"
                ))
        return stopped

    def _restart_running(self, paths: list[str]) -> set[str]:
        """--restart: cancel the running stages that read one of `paths`; they run again
        in this wave. Returns the stages the wave takes care of: those restarted and
        those that have not started (they read the new content when they do)."""
        wave = self.wave
        if self.live is None or not self.live.restart or self.reload.active:
            return set()
        if wave is None or wave.halted or wave.planner is not None:
            return set()
        readers = self._affected(paths, outs=False)
        for name, pool in self.pools.items():
            for attempt in sorted(pool.attempts):
                stage = wave.running.get(attempt)
                if stage in readers and stage not in wave.restarting:
                    wave.restarting.add(stage)
                    why = f"its inputs changed while it ran ({', '.join(paths[:3])}): running it again"
                    self._send(name, CancelStage(attempt, why))
        return {s for s in wave.stages if s not in wave.done}

    def _in_scope(self, stages: set[str]) -> set[str]:
        if self.live is None or not self.live.scope or self.graph is None:
            return stages
        known = [s for s in self.live.scope if s in self.graph.upstream]
        return stages & self.graph.with_upstream(known)

    @staticmethod
    def _touches(declared: str, path: str) -> bool:
        return declared.rstrip("/") == path or inside(path, declared) or inside(declared, path)

    def _affected(self, paths: list[str], outs: bool = True) -> set[str]:
        """Stages reading a changed path (or a folder holding it) and, with `outs`, stages
        writing one (a hand edit of an output makes its producer stale)."""
        if self.manifest is None:
            return set()
        return {
            spec.name
            for spec in self.manifest.stages
            for path in paths
            if any(self._touches(x, path) for x in (*spec.deps, *(spec.outs if outs else ())))
        }

    def _reload(self, restart: bool, paths: list[str]) -> None:
        wave = self.wave
        if restart and wave is not None and not wave.halted:
            # Nothing more starts on the old code. What no worker has begun, its pool
            # cancels (they come back cancelled: carried to the wave after the reload);
            # what runs, runs on until the new manifest says whether its code changed.
            wave.halted = True
            wave.code_halt = True
            for stage in wave.unstarted():
                self.reload.carry.add(stage)
                self._finish(stage, Status.CANCELLED, ReasonCode.CANCELLED, "not started: code changed", 0.0, None)
            wave.ready.clear()
            self._maybe_finish_wave()
        if not self.reload.begin(restart, paths):
            return  # one is out: this one follows it
        self.loads += 1
        if self.manifest_source == "":
            self.own_asked = self.loads
            self._out.append(LoadOwnManifest(self.loads))
        for name, pool in self.pools.items():
            pool.current, pool.manifest = False, None  # until its new manifest is checked
            pool.asked = self.loads
            self._send(name, LoadManifest(restart, self.loads))

    def _cancel_outdated(self, wanted: set[str] | None) -> None:
        """The wave a code change stopped: its running stages that the new code runs
        again (`wanted`; None: all, the new code did not load) are cancelled, and run
        after the reload. The others, their code as it was, run on: the next wave takes
        them over (`_adoptable`)."""
        wave = self.wave
        if wave is None or not wave.code_halt:
            return
        for name, pool in self.pools.items():
            for attempt in sorted(pool.attempts):
                stage = wave.running.get(attempt)
                if stage is None or stage in wave.restarting or (wanted is not None and stage not in wanted):
                    continue
                wave.restarting.add(stage)  # (one that ends well still runs again: `_restarted`)
                self.reload.carry.add(stage)
                self._send(name, CancelStage(attempt, "cancelled: Python code changed"))

    def _adoptable(self, wave: Wave, wanted: set[str]) -> dict[str, str] | None:
        """The running attempts of `wave`, stopped by a code change, that the next wave
        (of `wanted`) takes over; None if it must wait for them: one not yet reported
        begun or being cancelled, or one of them or its upstream is to run again."""
        if not wave.code_halt or self.graph is None:
            return None
        for attempt, stage in wave.running.items():
            if attempt not in wave.started or stage in wave.restarting or stage in wave.behind:
                return None
            if stage not in self.graph.upstream:  # removed from the pipeline (or renamed) as it ran
                return None
        if self.graph.with_upstream(sorted(wave.running.values())) & wanted:
            return None
        return dict(wave.running)

    def _reload_answered(self) -> None:
        if not self.reload.active:
            return
        follow_up = self.reload.answered()
        for name in self.pools.names():  # their manifests may have come first
            self._check_pool(name)
        if follow_up is not None:
            self._reload(*follow_up)

    # --- shutdown ------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.stop.asked

    @property
    def stopped(self) -> bool:
        return self.stop.done

    @property
    def shutdown_clients(self) -> list[bytes]:
        return self.stop.waiting

    def _shutdown_requested(self, event: ShutdownRequested) -> None:
        """Nothing new starts; running stages get the grace period, then are cancelled;
        the pools stop once nothing runs (see `_maybe_stopped`)."""
        first = self.stop.ask(event.client, event.grace_s, event.now, event.reason)
        self.changes.clear()
        self.pending = None
        wave = self.wave
        if first and wave is not None:
            wave.halted = True
            for stage in wave.unstarted():
                self._finish(stage, Status.CANCELLED, ReasonCode.CANCELLED, "not started: Pivot is stopping", 0.0, None)
            wave.ready.clear()
            self._cancel_unstarted("not started: Pivot is stopping")
            self._maybe_finish_wave()
        self._shutdown_deadlines(event.now)

    def _shutdown_deadlines(self, now: float) -> None:
        if self.stop.cancel_due(now):
            for name, pool in self.pools.items():
                for attempt in sorted(pool.attempts):
                    self._send(name, CancelStage(attempt, "cancelled: Pivot is stopping"))
        if self.stop.give_up_due(now) and self.wave is not None:
            wave = self.wave
            for _, stage in sorted(wave.running.items()):
                self._finish(stage, Status.CANCELLED, ReasonCode.CANCELLED, "still running when Pivot stopped", 0.0, None)
            wave.running.clear()
            self._maybe_finish_wave()

    def _maybe_stopped(self) -> None:
        if not self.stop.waiting or self.wave is not None:
            return
        for name in self.pools.names():
            self._send(name, PoolShutdown())
        if not self.stop.done:
            self.stop.done = True
            self._publish(EngineStopped(self.stop.reason))
        for client in self.stop.answer():
            self._out.append(Reply(client, ShutdownReply(self.view.seq)))

    # --- snapshot ------------------------------------------------------------------

    def _set_view(
        self, stage: str, status: str, code: str, reason: str, duration: float, error: str | None = None
    ) -> None:
        wave = self.wave.number if self.wave else self.wave_count
        self.view.set(stage, status, code, reason, duration, wave, error)

    @property
    def seq(self) -> int:
        return self.view.seq

    @property
    def log_seq(self) -> int:
        return self.view.log_seq

    def snapshot(self) -> Snapshot:
        return self.view.snapshot(
            wave=self.wave.number if self.wave else self.wave_count,
            wave_running=self.wave is not None,
            order=list(self.graph.order) if self.graph else sorted(self.view.stages),
            pipeline_error=self.pipeline_error,
            paused=self.paused,
        )

    def _publish(self, msg: Message, parent: str | None = None) -> None:
        self._out.append(self.view.publish(msg, parent))

    # --- invariants (tests call this after every step) -----------------------------

    def validate(self) -> None:
        self.pools.validate()
        wave = self.wave
        if wave is None:
            return
        wave.validate()
        running = set(wave.running.values())
        orphans = set(wave.running) - self.pools.in_flight() - self.pools.held()
        assert not orphans, f"running attempts of no pool, not held back: {sorted(orphans)}"
        foreign = self.pools.foreign_stages()
        assert not running & foreign, f"stages running twice (one from before a restart): {running & foreign}"
