"""The broker's state machine: feed typed events, assert the exact commands."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import pytest

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
    OutputReceived,
    PauseRequested,
    PoolGone,
    PoolHeard,
    PoolJoined,
    PoolManifest,
    Publish,
    PublishLog,
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
from broker.state import BrokerState, LiveOptions
from pivot.pipeline.graph import build_graph
from pivot.pipeline.manifest import Manifest, StageSpec, spec_difference
from pivot.protocol.messages import (
    CancelStage,
    Heartbeat,
    LoadManifest,
    LogLine,
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
    WaveFinished,
    WaveStarted,
)

CLIENT = b"client-1"


def spec(name: str, deps: Iterable[str] = (), outs: Iterable[str] = (), tags: Iterable[str] = ()) -> StageSpec:
    return StageSpec(name, "pipeline", f"pipeline.{name}", tuple(deps), tuple(outs), (), {}, "fp", tags=tuple(tags))


def diamond() -> Manifest:
    """a -> (b, c) -> d, plus an unrelated stage e."""
    return Manifest(
        (
            spec("a", outs=["a.txt"]),
            spec("b", deps=["a.txt"], outs=["b.txt"]),
            spec("c", deps=["a.txt"], outs=["c.txt"]),
            spec("d", deps=["b.txt", "c.txt"], outs=["d.txt"]),
            spec("e", outs=["e.txt"]),
        )
    )


class Harness:
    """Feeds the state machine; answers each wave plan the way `plan` says.

    `plan` lists the stages a pool would find up to date (default: none); None leaves
    plan requests unanswered, for tests that answer them themselves.
    """

    def __init__(
        self, manifest: Manifest | None = None, slots: int = 1, plan: list[str] | None = None,
        live: LiveOptions | None = None,
    ) -> None:
        self.state = BrokerState(heartbeat_s=1.0, liveness=3, live=live)
        self.now = 0.0
        self.published: list[Message] = []
        self.plan: list[str] | None = [] if plan is None else plan
        self.manifest = manifest
        if manifest is not None:
            self.feed(PoolJoined("p1", slots, self.now))
            self.feed(ManifestArrived("p1", manifest, build_graph(manifest)))

    def feed(self, event: Event) -> list[Command]:
        commands = self.state.handle(event)
        self.state.validate()
        for c in commands:
            if isinstance(c, Publish):
                self.published.append(c.msg)
        for c in list(commands):
            if isinstance(c, SendWork) and isinstance(c.msg, PlanWave) and self.plan is not None:
                commands += self.feed(WavePlanned(c.pool, c.msg.wave, tuple(self.plan)))
        return commands

    def join(self, pool: str, slots: int, now: float, **kw: Any) -> list[Command]:
        """A pool joins and its loader's manifest (the engine's) arrives: it may run stages."""
        commands = self.feed(PoolJoined(pool, slots, now, **kw))
        manifest = self.manifest or self.state.manifest
        assert manifest is not None
        return commands + self.feed(PoolManifest(pool, manifest))

    def run(self, *stages: str, force: bool = False, keep_going: bool = False) -> list[Command]:
        return self.feed(RunRequested(CLIENT, stages, force, keep_going))

    def result(self, attempt: str, status: str = "ran", pool: str = "p1") -> list[Command]:
        return self.feed(ResultReceived(pool, attempt, status, "x", "because", 0.1, None, ()))


def dispatched(commands: list[Command]) -> list[tuple[str, str, str]]:
    return [
        (c.pool, c.msg.stage, c.msg.attempt)
        for c in commands
        if isinstance(c, SendWork) and isinstance(c.msg, RunStage)
    ]


def published(commands: list[Command], kind: type[Message]) -> list[Message]:
    return [c.msg for c in commands if isinstance(c, Publish) and isinstance(c.msg, kind)]


def finished(h: Harness) -> dict[str, str]:
    return {m.stage: m.status for m in h.published if isinstance(m, StageFinished)}


def test_pool_hello_gets_welcome() -> None:
    h = Harness()
    commands = h.feed(PoolJoined("p1", 2, 0.0))
    assert commands == [SendWork("p1", PoolWelcome("p1", 1.0, 3))]


def test_manifest_publishes_pipeline_loaded_with_added_stages() -> None:
    h = Harness()
    m = diamond()
    commands = h.feed(ManifestArrived("p1", m, build_graph(m)))
    assert published(commands, PipelineLoaded) == [PipelineLoaded(["a", "b", "c", "d", "e"], [], [])]


def test_run_waits_for_manifest_and_pool_then_dispatches_roots_in_order() -> None:
    h = Harness()
    assert h.run() == []  # answered once stage names can be checked against a manifest
    m = diamond()
    commands = h.feed(ManifestArrived("p1", m, build_graph(m)))
    assert Reply(CLIENT, RunReply(True, "queued")) in commands
    assert dispatched(commands) == []  # no pool yet
    commands = h.join("p1", 2, 0.0)
    assert published(commands, WaveStarted) == [WaveStarted(1, ["a", "b", "c", "d", "e"])]
    assert [s for _, s, _ in dispatched(commands)] == ["a", "e"]


def test_dependency_counting_dispatches_a_stage_when_its_last_upstream_finishes() -> None:
    h = Harness(diamond(), slots=4)
    [(_, _, a), _e] = dispatched(h.run())
    after_a = dispatched(h.result(a))
    assert sorted(s for _, s, _ in after_a) == ["b", "c"]
    (_, _, b), (_, _, c) = sorted(after_a, key=lambda t: t[1])
    assert dispatched(h.result(b)) == []  # d still waits for c
    assert [s for _, s, _ in dispatched(h.result(c, status="skipped"))] == ["d"]


def test_slots_limit_dispatch() -> None:
    h = Harness(diamond(), slots=1)
    first = dispatched(h.run())
    assert [s for _, s, _ in first] == ["a"]
    second = dispatched(h.result(first[0][2]))
    assert [s for _, s, _ in second] == ["b"]  # one slot: c waits


def test_result_is_acked_and_a_duplicate_changes_nothing() -> None:
    h = Harness(diamond(), slots=4)
    [(_, _, a), _] = dispatched(h.run())
    commands = h.result(a)
    assert SendWork("p1", ResultAck(a)) in commands
    again = h.result(a)
    assert again == [SendWork("p1", ResultAck(a))]


def test_stage_started_is_published_when_the_pool_runs_it() -> None:
    h = Harness(diamond())
    [(_, _, a)] = dispatched(h.run())
    commands = h.feed(StageRunningReported("p1", a, "never_ran", "never ran"))
    assert published(commands, StageStarted) == [StageStarted(1, "a", "never_ran", "never ran")]


def test_logs_are_published_before_the_stage_outcome_with_their_own_counter() -> None:
    h = Harness(diamond())
    [(_, _, a)] = dispatched(h.run())
    commands = h.feed(
        ResultReceived("p1", a, "ran", "never_ran", "never ran", 0.2, None, (("stdout", "hi"), ("stderr", "warn")))
    )
    logs = [c for c in commands if isinstance(c, PublishLog)]
    assert logs == [PublishLog(LogLine("a", "stdout", "hi"), 1), PublishLog(LogLine("a", "stderr", "warn"), 2)]
    first_finish = next(i for i, c in enumerate(commands) if isinstance(c, Publish) and isinstance(c.msg, StageFinished))
    assert commands.index(logs[-1]) < first_finish


def test_a_running_stages_output_is_published_as_it_comes_from_its_own_pool_only() -> None:
    h = Harness(diamond())
    h.join("p2", 1, 0.0)
    [(pool, a)] = [(p, at) for p, stage, at in dispatched(h.run()) if stage == "a"]
    other = {"p1": "p2", "p2": "p1"}[pool]
    h.feed(StageRunningReported(pool, a, "never_ran", "never ran"))
    lines = (("stdout", "epoch 1", False), ("stderr", "50%", True))
    commands = h.feed(OutputReceived(pool, a, lines))
    assert [c for c in commands if isinstance(c, PublishLog)] == [
        PublishLog(LogLine("a", "stdout", "epoch 1"), 1), PublishLog(LogLine("a", "stderr", "50%", True), 2)]
    assert h.feed(OutputReceived(other, a, lines)) == []  # not given to that pool
    assert h.feed(OutputReceived(pool, "w1-99", lines)) == []  # no such attempt
    # An attach's snapshot: the run's tail, its line in flight last.
    assert h.state.snapshot().logs == {"a": [("stdout", "epoch 1"), ("stderr", "50%")]}
    h.feed(OutputReceived(pool, a, (("stderr", "100%", False),)))
    assert h.state.snapshot().logs == {"a": [("stdout", "epoch 1"), ("stderr", "100%")]}
    h.result(a, pool=pool)
    assert h.state.snapshot().logs == {"a": [("stdout", "epoch 1"), ("stderr", "100%")]}


def test_fail_fast_blocks_downstream_cancels_the_rest_and_lets_running_finish() -> None:
    h = Harness(diamond(), slots=2)
    [(_, _, a), (_, _, e)] = dispatched(h.run())
    commands = h.result(a, status="failed")
    assert dispatched(commands) == []
    assert finished(h) == {"a": "failed", "b": "blocked", "c": "blocked", "d": "blocked"}
    blocked = [m for m in published(commands, StageFinished) if m.status == "blocked"]
    assert all(m.details == {"upstream": "a"} and "'a'" in m.reason for m in blocked), blocked
    assert published(commands, WaveFinished) == []  # e still runs
    commands = h.result(e)
    [wave] = published(commands, WaveFinished)
    assert wave == WaveFinished(1, ["e"], [], [], ["a"], ["b", "c", "d"], [], [])


def test_fail_fast_cancels_stages_not_downstream_of_the_failure() -> None:
    h = Harness(diamond(), slots=1)
    [(_, _, a)] = dispatched(h.run())
    h.result(a, status="failed")
    assert finished(h)["e"] == "cancelled"
    [wave] = [m for m in h.published if isinstance(m, WaveFinished)]
    assert wave.cancelled == ["e"] and wave.blocked == ["b", "c", "d"]


def test_a_missing_input_fails_its_stage_and_what_needs_it_and_halts_nothing() -> None:
    h = Harness(diamond(), slots=1)
    [(_, _, a)] = dispatched(h.run())
    commands = h.feed(ResultReceived("p1", a, "failed", "dep_missing", "dependency missing: in.txt", 0.0, None, ()))
    assert [s for _, s, _ in dispatched(commands)] == ["e"]
    assert finished(h) == {"a": "failed", "b": "blocked", "c": "blocked", "d": "blocked"}


def test_keep_going_runs_unrelated_branches() -> None:
    h = Harness(diamond(), slots=1)
    [(_, _, a)] = dispatched(h.run(keep_going=True))
    commands = h.result(a, status="failed")
    assert [s for _, s, _ in dispatched(commands)] == ["e"]
    assert finished(h) == {"a": "failed", "b": "blocked", "c": "blocked", "d": "blocked"}


def test_named_stages_run_with_their_upstream_only() -> None:
    h = Harness(diamond(), slots=4)
    commands = h.run("b")
    assert published(commands, WaveStarted) == [WaveStarted(1, ["a", "b"])]


def test_unknown_stage_is_rejected_with_the_known_names() -> None:
    h = Harness(diamond())
    [reply] = h.run("nope")
    assert isinstance(reply, Reply) and isinstance(reply.msg, RunReply)
    assert not reply.msg.accepted
    assert "nope" in reply.msg.message and "a, b, c, d, e" in reply.msg.message


def test_requests_during_a_wave_are_merged_into_the_next_wave() -> None:
    h = Harness(diamond(), slots=4)
    [(_, _, a)] = dispatched(h.run("a"))
    assert published(h.run("e"), WaveStarted) == []
    assert published(h.run("b"), WaveStarted) == []
    commands = h.result(a)
    [started] = published(commands, WaveStarted)
    assert started == WaveStarted(2, ["a", "b", "e"])


def test_heartbeats_are_sent_and_a_silent_pool_is_lost_with_its_stages_requeued() -> None:
    h = Harness(diamond(), slots=2)
    [(_, _, a), (_, _, e)] = dispatched(h.run())
    assert SendWork("p1", Heartbeat("p1")) in h.feed(Tick(1.0))
    h.feed(PoolHeard("p1", 2.0))
    h.feed(Tick(3.0))  # the service ticks every 0.25 s; a longer gap means it was stopped
    assert published(h.feed(Tick(4.9)), PoolLost) == []
    commands = h.feed(Tick(5.1))
    [lost] = published(commands, PoolLost)
    assert lost.pool == "p1" and lost.stages == ["a", "e"]
    assert "no heartbeat" in lost.reason
    # Not proven dead, it may still run them until it notices the silence itself (3 s
    # after the broker stopped heartbeating it) and stops them: they run elsewhere only
    # after that and a margin (fencing), never twice at once.
    assert dispatched(h.join("p2", 2, 5.2)) == []
    assert dispatched(h.feed(Tick(10.0))) == []
    again = dispatched(h.feed(Tick(10.2)))
    assert [(p, s) for p, s, _ in again] == [("p2", "a"), ("p2", "e")]
    assert {att for _, _, att in again}.isdisjoint({a, e})
    # A late result from the dead pool's attempt is acked and ignored.
    assert h.result(a, pool="p1") == [SendWork("p1", ResultAck(a))]


def test_a_lost_pool_whose_death_is_confirmed_has_its_stages_run_elsewhere_at_once() -> None:
    h = Harness(diamond(), slots=2)
    dispatched(h.run())
    h.join("p2", 2, 0.5)
    h.feed(Tick(1.0))
    h.feed(PoolHeard("p2", 3.5))
    [lost] = published(h.feed(Tick(3.6)), PoolLost)  # p1 silent since 0.0
    assert lost.pool == "p1" and dispatched(h.feed(Tick(3.8))) == []
    # Its supervisor killed its group and saw it exit: no attempt of it can be alive.
    again = dispatched(h.feed(PoolGone("p1", "pool process was killed by SIGKILL")))
    assert [(p, s) for p, s, _ in again] == [("p2", "a"), ("p2", "e")]


def test_a_pool_back_after_a_broker_silence_keeps_what_it_still_runs() -> None:
    """A pool that said hello again (it had lost the broker for a moment) reports the
    attempts it still runs: they stay its own; the others run again."""
    h = Harness(diamond(), slots=2)
    [(_, _, a), (_, _, _e)] = dispatched(h.run())
    commands = h.feed(PoolJoined("p1", 2, 0.5, running=((a, "a"),)))
    [lost] = published(commands, PoolLost)
    assert lost.stages == ["e"]  # a still runs there
    assert [(p, s) for p, s, _ in dispatched(commands)] == [("p1", "e")]
    done = h.result(a)
    assert [s for _, s, _ in dispatched(done)] == ["b"]  # e still holds the other slot


def test_attempts_from_before_a_broker_restart_hold_their_stages_until_they_end() -> None:
    h = Harness()
    h.feed(PoolJoined("p1", 2, 0.0, running=(("old-w3-9", "a"),)))
    m = diamond()
    commands = h.feed(ManifestArrived("p1", m, build_graph(m)))
    commands = h.run()
    # One slot is held by the old attempt; a waits for it, e may run.
    assert [s for _, s, _ in dispatched(commands)] == ["e"]
    commands = h.feed(ResultReceived("p1", "old-w3-9", "ran", "ran", "x", 1.0, None, ()))
    assert SendWork("p1", ResultAck("old-w3-9")) in commands
    assert [s for _, s, _ in dispatched(commands)] == ["a"]


def test_a_result_from_an_earlier_incarnation_of_a_pool_is_rejected() -> None:
    h = Harness()
    h.feed(PoolJoined("p1", 1, 0.0, incarnation="new"))
    m = diamond()
    h.feed(ManifestArrived("p1", m, build_graph(m)))
    [(_, _, a)] = dispatched(h.run())
    commands = h.feed(ResultReceived("p1", a, "ran", "ran", "x", 1.0, None, (), {}, "old"))
    assert SendWork("p1", ResultAck(a)) in commands  # it stops resending
    assert [c for c in commands if isinstance(c, Note)], commands  # and it is logged
    assert dispatched(commands) == [] and published(commands, StageFinished) == []
    assert [s for _, s, _ in dispatched(h.feed(ResultReceived("p1", a, "ran", "ran", "x", 1.0, None, (), {}, "new")))] == ["b"]


def test_pool_gone_reports_the_exit_reason() -> None:
    h = Harness(diamond())
    [(_, stage, _)] = dispatched(h.run())
    assert stage == "a"
    [lost] = published(h.feed(PoolGone("p1", "pool process killed by SIGKILL")), PoolLost)
    assert lost == PoolLost("p1", "pool process killed by SIGKILL", ["a"])


def test_an_accepted_manifest_is_confirmed_to_its_pool_before_any_stage_is_sent() -> None:
    h = Harness()
    h.feed(PoolJoined("p1", 2, 0.0))
    h.run()
    m = diamond()
    commands = h.feed(ManifestArrived("p1", m, build_graph(m)))
    sends = [c for c in commands if isinstance(c, SendWork)]
    assert sends[0] == SendWork("p1", ManifestAccepted())  # the pool replaces workers now
    assert [s for _, s, _ in dispatched(commands)] == ["a", "e"]
    # A rejected one (the service found a cycle) confirms nothing: the workers stay.
    commands = h.feed(ManifestRejected("a cycle: a -> b -> a", ""))
    assert not [c for c in commands if isinstance(c, SendWork) and isinstance(c.msg, ManifestAccepted)]


def test_manifest_rejected_publishes_the_error_and_snapshot_keeps_it() -> None:
    h = Harness()
    commands = h.feed(ManifestRejected("pipeline.py failed to import", "Traceback ..."))
    assert published(commands, PipelineInvalid) == [PipelineInvalid("pipeline.py failed to import", "Traceback ...")]
    [reply] = h.feed(SnapshotRequested(CLIENT))
    assert isinstance(reply, Reply) and isinstance(reply.msg, Snapshot)
    assert reply.msg.pipeline_error == PipelineInvalid("pipeline.py failed to import", "Traceback ...")


def test_a_pool_takes_its_queue_beyond_its_slots_and_fail_fast_cancels_what_it_has_not_started() -> None:
    """Queued stages are pending ("queued on pool p2"), not running, until their pool says
    it runs them; a failure then cancels the attempts their pool has not started."""
    h = Harness(diamond(), slots=1)
    h.feed(PoolGone("p1", "gone", leaving=True))  # the harness's own pool: only p2 below
    h.join("p2", 1, 0.0, queue=1)
    [(_, first, a1), (_, second, a2)] = dispatched(h.run())
    assert (first, second) == ("a", "e")  # its slot and its queue; nothing more
    h.feed(StageRunningReported("p2", a1, "never_ran", "never ran"))
    [reply] = [c for c in h.feed(SnapshotRequested(CLIENT)) if isinstance(c, Reply)]
    assert isinstance(reply.msg, Snapshot)
    assert reply.msg.stages["a"].status == "running"
    assert (reply.msg.stages["e"].status, reply.msg.stages["e"].reason) == ("pending", "queued on pool p2")
    commands = h.result(a1, status="failed", pool="p2")
    cancels = [(c.pool, c.msg.attempt, c.msg.reason) for c in commands
               if isinstance(c, SendWork) and isinstance(c.msg, CancelStage)]
    assert cancels == [("p2", a2, "stopped before its code ran: a failed")]
    assert dispatched(commands) == []


def test_a_free_slot_anywhere_comes_before_a_pools_queue() -> None:
    h = Harness(diamond(), slots=1)
    h.feed(PoolGone("p1", "gone", leaving=True))
    h.join("p2", 1, 0.0, queue=1)
    h.join("p3", 1, 0.0, queue=1)
    commands = h.run()
    got = [(c.pool, c.msg.stage) for c in commands if isinstance(c, SendWork) and isinstance(c.msg, RunStage) and not c.msg.after]
    assert got == [("p2", "a"), ("p3", "e")]
    # Then the queue room left, to stages whose upstream attempts are in that pool.
    [(_, _, a1)] = [d for d in dispatched(commands) if d[1] == "a"]
    assert [(c.pool, c.msg.stage, c.msg.after) for c in commands
            if isinstance(c, SendWork) and isinstance(c.msg, RunStage) and c.msg.after] == [("p2", "b", [a1])]


def test_a_pools_whole_queue_is_used_only_while_it_is_its_brokers_one_pool() -> None:
    """Alone, a pool takes its slots and its whole queue (a result's round trip to the
    broker no longer stalls its workers); beside another pool, no more of its queue than
    it has slots, so that a stage does not wait in one pool's queue while another frees."""
    independent = Manifest(tuple(spec(f"s{i}", outs=[f"s{i}.txt"]) for i in range(8)))
    alone = Harness(independent, slots=1)
    alone.feed(PoolGone("p1", "gone", leaving=True))
    alone.join("p2", 1, 0.0, queue=3)
    assert [pool for pool, _, _ in dispatched(alone.run())] == ["p2"] * 4

    shared = Harness(independent, slots=1)
    shared.feed(PoolGone("p1", "gone", leaving=True))
    shared.join("p2", 1, 0.0, queue=3)
    shared.join("p3", 1, 0.0, queue=3)
    commands = shared.run()
    assert sorted(pool for pool, _, _ in dispatched(commands)) == ["p2", "p2", "p3", "p3"]
    # p3 leaves: p2, alone again, takes its whole queue at once (its 2 attempts -> 4).
    assert [pool for pool, _, _ in dispatched(shared.feed(PoolGone("p3", "gone", leaving=True)))] == ["p2"] * 2

    # A pool that joined and is still loading counts: a wave started before it is in
    # does not fill the first pool's whole queue.
    loading = Harness(independent, slots=1)
    loading.feed(PoolGone("p1", "gone", leaving=True))
    loading.join("p2", 1, 0.0, queue=3)
    loading.feed(PoolJoined("p3", 1, 0.0, queue=3))  # no manifest yet
    assert [pool for pool, _, _ in dispatched(loading.run())] == ["p2"] * 2


# --- a stage given behind its upstream (protocol.md, "Behind its upstream") ------------


def chain(n: int) -> Manifest:
    """s0 -> s1 -> ... -> s{n-1}, plus an unrelated stage e."""
    stages = [spec(f"s{i}", deps=[f"s{i - 1}.txt"] if i else [], outs=[f"s{i}.txt"]) for i in range(n)]
    return Manifest((*stages, spec("e", outs=["e.txt"])))


def given(commands: list[Command], attempts: dict[str, str]) -> list[tuple[str, list[str]]]:
    """(stage, after: as stage names) of each run_stage sent to p2; `attempts` learns
    each stage's attempt."""
    names = {a: stage for stage, a in attempts.items()}
    out = []
    for c in commands:
        if isinstance(c, SendWork) and isinstance(c.msg, RunStage):
            assert c.pool == "p2"
            attempts[c.msg.stage] = c.msg.attempt
            names[c.msg.attempt] = c.msg.stage
            out.append((c.msg.stage, [names[a] for a in c.msg.after]))
    return out


def behind_harness(slots: int = 1, queue: int = 1) -> Harness:
    h = Harness(chain(4), slots=slots)
    h.feed(PoolGone("p1", "gone", leaving=True))  # a pool without a queue: never behind
    h.join("p2", slots, 0.0, queue=queue)
    return h


def report(h: Harness, attempt: str, status: str) -> list[Command]:
    return h.feed(ResultReceived("p2", attempt, status, status, "because", 0.0, None, ()))


def test_a_chains_next_stage_is_given_behind_its_upstream_and_runs_when_that_ends_well() -> None:
    h, at = behind_harness(), {}
    assert given(h.run(), at) == [("s0", []), ("e", [])]  # its slot and its queue: no room behind
    assert given(report(h, at["e"], "ran"), at) == [("s1", ["s0"])]
    [reply] = [c for c in h.feed(SnapshotRequested(CLIENT)) if isinstance(c, Reply)]
    assert isinstance(reply.msg, Snapshot)
    assert (reply.msg.stages["s1"].status, reply.msg.stages["s1"].reason) == ("pending", "")  # as it waits
    # s0 ends well: s1 (its pool's already) is not sent again; s2 goes behind it.
    assert given(report(h, at["s0"], "ran"), at) == [("s2", ["s1"])]
    h.feed(StageRunningReported("p2", at["s1"], "never_ran", "never ran"))
    assert given(report(h, at["s1"], "ran"), at) == [("s3", ["s2"])]
    assert given(report(h, at["s2"], "skipped"), at) == []
    commands = report(h, at["s3"], "ran")
    assert finished(h) == {"s0": "ran", "s1": "ran", "s2": "skipped", "s3": "ran", "e": "ran"}
    assert published(commands, WaveFinished)


def test_a_stage_behind_an_upstream_that_fails_is_blocked_and_the_attempt_its_pool_gives_back_ignored() -> None:
    h, at = behind_harness(slots=2, queue=2), {}
    assert given(h.run(keep_going=True), at) == [("s0", []), ("e", []), ("s1", ["s0"]), ("s2", ["s1"])]
    report(h, at["e"], "ran")
    commands = report(h, at["s0"], "failed")
    assert given(commands, at) == []
    assert finished(h) == {"e": "ran", "s0": "failed", "s1": "blocked", "s2": "blocked", "s3": "blocked"}
    assert published(commands, WaveFinished)
    before = len(h.published)
    for stage in ("s1", "s2"):  # its pool's word on them: acknowledged, nothing more
        assert report(h, at[stage], "lost") == [SendWork("p2", ResultAck(at[stage]))]
    assert len(h.published) == before


def test_a_stage_behind_an_upstream_lost_waits_for_it_to_run_again() -> None:
    h, at = behind_harness(slots=1, queue=2), {}
    assert given(h.run(), at) == [("s0", []), ("e", []), ("s1", ["s0"])]
    first = at["s0"]
    # s0's worker died under another stage: s0 runs again, uncharged; s1 waits for it
    # (its pool gives it back: that frees the room it held).
    assert given(report(h, first, "lost"), at) == [("s0", [])]
    assert at["s0"] != first
    wave = h.state.wave
    assert wave is not None and "s1" not in wave.ready and "s1" not in wave.behind
    assert given(report(h, at["s1"], "lost"), at) == [("s1", ["s0"])]
    assert finished(h) == {}


def test_a_stage_behind_an_upstream_cancelled_after_a_fail_fast_halt_is_cancelled_and_the_wave_ends() -> None:
    h, at = behind_harness(slots=2, queue=2), {}
    assert given(h.run(), at) == [("s0", []), ("e", []), ("s1", ["s0"]), ("s2", ["s1"])]
    commands = report(h, at["e"], "failed")  # halts the wave: what has not begun is cancelled
    cancelled = {c.msg.attempt for c in commands if isinstance(c, SendWork) and isinstance(c.msg, CancelStage)}
    assert cancelled == {at["s0"], at["s1"], at["s2"]}
    commands = report(h, at["s0"], "cancelled")  # the pool gives s1 and s2 back: not waited for
    assert finished(h) == {"e": "failed", "s0": "cancelled", "s1": "cancelled", "s2": "cancelled", "s3": "cancelled"}
    assert published(commands, WaveFinished)


def test_a_stage_behind_an_upstream_on_a_pool_that_is_lost_waits_for_it_again() -> None:
    h, at = behind_harness(slots=1, queue=2), {}
    assert given(h.run(), at) == [("s0", []), ("e", []), ("s1", ["s0"])]
    [lost] = published(h.feed(PoolGone("p2", "killed")), PoolLost)
    assert lost.stages == ["e", "s0"]  # s1 waited for s0: not lost, it waits on
    commands = h.join("p3", 1, 1.0)  # no queue: ready stages only
    assert [(c.pool, c.msg.stage, c.msg.after) for c in commands
            if isinstance(c, SendWork) and isinstance(c.msg, RunStage)] == [("p3", "s0", [])]
    wave = h.state.wave
    assert wave is not None and "s1" not in wave.ready


def test_snapshot_has_every_stage_state_and_the_latest_seq() -> None:
    h = Harness(diamond(), slots=1)
    [(_, _, a)] = dispatched(h.run())
    h.result(a)
    [reply] = [c for c in h.feed(SnapshotRequested(CLIENT)) if isinstance(c, Reply)]
    snap = reply.msg
    assert isinstance(snap, Snapshot)
    assert snap.seq == h.state.seq == len(h.published)
    assert snap.wave_running and snap.wave == 1
    assert snap.stages["a"].status == "ran"
    assert snap.stages["b"].status == "running"
    assert snap.stages["c"].status == "pending"
    assert snap.order == ["a", "b", "c", "d", "e"]


def test_published_sequence_numbers_are_contiguous() -> None:
    h = Harness()
    seqs: list[int] = []
    m = diamond()
    for event in (PoolJoined("p1", 4, 0.0), ManifestArrived("p1", m, build_graph(m))):
        seqs += [c.seq for c in h.feed(event) if isinstance(c, Publish)]
    seqs += [c.seq for c in h.run() if isinstance(c, Publish)]
    assert seqs == list(range(1, len(seqs) + 1))


def test_shutdown_tells_every_pool_and_refuses_new_runs() -> None:
    h = Harness(diamond())
    commands = h.feed(ShutdownRequested(CLIENT))
    assert SendWork("p1", PoolShutdown()) in commands
    assert Reply(CLIENT, ShutdownReply(h.state.seq)) in commands
    [reply] = h.run()
    assert isinstance(reply, Reply) and reply.msg == RunReply(False, "the engine is shutting down")


def test_a_failure_blocks_downstream_in_keep_going() -> None:
    h = Harness(diamond(), slots=4)
    [(_, _, a), _] = dispatched(h.run(keep_going=True))
    h.result(a, status="failed")
    assert finished(h)["d"] == "blocked"


def test_a_stage_lost_with_another_stages_worker_runs_again_uncharged() -> None:
    h = Harness(diamond(), slots=4)
    [_, (_, _, e)] = dispatched(h.run())
    commands = h.feed(ResultReceived("p1", e, "lost", "pool_lost", "another stage's worker died", 0.0, None, ()))
    assert finished(h) == {}  # not an outcome: e goes back to the queue
    [(_, stage, _)] = dispatched(commands)
    assert stage == "e"


def test_a_stage_whose_own_worker_dies_is_charged_and_fails_on_the_third_death() -> None:
    h = Harness(diamond(), slots=4)
    [(_, _, a), _] = dispatched(h.run())
    for tries in (1, 2):
        commands = h.feed(ResultReceived("p1", a, "failed", "worker_died", "its worker died", 0.0, None, ()))
        assert "a" not in finished(h)
        [(_, stage, a)] = dispatched(commands)
        assert stage == "a" and h.state.wave is not None and h.state.wave.charges == {"a": tries}
    h.feed(ResultReceived("p1", a, "failed", "worker_died", "its worker died", 0.0, None, ()))
    assert finished(h)["a"] == "failed" and finished(h)["d"] == "blocked"


def test_a_request_before_the_manifest_naming_an_unknown_stage_is_rejected_on_load() -> None:
    h = Harness()
    h.feed(PoolJoined("p1", 1, 0.0))
    assert h.run("nope") == []
    m = diamond()
    commands = h.feed(ManifestArrived("p1", m, build_graph(m)))
    [reply] = [c for c in commands if isinstance(c, Reply)]
    assert isinstance(reply.msg, RunReply) and not reply.msg.accepted
    assert "nope" in reply.msg.message
    assert published(commands, WaveStarted) == []


# --- wave plans: up-to-date stages skipped in one batch ------------------------------------


def plan_requests(commands: list[Command]) -> list[tuple[str, PlanWave]]:
    return [
        (c.pool, c.msg) for c in commands if isinstance(c, SendWork) and isinstance(c.msg, PlanWave)
    ]


def test_a_wave_asks_one_pool_for_a_plan_and_dispatches_nothing_until_it_answers() -> None:
    h = Harness(diamond(), slots=4)
    h.plan = None
    commands = h.run()
    [(pool, plan)] = plan_requests(commands)
    assert pool == "p1"
    assert plan.stages == ["a", "b", "c", "d", "e"]
    assert plan.upstream == {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": []}
    assert dispatched(commands) == []
    assert dispatched(h.feed(Tick(0.5))) == []


def test_planned_stages_are_skipped_without_dispatch_and_the_rest_run() -> None:
    h = Harness(diamond(), slots=4, plan=["a", "b", "e"])
    commands = h.run()
    assert finished(h) == {"a": "skipped", "b": "skipped", "e": "skipped"}
    [(_, stage, attempt)] = dispatched(commands)
    assert stage == "c"  # d waits for c; a, b and e never reach a pool
    [(_, d, d_attempt)] = dispatched(h.result(attempt))
    assert d == "d"
    commands = h.result(d_attempt)
    [wave] = published(commands, WaveFinished)
    assert wave.skipped == ["a", "b", "e"] and wave.ran == ["c", "d"]


def test_a_wave_where_everything_is_up_to_date_ends_on_the_plan() -> None:
    h = Harness(diamond(), slots=4, plan=["a", "b", "c", "d", "e"])
    commands = h.run()
    assert dispatched(commands) == []
    [wave] = published(commands, WaveFinished)
    assert wave.skipped == ["a", "b", "c", "d", "e"]
    assert h.state.wave is None


def test_a_forced_wave_asks_for_no_plan() -> None:
    h = Harness(diamond(), slots=4)
    h.plan = None
    commands = h.run(force=True)
    assert plan_requests(commands) == []
    assert [s for _, s, _ in dispatched(commands)] == ["a", "e"]


def test_losing_the_planning_pool_falls_back_to_deciding_at_dispatch() -> None:
    h = Harness(diamond(), slots=4)
    h.plan = None
    h.join("p2", 4, 0.0)
    [(planner, _)] = plan_requests(h.run())
    commands = h.feed(PoolGone(planner, "killed"))
    assert sorted(s for _, s, _ in dispatched(commands)) == ["a", "e"]


def test_a_late_plan_for_an_earlier_wave_is_ignored() -> None:
    h = Harness(diamond(), slots=4)
    h.plan = None
    [(_, plan)] = plan_requests(h.run())
    h.feed(WavePlanned("p1", plan.wave, ("a", "b", "c", "d", "e")))
    assert h.state.wave is None
    [(_, plan2)] = plan_requests(h.run())
    commands = h.feed(WavePlanned("p1", plan.wave, ("a", "b", "c", "d", "e")))
    assert commands == [] and h.state.wave is not None
    assert dispatched(h.feed(WavePlanned("p1", plan2.wave, ()))) != []


# --- live mode (`pivot up`): changes -> quiet window -> check -> reload or wave --------------


def live_harness(manifest: Manifest | None = None, watching: bool = True, **options: Any) -> Harness:
    h = Harness()
    h.state = BrokerState(heartbeat_s=1.0, liveness=3, live=LiveOptions(**options))
    m = manifest or diamond()
    h.feed(PoolJoined("p1", 4, 0.0))
    h.feed(ManifestArrived("p1", m, build_graph(m)))
    if watching:
        h.feed(WatcherJoined(10))
    return h


def confirms(commands: list[Command]) -> list[tuple[str, ...]]:
    return [c.paths for c in commands if isinstance(c, ConfirmChanges)]


def reloads(commands: list[Command]) -> list[LoadManifest]:
    return [c.msg for c in commands if isinstance(c, SendWork) and isinstance(c.msg, LoadManifest)]


def test_changes_wait_for_the_quiet_window_then_are_checked() -> None:
    h = live_harness(debounce_s=0.05, max_wait_s=5.0)
    h.feed(FilesReported(("a.txt",), 10.0))
    assert h.state.next_deadline() == pytest.approx(10.05)
    assert confirms(h.feed(Tick(10.03))) == []
    h.feed(FilesReported(("b.txt", "a.txt"), 10.04))  # extends the window
    assert confirms(h.feed(Tick(10.06))) == []
    assert confirms(h.feed(Tick(10.1))) == [("a.txt", "b.txt")]
    assert h.state.next_deadline() is None


def test_a_stream_of_changes_is_checked_after_the_maximum_wait() -> None:
    h = live_harness(debounce_s=0.05, max_wait_s=0.2)
    now = 10.0
    found: list[tuple[str, ...]] = []
    while now < 10.3 and not found:
        h.feed(FilesReported((f"f{now:.2f}",), now))
        now += 0.03
        found = confirms(h.feed(Tick(now)))
    assert found and now == pytest.approx(10.21, abs=0.02)


def test_a_confirmed_data_change_runs_its_consumers_and_their_downstream_only() -> None:
    h = live_harness()
    h.feed(FilesReported(("b.txt",), 1.0))
    [paths] = confirms(h.feed(Tick(1.1)))
    commands = h.feed(ChangesConfirmed(paths))
    [wave] = published(commands, WaveStarted)
    # b.txt is b's output (a hand edit makes b stale) and d's input.
    assert wave.stages == ["b", "d"] and wave.trigger == "files" and wave.paths == ["b.txt"]


def test_a_changes_wave_asks_for_no_plan_and_its_pools_decide_each_stage() -> None:
    h = live_harness()
    h.plan = None  # a plan asked for would never be answered
    h.feed(FilesReported(("b.txt",), 1.0))
    [paths] = confirms(h.feed(Tick(1.1)))
    commands = h.feed(ChangesConfirmed(paths))
    assert plan_requests(commands) == []
    [(_, b, b_attempt)] = dispatched(commands)  # d waits for b
    assert b == "b"
    # b wrote what it had (early cutoff): d is still given to a pool, which skips it.
    [(_, d, d_attempt)] = dispatched(h.result(b_attempt))
    assert d == "d"
    [wave] = published(h.result(d_attempt, "skipped"), WaveFinished)
    assert wave.ran == ["b"] and wave.skipped == ["d"]
    # A run request still asks for one.
    [(_, plan)] = plan_requests(h.run())
    assert plan.stages == ["a", "b", "c", "d", "e"]


def test_a_change_the_check_discards_starts_no_wave() -> None:
    h = live_harness()
    h.feed(FilesReported(("a.txt",), 1.0))
    h.feed(Tick(1.1))
    assert published(h.feed(ChangesConfirmed(())), WaveStarted) == []
    h.feed(FilesReported(("unrelated.csv",), 2.0))
    h.feed(Tick(2.1))
    assert published(h.feed(ChangesConfirmed(("unrelated.csv",))), WaveStarted) == []


def test_data_changes_during_a_wave_wait_for_it_and_form_the_next_wave() -> None:
    h = live_harness()
    [(_, _, a), (_, _, e)] = dispatched(h.run())
    h.feed(FilesReported(("e.txt",), 1.0))
    assert confirms(h.feed(Tick(1.1))) == []  # a wave is in flight
    h.result(e)
    [(_, _, b), (_, _, c)] = dispatched(h.result(a))
    h.result(b)
    [(_, _, d)] = dispatched(h.result(c))
    commands = h.result(d)
    assert published(commands, WaveFinished)
    [paths] = confirms(h.feed(Tick(1.2)))
    [wave] = published(h.feed(ChangesConfirmed(paths)), WaveStarted)
    assert wave.stages == ["e"] and wave.wave == 2


def test_a_code_change_mid_wave_stops_dispatch_reloads_and_reruns_what_changed() -> None:
    h = live_harness()
    [(_, _, a), (_, _, e)] = dispatched(h.run())
    h.feed(FilesReported(("helpers.py",), 1.0))
    h.state.manifest = dataclasses.replace(h.state.manifest, sources=("helpers.py", "pipeline.py"))  # type: ignore[arg-type]
    [paths] = confirms(h.feed(Tick(1.1)))  # code is checked even while a wave runs
    commands = h.feed(ChangesConfirmed(paths))
    assert reloads(commands) == [LoadManifest(True, 1)]
    # Not started yet: cancelled now, to run after the reload.
    assert {s: st for s, st in finished(h).items()} == {"b": "cancelled", "c": "cancelled", "d": "cancelled"}
    assert dispatched(h.result(a)) == []  # nothing more starts on the old code
    commands = h.feed(ResultReceived("p1", e, "cancelled", "cancelled", "code changed", 0.0, None, ()))
    assert published(commands, WaveFinished)
    old = h.state.manifest
    assert old is not None
    changed = Manifest(
        tuple(dataclasses.replace(s, fingerprint="new") if s.name == "a" else s for s in old.stages),
        old.sources,
    )
    commands = h.feed(ManifestArrived("p1", changed, build_graph(changed), load=1))
    [wave] = published(commands, WaveStarted)
    # a changed; b, c, d were stopped; e was cancelled mid-run: all run again.
    assert wave.stages == ["a", "b", "c", "d", "e"]
    assert wave.trigger == "code" and wave.paths == ["helpers.py"]


def code_change(h: Harness) -> list[Command]:
    """helpers.py saved and confirmed: a reload with new workers is asked for."""
    h.feed(FilesReported(("helpers.py",), 1.0))
    h.state.manifest = dataclasses.replace(h.state.manifest, sources=("helpers.py", "pipeline.py"))  # type: ignore[arg-type]
    [paths] = confirms(h.feed(Tick(1.1)))
    commands = h.feed(ChangesConfirmed(paths))
    assert reloads(commands) == [LoadManifest(True, 1)]
    return commands


def new_code(h: Harness, *changed: str) -> ManifestArrived:
    old = h.state.manifest
    assert old is not None
    m = Manifest(tuple(dataclasses.replace(s, fingerprint="new") if s.name in changed else s for s in old.stages),
                 old.sources)
    return ManifestArrived("p1", m, build_graph(m), load=1)


def test_a_code_change_cancels_a_running_stage_only_if_its_code_changed_and_the_next_wave_takes_over_the_other() -> None:
    h = live_harness()
    [(_, _, a), (_, _, e)] = dispatched(h.run())
    h.feed(StageRunningReported("p1", a, "never_ran", "never ran"))
    h.feed(StageRunningReported("p1", e, "never_ran", "never ran"))
    commands = code_change(h)
    assert cancels(commands) == []  # the new code says which to stop
    commands = h.feed(new_code(h, "a"))
    assert [c.attempt for c in cancels(commands)] == [a]
    assert published(commands, WaveStarted) == []  # a's cancel is not through yet
    commands = h.feed(ResultReceived("p1", a, "cancelled", "cancelled", "cancelled: Python code changed", 0.0, None, ()))
    [old] = published(commands, WaveFinished)
    assert old.cancelled == ["a", "b", "c", "d"] and old.moved == ["e"] and "e" not in old.ran
    [wave] = published(commands, WaveStarted)
    assert wave.stages == ["a", "b", "c", "d", "e"] and wave.trigger == "code"
    [started] = published(commands, StageStarted)
    assert (started.wave, started.stage, started.details) == (2, "e", {"from_wave": 1})
    assert h.state.view.stages["e"].status == "running"
    [(_, stage, a2)] = dispatched(commands)  # e is not run again: it runs
    assert stage == "a"
    h.feed(ResultReceived("p1", e, "ran", "x", "because", 5.0, None, ()))
    assert h.state.view.stages["e"].status == "ran"
    [(_, _, b), (_, _, c)] = dispatched(h.result(a2))
    h.result(b)
    [(_, _, d)] = dispatched(h.result(c))
    [last] = published(h.result(d), WaveFinished)
    assert last.wave == 2 and last.ran == ["a", "b", "c", "d", "e"]


def test_a_stage_taken_over_that_its_pool_cancelled_after_all_runs_again_in_the_next_wave() -> None:
    h = live_harness()
    [(_, _, a), (_, _, e)] = dispatched(h.run())
    h.feed(StageRunningReported("p1", e, "never_ran", "never ran"))
    code_change(h)
    h.feed(ResultReceived("p1", a, "cancelled", "cancelled", "cancelled: Python code changed", 0.0, None, ()))
    commands = h.feed(new_code(h, "a"))
    [wave] = published(commands, WaveStarted)
    assert wave.stages == ["a", "b", "c", "d", "e"]
    commands = h.feed(ResultReceived("p1", e, "cancelled", "cancelled", "cancelled: Python code changed", 0.0, None, ()))
    assert [s for _, s, _ in dispatched(commands)] == ["e"]  # on the new code
    assert published(commands, StageFinished) == []  # not finished: it runs again in this wave


def test_a_running_stage_downstream_of_changed_code_is_cancelled_and_runs_again_after_it() -> None:
    h = live_harness(fed_chain())
    [(_, _, a), (_, _, e)] = dispatched(h.run())
    h.feed(StageRunningReported("p1", e, "never_ran", "never ran"))
    [(_, _, b)] = dispatched(h.result(a))
    h.feed(StageRunningReported("p1", b, "never_ran", "never ran"))
    code_change(h)
    # a changed: b, running below it, runs again; e (unrelated, unchanged) runs on.
    commands = h.feed(new_code(h, "a"))
    assert [c.attempt for c in cancels(commands)] == [b]
    commands = h.feed(ResultReceived("p1", b, "cancelled", "cancelled", "cancelled: Python code changed", 0.0, None, ()))
    [wave] = published(commands, WaveStarted)
    assert wave.stages == ["a", "b", "e"]
    assert [s for _, s, _ in dispatched(commands)] == ["a"]


def outdated(attempt: str) -> ResultReceived:
    """A worker found helpers.py saved since the manifest it ran under was taken."""
    return ResultReceived("p1", attempt, "cancelled", "code_outdated", "not run: its code changed", 0.0, None,
                          (), {"paths": ["helpers.py"]})


def test_a_stage_whose_code_moved_on_since_the_load_reloads_and_runs_after_it_even_if_nothing_else_changed() -> None:
    h = live_harness()
    [(_, _, a), (_, _, e)] = dispatched(h.run())
    commands = h.feed(outdated(a))
    # The watcher's report of that save may come later: the broker loads the pipeline now.
    assert reloads(commands) == [LoadManifest(True, 1)]
    assert finished(h) == {"a": "cancelled", "b": "cancelled", "c": "cancelled", "d": "cancelled"}
    h.feed(ResultReceived("p1", e, "cancelled", "cancelled", "code changed", 0.0, None, ()))
    old = h.state.manifest
    assert old is not None
    # The save changed no fingerprint (a comment): a, and what needs it, run all the same.
    commands = h.feed(ManifestArrived("p1", old, build_graph(old), load=1))
    [wave] = published(commands, WaveStarted)
    assert wave.stages == ["a", "b", "c", "d", "e"] and wave.trigger == "code"


def test_a_one_shot_run_whose_code_moved_on_ends_without_starting_anything_more() -> None:
    h = Harness(diamond(), slots=4)
    [(_, _, a), (_, _, e)] = dispatched(h.run())
    commands = h.feed(outdated(a))
    assert reloads(commands) == [] and dispatched(commands) == []
    assert finished(h) == {"a": "cancelled", "b": "cancelled", "c": "cancelled", "d": "cancelled"}
    [wave] = published(h.result(e), WaveFinished)
    assert wave.ran == ["e"]


def fed_chain() -> Manifest:
    """in.txt -> a -> a.txt -> b; side.txt -> e."""
    return Manifest(
        (
            spec("a", deps=["in.txt"], outs=["a.txt"]),
            spec("b", deps=["a.txt"], outs=["b.txt"]),
            spec("e", deps=["side.txt"], outs=["e.txt"]),
        )
    )


def cancels(commands: list[Command]) -> list[CancelStage]:
    return [c.msg for c in commands if isinstance(c, SendWork) and isinstance(c.msg, CancelStage)]


def test_restart_cancels_a_running_stage_whose_input_changed_and_reruns_it_in_the_wave() -> None:
    h = live_harness(fed_chain(), restart=True)
    [(_, _, a), (_, _, e)] = dispatched(h.run())
    h.feed(FilesReported(("in.txt",), 1.0))
    [paths] = confirms(h.feed(Tick(1.1)))  # checked at once, though a wave runs
    commands = h.feed(ChangesConfirmed(paths))
    assert [c.attempt for c in cancels(commands)] == [a]
    assert published(commands, WaveStarted) == []  # the wave in flight takes care of it
    commands = h.feed(ResultReceived("p1", a, "cancelled", "cancelled", "inputs changed", 0.0, None, ()))
    assert published(commands, StageFinished) == []  # not finished in this wave: it runs again
    [(_, again, a2)] = dispatched(commands)
    assert again == "a"
    h.result(e)
    [(_, _, b)] = dispatched(h.result(a2))
    [done] = published(h.result(b), WaveFinished)
    assert done.ran == ["a", "b", "e"] and done.cancelled == []
    assert h.state.pending is None  # no second wave for the same change


def test_without_restart_a_running_stage_whose_input_changed_runs_in_the_next_wave() -> None:
    h = live_harness(fed_chain())
    [(_, _, a), (_, _, e)] = dispatched(h.run())
    h.feed(FilesReported(("in.txt",), 1.0))
    assert confirms(h.feed(Tick(1.1))) == []  # waits for the wave
    h.result(e)
    [(_, _, b)] = dispatched(h.result(a))
    assert published(h.result(b), WaveFinished)
    [paths] = confirms(h.feed(Tick(1.2)))
    [wave] = published(h.feed(ChangesConfirmed(paths)), WaveStarted)
    assert wave.stages == ["a", "b"] and wave.wave == 2


def test_restart_leaves_the_waves_own_outputs_for_after_it() -> None:
    h = live_harness(fed_chain(), restart=True)
    [_, (_, _, e)] = dispatched(h.run())
    h.feed(FilesReported(("a.txt", "side.txt"), 1.0))
    [paths] = confirms(h.feed(Tick(1.1)))
    assert paths == ("side.txt",)  # a.txt is written by a stage of the wave in flight
    assert [c.attempt for c in cancels(h.feed(ChangesConfirmed(paths)))] == [e]


def test_restart_a_stage_that_finished_before_its_cancel_runs_in_the_next_wave() -> None:
    h = live_harness(fed_chain(), restart=True)
    [(_, _, a), (_, _, e)] = dispatched(h.run())
    h.feed(FilesReported(("in.txt",), 1.0))
    [paths] = confirms(h.feed(Tick(1.1)))
    assert cancels(h.feed(ChangesConfirmed(paths)))
    [(_, _, b)] = dispatched(h.result(a))  # it ran on the old input
    h.result(e)
    commands = h.result(b)
    assert published(commands, WaveFinished)
    [wave] = published(commands, WaveStarted)
    assert wave.stages == ["a", "b"] and wave.wave == 2


def test_restart_of_a_stage_taken_over_from_the_wave_before_runs_it_again_once() -> None:
    h = live_harness(fed_chain(), restart=True)
    [(_, _, a), (_, _, e)] = dispatched(h.run())
    h.feed(StageRunningReported("p1", a, "never_ran", "never ran"))
    h.feed(StageRunningReported("p1", e, "never_ran", "never ran"))
    code_change(h)
    h.feed(new_code(h, "a"))
    commands = h.feed(ResultReceived("p1", a, "cancelled", "cancelled", "cancelled: Python code changed", 0.0, None, ()))
    [wave] = published(commands, WaveStarted)
    assert wave.stages == ["a", "b", "e"]
    [(_, _, a2)] = dispatched(commands)
    # e, taken over, reads side.txt: saved now, it is cancelled and runs again in this wave.
    h.feed(FilesReported(("side.txt",), 2.0))
    [paths] = confirms(h.feed(Tick(2.1)))
    commands = h.feed(ChangesConfirmed(paths))
    assert [c.attempt for c in cancels(commands)] == [e]
    commands = h.feed(ResultReceived("p1", e, "cancelled", "cancelled", "inputs changed", 0.0, None, ()))
    [(_, again, e2)] = dispatched(commands)
    assert again == "e"
    assert published(h.result(e2), WaveStarted) == []
    [(_, _, b)] = dispatched(h.result(a2))
    commands = h.result(b)
    [done] = published(commands, WaveFinished)
    assert done.ran == ["a", "b", "e"]
    # e ran on the new content: no wave after it.
    assert published(commands, WaveStarted) == [] and h.state.pending is None


def test_a_params_change_reloads_without_restarting_workers_and_a_failed_reload_keeps_the_manifest() -> None:
    h = live_harness()
    h.feed(FilesReported(("params.yaml",), 1.0))
    [paths] = confirms(h.feed(Tick(1.1)))
    assert reloads(h.feed(ChangesConfirmed(paths))) == [LoadManifest(False, 1)]
    before = h.state.manifest
    commands = h.feed(ManifestRejected("params.yaml: bad", "", "p1", 1))
    assert published(commands, PipelineInvalid) and h.state.manifest is before
    assert h.state.reload.active is False


def test_up_with_stages_keeps_only_them_and_their_upstream_live() -> None:
    h = live_harness(scope=("b",))
    h.feed(FilesReported(("a.txt",), 1.0))  # read by b and c, written by a
    [paths] = confirms(h.feed(Tick(1.1)))
    [wave] = published(h.feed(ChangesConfirmed(paths)), WaveStarted)
    assert wave.stages == ["a", "b"]  # c and d are outside the scope


def test_no_wave_starts_before_the_watch_is_registered() -> None:
    h = live_harness(watching=False)
    assert published(h.run(), WaveStarted) == []  # an edit made now would be missed
    [wave] = published(h.feed(WatcherJoined(10)), WaveStarted)
    assert wave.trigger == "run"


def test_a_restarted_watcher_makes_every_stage_be_checked_again() -> None:
    h = live_harness()  # its first watcher joined: nothing was missed
    [wave] = published(h.feed(WatcherJoined(11)), WaveStarted)
    assert wave.stages == ["a", "b", "c", "d", "e"] and wave.trigger == "files"


def test_pause_holds_new_waves_and_resume_starts_them() -> None:
    h = live_harness()
    commands = h.feed(PauseRequested(CLIENT, True))
    assert published(commands, Paused) == [Paused()] and h.state.snapshot().paused
    assert published(h.run(), WaveStarted) == []  # queued, not started
    h.feed(FilesReported(("a.txt",), 1.0))
    [paths] = confirms(h.feed(Tick(1.1)))  # changes are still collected and checked
    held = h.feed(ChangesConfirmed(paths))
    assert published(held, WaveStarted) == []
    # Every display is told what waits (the live view's header lists it), once.
    assert published(held, Paused) == [Paused(["a.txt"])]
    assert published(h.feed(PauseRequested(CLIENT, True)), Paused) == []  # already paused
    commands = h.feed(PauseRequested(CLIENT, False))
    assert published(commands, Resumed) == [Resumed()]
    [wave] = published(commands, WaveStarted)
    assert wave.stages == ["a", "b", "c", "d", "e"]


def test_a_stage_cancelled_after_the_reload_answered_still_runs_again() -> None:
    h = live_harness()
    [(_, _, a), (_, _, e)] = dispatched(h.run())
    h.state.manifest = dataclasses.replace(h.state.manifest, sources=("helpers.py",))  # type: ignore[arg-type]
    h.feed(FilesReported(("helpers.py",), 1.0))
    [paths] = confirms(h.feed(Tick(1.1)))
    h.feed(ChangesConfirmed(paths))
    h.result(a)
    same = h.state.manifest
    assert same is not None
    h.feed(ManifestArrived("p1", same, build_graph(same), load=1))  # nothing changed in the specs
    # e was still being decided by the pool: its cancellation arrives only now.
    commands = h.feed(ResultReceived("p1", e, "cancelled", "cancelled", "code changed", 0.0, None, ()))
    [wave] = published(commands, WaveStarted)
    assert "e" in wave.stages and wave.trigger == "code"


def test_while_the_pipeline_is_broken_changes_wait_for_the_fix() -> None:
    h = live_harness()
    h.feed(FilesReported(("pipeline.py",), 0.5))
    [paths] = confirms(h.feed(Tick(0.6)))
    h.feed(ChangesConfirmed(paths))
    h.feed(ManifestRejected("pipeline.py failed to import: SyntaxError", "", "p1", 1))
    h.feed(FilesReported(("a.txt",), 1.0))
    [paths] = confirms(h.feed(Tick(1.1)))
    assert published(h.feed(ChangesConfirmed(paths)), WaveStarted) == []
    h.feed(FilesReported(("pipeline.py",), 1.5))
    [paths] = confirms(h.feed(Tick(1.6)))
    h.feed(ChangesConfirmed(paths))
    m = h.state.manifest
    assert m is not None
    [wave] = published(h.feed(ManifestArrived("p1", m, build_graph(m), load=2)), WaveStarted)
    assert wave.stages == ["a", "b", "c", "d"]  # the data edit waited; now it runs


def test_a_package_installed_on_a_pools_host_loads_the_pipeline_again_as_code() -> None:
    # `pip install -U` beside `pivot up`: the stages whose fingerprints name the new
    # version run again, on new workers (the reload restarts them).
    h = live_harness()
    assert reloads(h.feed(InstallReported("p1", ("/venv/site-packages",)))) == [LoadManifest(True, 1)]
    old = h.state.manifest
    assert old is not None
    upgraded = Manifest(tuple(dataclasses.replace(s, fingerprint="new") if s.name == "c" else s for s in old.stages),
                        old.sources)
    [wave] = published(h.feed(ManifestArrived("p1", upgraded, build_graph(upgraded), load=1)), WaveStarted)
    assert (wave.stages, wave.trigger, wave.paths) == (["c", "d"], "code", ["(installed packages)"])
    # A one-shot run ends on the code it loaded; an unknown pool is not listened to.
    once = Harness(diamond())
    assert reloads(once.feed(InstallReported("p1", ("/venv/site-packages",)))) == []
    assert reloads(h.feed(InstallReported("elsewhere", ("/venv/site-packages",)))) == []


def test_a_stage_added_by_an_edit_runs_and_one_removed_is_dropped() -> None:
    h = live_harness()  # idle: its stages ran before
    h.feed(FilesReported(("pipeline.py",), 1.0))
    [paths] = confirms(h.feed(Tick(1.1)))
    assert reloads(h.feed(ChangesConfirmed(paths))) == [LoadManifest(True, 1)]
    old = h.state.manifest
    assert old is not None
    edited = Manifest((*(s for s in old.stages if s.name != "e"), spec("f", deps=["a.txt"], outs=["f.txt"])),
                      old.sources)
    commands = h.feed(ManifestArrived("p1", edited, build_graph(edited), load=1))
    [loaded] = published(commands, PipelineLoaded)
    assert (loaded.added, loaded.removed, loaded.changed) == (["f"], ["e"], [])
    [wave] = published(commands, WaveStarted)
    assert (wave.stages, wave.trigger, wave.paths) == (["f"], "code", ["pipeline.py"])
    assert "e" not in h.state.snapshot().stages


def test_while_the_pipeline_is_broken_a_save_of_a_module_no_manifest_names_loads_it_again() -> None:
    # pipeline.py now imports newmod.py, which fails: the last good manifest's sources do
    # not name it, and saving its fix must still load the pipeline again.
    h = live_harness()
    h.feed(FilesReported(("pipeline.py", "newmod.py"), 0.5))
    [paths] = confirms(h.feed(Tick(0.6)))
    assert reloads(h.feed(ChangesConfirmed(paths))) == [LoadManifest(True, 1)]
    h.feed(ManifestRejected("pipeline.py failed to import: newmod.py: SyntaxError", "", "p1", 1))
    h.feed(FilesReported(("newmod.py",), 1.0))
    [paths] = confirms(h.feed(Tick(1.1)))
    assert reloads(h.feed(ChangesConfirmed(paths))) == [LoadManifest(True, 2)]
    m = h.state.manifest
    assert m is not None
    h.feed(ManifestArrived("p1", m, build_graph(m), load=2))
    assert h.state.pipeline_error is None
    h.feed(FilesReported(("notes.py",), 2.0))  # loaded again: a file in no manifest is data
    [paths] = confirms(h.feed(Tick(2.1)))
    assert reloads(h.feed(ChangesConfirmed(paths))) == []


def test_a_lost_stage_reported_after_a_fail_fast_halt_is_cancelled_and_the_wave_ends() -> None:
    h = Harness(diamond(), slots=4)
    [(_, _, a), (_, _, e)] = dispatched(h.run())
    h.result(a, status="failed")  # fail-fast: nothing new starts
    commands = h.feed(ResultReceived("p1", e, "lost", "pool_lost", "another stage's worker died", 0.0, None, ()))
    assert dispatched(commands) == []
    assert finished(h)["e"] == "cancelled"
    assert published(commands, WaveFinished)


# --- shutdown: a grace period for running stages, then cancel -------------------------


def stops(commands: list[Command]) -> tuple[bool, bool]:
    """(pools told to shut down, the client answered)"""
    told = any(isinstance(c, SendWork) and isinstance(c.msg, PoolShutdown) for c in commands)
    answered = any(isinstance(c, Reply) and isinstance(c.msg, ShutdownReply) for c in commands)
    return told, answered


def test_shutdown_while_idle_stops_the_pools_at_once() -> None:
    h = Harness(diamond())
    assert stops(h.feed(ShutdownRequested(CLIENT, 5.0, 1.0))) == (True, True)


def test_shutdown_lets_a_running_stage_finish_within_the_grace_period() -> None:
    h = Harness(diamond())
    [(_, _, a)] = dispatched(h.run("b"))
    commands = h.feed(ShutdownRequested(CLIENT, 5.0, 10.0))
    assert stops(commands) == (False, False)
    assert finished(h) == {"b": "cancelled"}  # not started: nothing new starts
    assert h.state.next_deadline() == pytest.approx(15.0)
    commands = h.result(a)
    [done] = published(commands, WaveFinished)
    assert done.ran == ["a"] and done.cancelled == ["b"]
    assert stops(commands) == (True, True)


def test_shutdown_cancels_what_still_runs_after_the_grace_period() -> None:
    h = Harness(diamond())
    [(_, _, a)] = dispatched(h.run("a"))
    h.feed(ShutdownRequested(CLIENT, 5.0, 10.0))
    h.feed(PoolHeard("p1", 14.5))  # the pool is alive all along
    assert cancels(h.feed(Tick(14.9))) == []
    [cancel] = cancels(h.feed(Tick(15.0)))
    assert cancel.attempt == a
    commands = h.feed(ResultReceived("p1", a, "cancelled", "cancelled", cancel.reason, 0.0, None, ()))
    assert finished(h) == {"a": "cancelled"} and stops(commands) == (True, True)


def test_shutdown_gives_up_on_a_stage_that_ignores_its_cancel() -> None:
    h = Harness(diamond())
    h.run("a")
    h.feed(ShutdownRequested(CLIENT, 0.0, 10.0))  # no grace: cancelled at once
    deadline = h.state.next_deadline()
    assert deadline is not None and deadline > 10.0
    h.feed(PoolHeard("p1", deadline - 0.5))  # the pool is alive all along
    assert stops(h.feed(Tick(deadline - 0.01))) == (False, False)
    assert stops(h.feed(Tick(deadline))) == (True, True)
    assert finished(h) == {"a": "cancelled"}


def test_a_second_shutdown_request_cuts_the_grace_period_short() -> None:
    h = Harness(diamond())
    [(_, _, a)] = dispatched(h.run("a"))
    h.feed(ShutdownRequested(CLIENT, 5.0, 10.0))
    [cancel] = cancels(h.feed(ShutdownRequested(CLIENT, 0.0, 11.0)))
    assert cancel.attempt == a


def test_the_snapshot_holds_the_last_change_and_each_stages_log_tail() -> None:
    h = live_harness(fed_chain())
    [(_, _, a), (_, _, e)] = dispatched(h.run())
    lines = tuple(("stdout", f"line {i}") for i in range(50))
    [(_, _, b)] = dispatched(h.feed(ResultReceived("p1", a, "ran", "never_ran", "never ran", 0.1, None, lines)))
    h.result(e)
    h.result(b)
    h.feed(FilesReported(("side.txt",), 1.0))
    [paths] = confirms(h.feed(Tick(1.1)))
    h.feed(ChangesConfirmed(paths))
    snap = h.state.snapshot()
    assert (snap.trigger, snap.paths) == ("files", ["side.txt"])
    assert snap.logs["a"] == [("stdout", f"line {i}") for i in range(30, 50)]
    assert "e" not in snap.logs  # it printed nothing


def test_a_broker_that_did_not_run_for_a_while_gives_its_pools_a_fresh_window() -> None:
    h = Harness(diamond())
    h.feed(Tick(0.5))
    # Nothing ran for 10 s (Ctrl-Z on `pivot up`): the pool's silence is the broker's.
    assert published(h.feed(Tick(10.5)), PoolLost) == []
    assert published(h.feed(Tick(11.0)), PoolLost) == []
    [lost] = published(h.feed(Tick(14.0)), PoolLost)  # then silence counts again
    assert lost.pool == "p1" and "no heartbeat" in lost.reason


def test_a_pool_lost_after_a_failure_halted_the_wave_ends_it_instead_of_requeueing() -> None:
    h = Harness(diamond(), slots=2)
    [(_, _, a), _] = dispatched(h.run())
    h.result(a, "failed")  # fail-fast: nothing new starts
    commands = h.feed(PoolGone("p1", "pool process killed by SIGKILL"))
    [done] = published(commands, WaveFinished)
    assert done.failed == ["a"] and "e" in done.cancelled
    assert finished(h)["e"] == "cancelled"


def test_restart_in_a_wave_without_the_downstream_queues_the_downstream_after_it() -> None:
    h = live_harness(fed_chain(), restart=True)
    [(_, _, a)] = dispatched(h.run("a"))  # `pivot repro a`: b is not in this wave
    h.feed(FilesReported(("in.txt",), 1.0))
    [paths] = confirms(h.feed(Tick(1.1)))
    assert [c.attempt for c in cancels(h.feed(ChangesConfirmed(paths)))] == [a]
    commands = h.feed(ResultReceived("p1", a, "cancelled", "cancelled", "inputs changed", 0.0, None, ()))
    [(_, again, a2)] = dispatched(commands)
    assert again == "a"
    commands = h.result(a2)
    assert published(commands, WaveFinished)
    [wave] = published(commands, WaveStarted)
    assert wave.stages == ["b"] and wave.paths == ["in.txt"]


def test_a_run_asked_while_paused_is_queued_and_says_so() -> None:
    h = live_harness()
    h.feed(PauseRequested(CLIENT, True))
    [reply] = [c.msg for c in h.run() if isinstance(c, Reply)]
    assert isinstance(reply, RunReply) and reply.accepted and "paused" in reply.message
    assert published(h.feed(PauseRequested(CLIENT, False)), WaveStarted)


def gpu_pipeline() -> Manifest:
    """prep -> train (needs a pool tagged gpu) -> report."""
    return Manifest((
        spec("prep", outs=["p.txt"]),
        spec("train", deps=["p.txt"], outs=["m.txt"], tags=["gpu"]),
        spec("report", deps=["m.txt"], outs=["r.txt"]),
    ))


def test_a_tagged_stage_goes_only_to_a_pool_with_its_tags() -> None:
    h = Harness(gpu_pipeline(), slots=2)
    h.join("gpu-1", 1, 0.0, tags=frozenset({"gpu", "big"}))
    [(pool, stage, a)] = dispatched(h.run(keep_going=True))
    assert (stage, pool) == ("prep", "p1")  # the first free pool in order
    [(pool, stage, _)] = dispatched(h.result(a, pool=pool))
    assert (pool, stage) == ("gpu-1", "train")


def test_a_one_shot_run_fails_a_stage_no_connected_pool_can_take() -> None:
    h = Harness(gpu_pipeline(), slots=2)
    [(_, _, a)] = dispatched(h.run())
    commands = h.result(a)
    [_prep, failed, blocked] = published(commands, StageFinished)
    assert (failed.stage, failed.status, failed.reason_code) == ("train", "failed", "no_pool")
    assert "pivot workers --tag gpu" in failed.reason and failed.details == {"tags": ["gpu"]}
    assert (blocked.stage, blocked.status) == ("report", "blocked")
    [end] = published(commands, WaveFinished)
    assert end.failed == ["train"]


def test_live_a_stage_waits_for_a_pool_with_its_tags_and_runs_when_one_joins() -> None:
    h = Harness(live=LiveOptions(wait_for_watcher=False))
    h.feed(PoolJoined("p1", 2, 0.0))
    m = gpu_pipeline()
    h.feed(ManifestArrived("p1", m, build_graph(m)))
    [(_, _, a)] = dispatched(h.run())
    commands = h.result(a)
    assert dispatched(commands) == [] and published(commands, StageFinished)[-1].stage == "prep"
    [notice] = published(commands, Notice)
    assert "train is waiting for a pool with tags gpu" in notice.message
    view = h.state.snapshot().stages["train"]
    assert (view.status, view.reason_code) == ("pending", "no_pool")
    assert published(h.feed(Tick(0.5)), Notice) == []  # said once
    h.manifest = m
    [(pool, stage, _)] = dispatched(h.join("gpu-1", 1, 0.6, tags=frozenset({"gpu"})))
    assert (pool, stage) == ("gpu-1", "train")


def test_a_pool_saying_goodbye_gets_nothing_new_and_is_forgotten_once_its_results_are_in() -> None:
    h = Harness(diamond(), slots=2)
    [(_, _, a), (_, _, e)] = dispatched(h.run())
    h.join("p2", 2, 0.0)
    commands = h.feed(PoolGone("p1", "the pool stopped", leaving=True))
    assert published(commands, PoolLost) == [] and "p1" in h.state.pools
    commands = h.feed(ResultReceived("p1", a, "lost", "pool_lost", "handed back", 0.0, None, ()))
    assert [(p, s) for p, s, _ in dispatched(commands)] == [("p2", "a")]  # never to p1 again
    commands = h.feed(ResultReceived("p1", e, "lost", "pool_lost", "handed back", 0.0, None, ()))
    assert [(p, s) for p, s, _ in dispatched(commands)] == [("p2", "e")]
    assert [n.message for n in published(commands, Notice)] == ["worker pool p1 left"]
    assert "p1" not in h.state.pools and published(commands, PoolLost) == []


def test_a_pool_mismatch_says_what_differs() -> None:
    ours = diamond().by_name["a"]
    assert spec_difference(ours, None) == "it has no such stage"
    assert spec_difference(ours, dataclasses.replace(ours, outs=("x",))) == f"outs ('x',), not {ours.outs!r}"


def test_a_pool_with_other_code_for_a_stage_gets_none_of_those_stages() -> None:
    h = Harness(diamond(), slots=1)
    old = Manifest(tuple(
        dataclasses.replace(s, fingerprint="old", code_parts={**s.code_parts, "helpers.f": "old"})
        if s.name == "a" else s for s in diamond().stages
    ))
    h.feed(PoolJoined("stale", 2, 0.0))
    commands = h.feed(PoolManifest("stale", old))
    [notice] = published(commands, Notice)
    assert "worker pool stale loaded other code or declarations for a" in notice.message
    assert notice.message.endswith("(a: code of helpers.f)"), notice.message  # which piece
    assert SendWork("stale", ManifestAccepted()) in commands  # for the stages it shares
    dispatches = dispatched(h.run())
    assert ("p1", "a") in [(p, s) for p, s, _ in dispatches]
    assert all(s != "a" for p, s, _ in dispatches if p == "stale")


def test_a_pool_that_cannot_load_the_pipeline_gets_no_stages_and_the_pipeline_stays_valid() -> None:
    h = Harness(diamond(), slots=1)
    h.feed(PoolJoined("p2", 4, 0.0))
    commands = h.feed(PoolManifest("p2", None, "ModuleNotFoundError: No module named 'torch'"))
    assert published(commands, PipelineInvalid) == []
    [notice] = published(commands, Notice)
    assert "p2 could not load the pipeline" in notice.message and "torch" in notice.message
    assert {p for p, _, _ in dispatched(h.run(force=True))} == {"p1"}


def test_a_broker_that_loads_the_pipeline_itself_accepts_pools_only_after_its_own_load() -> None:
    state = BrokerState(live=LiveOptions(wait_for_watcher=False), manifest_source="")
    m = diamond()
    state.handle(PoolJoined("p1", 2, 0.0))
    state.handle(ManifestArrived("", m, build_graph(m)))  # the broker's own loader
    assert SendWork("p1", ManifestAccepted()) in state.handle(PoolManifest("p1", m))
    state.handle(FilesReported(("pipeline.py",), 1.0))
    [confirm] = [c for c in state.handle(Tick(1.1)) if isinstance(c, ConfirmChanges)]
    commands = state.handle(ChangesConfirmed(confirm.paths))
    assert LoadOwnManifest(1) in commands and SendWork("p1", LoadManifest(True, 1)) in commands
    # The pool's new manifest comes first: it waits for the broker's own.
    assert not [c for c in state.handle(PoolManifest("p1", m, load=1)) if isinstance(c, SendWork) and isinstance(c.msg, ManifestAccepted)]
    commands = state.handle(ManifestArrived("", m, build_graph(m), load=1))
    assert SendWork("p1", ManifestAccepted()) in commands
    state.validate()


def accepted(commands: list[Command], pool: str) -> bool:
    return SendWork(pool, ManifestAccepted()) in commands


def test_an_answer_to_an_earlier_load_is_not_taken_for_the_last_ones() -> None:
    """A load that read the files before a save can answer after the broker asked for
    the next load: neither the engine nor a pool's check may take it for that one."""
    state = BrokerState(live=LiveOptions(wait_for_watcher=False), manifest_source="")
    m = diamond()
    old = Manifest(tuple(dataclasses.replace(s, fingerprint="old") for s in m.stages))
    state.handle(PoolJoined("p1", 2, 0.0))
    state.handle(ManifestArrived("", old, build_graph(old)))
    assert accepted(state.handle(PoolManifest("p1", old)), "p1")
    state.handle(FilesReported(("pipeline.py",), 1.0))
    [confirm] = [c for c in state.handle(Tick(1.1)) if isinstance(c, ConfirmChanges)]
    state.handle(ChangesConfirmed(confirm.paths))
    state.handle(FilesReported(("pipeline.py",), 2.0))  # saved again while it loads
    [confirm] = [c for c in state.handle(Tick(2.1)) if isinstance(c, ConfirmChanges)]
    state.handle(ChangesConfirmed(confirm.paths))
    commands = state.handle(ManifestArrived("", old, build_graph(old), load=1))
    assert LoadOwnManifest(2) in commands and SendWork("p1", LoadManifest(True, 2)) in commands  # the follow-up
    # The pool's answer to load 1 (the first save) crosses the request for load 2.
    state.handle(PoolManifest("p1", old, load=1))
    commands = state.handle(ManifestArrived("", m, build_graph(m), load=2))
    assert state.manifest is m and not accepted(commands, "p1")
    commands = state.handle(PoolManifest("p1", m, load=2))
    assert accepted(commands, "p1") and state.pools["p1"].mismatched == frozenset()
    assert published(commands, Notice) == []  # (no "other code" said of it)
    # The broker's own loader likewise: an answer to load 2 after load 3 was asked.
    state.handle(FilesReported(("pipeline.py",), 3.0))
    [confirm] = [c for c in state.handle(Tick(3.1)) if isinstance(c, ConfirmChanges)]
    state.handle(ChangesConfirmed(confirm.paths))
    state.handle(ManifestArrived("", old, build_graph(old), load=2))
    assert state.manifest is m and state.reload.active
    state.handle(ManifestArrived("", m, build_graph(m), load=3))
    assert not state.reload.active
    state.validate()


def test_a_wave_names_the_message_that_caused_it_as_its_parent() -> None:
    h = Harness(diamond(), slots=2)
    commands = h.feed(RunRequested(CLIENT, ("e",), False, False, "run-7"))
    [start] = [c for c in commands if isinstance(c, Publish) and isinstance(c.msg, WaveStarted)]
    assert start.parent == "run-7"
    [(_, _, e)] = dispatched(commands)
    h.result(e)
    live = Harness(diamond(), slots=2, live=LiveOptions(wait_for_watcher=False))
    live.feed(FilesReported(("a.txt",), 1.0, "changes-3"))
    [confirm] = [c for c in live.feed(Tick(1.1)) if isinstance(c, ConfirmChanges)]
    commands = live.feed(ChangesConfirmed(confirm.paths))
    [start] = [c for c in commands if isinstance(c, Publish) and isinstance(c.msg, WaveStarted)]
    assert (start.msg.trigger, start.parent) == ("files", "changes-3")
    assert live.state.changes.causes == {}  # nothing kept once used


# --- what a run request selects (pivot repro -s / --downstream / --glob) -------------------


def variants() -> Manifest:
    """a -> b -> fit@linear, fit@quadratic; b -> c."""
    return Manifest(
        (
            spec("a", outs=["a.txt"]),
            spec("b", deps=["a.txt"], outs=["b.txt"]),
            spec("c", deps=["b.txt"], outs=["c.txt"]),
            spec("fit@linear", deps=["b.txt"], outs=["l.txt"]),
            spec("fit@quadratic", deps=["b.txt"], outs=["q.txt"]),
        )
    )


def wave_of(h: Harness, *stages: str, select: str = "upstream", glob: bool = False) -> list[str]:
    commands = h.feed(RunRequested(CLIENT, stages, False, False, "", select, glob))
    [reply] = [c.msg for c in commands if isinstance(c, Reply)]
    assert isinstance(reply, RunReply) and reply.accepted, reply
    [started] = published(commands, WaveStarted)
    assert isinstance(started, WaveStarted)
    return started.stages


def test_a_single_item_run_takes_the_stage_alone() -> None:
    assert wave_of(Harness(variants()), "b", select="single") == ["b"]


def test_a_downstream_run_takes_what_follows_and_the_upstream_it_needs() -> None:
    assert wave_of(Harness(variants()), "b", select="downstream") == ["a", "b", "c", "fit@linear", "fit@quadratic"]
    assert wave_of(Harness(variants()), "c", select="downstream") == ["a", "b", "c"]


def test_a_variant_group_and_a_glob_name_their_stages() -> None:
    assert wave_of(Harness(variants()), "fit") == ["a", "b", "fit@linear", "fit@quadratic"]
    assert wave_of(Harness(variants()), "fit@q*", glob=True) == ["a", "b", "fit@quadratic"]
    assert wave_of(Harness(variants()), "fit", select="single") == ["fit@linear", "fit@quadratic"]


def test_an_unknown_name_pattern_or_selection_is_refused() -> None:
    for stages, select, glob, said in (
        (("fitt",), "upstream", False, "did you mean fit?"),
        (("zz*",), "upstream", True, "no stage matches: zz*"),
        (("b",), "sideways", False, "unknown selection 'sideways'"),
    ):
        h = Harness(variants())
        commands = h.feed(RunRequested(CLIENT, stages, False, False, "", select, glob))
        [reply] = [c.msg for c in commands if isinstance(c, Reply)]
        assert isinstance(reply, RunReply) and not reply.accepted and said in reply.message, reply
        assert published(commands, WaveStarted) == []


def test_a_single_item_run_merged_with_a_full_one_takes_the_upstream_too() -> None:
    h = Harness(variants(), plan=None)  # plans unanswered: the first wave stays open
    h.run("a")
    h.feed(RunRequested(CLIENT, ("c",), False, False, "", "single"))
    h.feed(RunRequested(CLIENT, ("fit@linear",), False, False, "", "upstream"))
    assert h.state.pending is not None and not h.state.pending.only


def test_a_settled_report_is_checked_at_once_and_what_a_wave_held_back_when_it_ends() -> None:
    h = live_harness(debounce_s=0.05, max_wait_s=5.0)
    h.feed(FilesReported(("b.txt",), 1.0, settled=True))
    assert h.state.next_deadline() == 1.0  # no quiet window
    [paths] = confirms(h.feed(Tick(1.0)))
    commands = h.feed(ChangesConfirmed(paths))
    [wave] = published(commands, WaveStarted)
    assert wave.stages == ["b", "d"]
    [(_, _, b)] = dispatched(commands)
    h.feed(FilesReported(("e.txt",), 1.01))  # during the wave: held back...
    assert confirms(h.feed(Tick(1.07))) == []
    assert h.state.next_deadline() == pytest.approx(1.07 + 0.05)  # ...not looked at every wake
    [(_, _, d)] = dispatched(h.result(b))
    assert published(h.result(d), WaveFinished)
    assert h.state.next_deadline() == pytest.approx(1.07)  # at once: the wave is over
    assert confirms(h.feed(Tick(1.08))) == [("e.txt",)]


def test_pivots_own_gitignore_write_does_not_make_the_next_save_a_burst() -> None:
    h = live_harness(debounce_s=60.0, max_wait_s=5.0)
    # A pool that loads a pipeline with new outputs rewrites the root's .gitignore.
    h.feed(FilesReported(("..gitignore.7.8.tmp", ".gitignore"), 1.0, settled=True))
    assert confirms(h.feed(Tick(1.0))) == [("..gitignore.7.8.tmp", ".gitignore")]
    h.feed(ChangesConfirmed(()))
    h.feed(FilesReported(("b.txt",), 1.5, settled=True))  # the user's save, well within the window
    assert h.state.next_deadline() == 1.5
    assert confirms(h.feed(Tick(1.5))) == [("b.txt",)]
    h.feed(ChangesConfirmed(()))
    h.feed(FilesReported((".gitignore", "notes.txt"), 2.0, settled=True))  # the user's edit counts
    assert confirms(h.feed(Tick(2.0))) == []  # the save at 1.5 came within the window
    assert h.state.next_deadline() == pytest.approx(2.0 + 5.0)


def test_a_wave_s_own_outputs_do_not_count_and_more_than_a_save_waits_the_window() -> None:
    h = live_harness(debounce_s=0.05, max_wait_s=5.0)
    h.feed(FilesReported(("b.txt",), 1.0, settled=True))
    [paths] = confirms(h.feed(Tick(1.0)))
    [(_, _, b)] = dispatched(h.feed(ChangesConfirmed(paths)))
    [(_, _, d)] = dispatched(h.result(b))
    assert published(h.result(d), WaveFinished)
    h.feed(FilesReported(("b.txt", "d.txt"), 2.0))  # the wave's outputs, reported late
    assert h.state.next_deadline() == 2.0
    assert confirms(h.feed(Tick(2.0))) == [("b.txt", "d.txt")]
    h.feed(ChangesConfirmed(()))
    # A save in the same burst as those outputs: still a lone save.
    saved = ("b.txt", "d.txt", "in/1.csv", "in/2.csv", "in/3.csv", "in/4.csv")
    h.feed(FilesReported(saved, 3.0, settled=True))
    assert confirms(h.feed(Tick(3.0))) == [saved]
    h.feed(ChangesConfirmed(()))
    h.feed(FilesReported(("d.txt", "notes.txt"), 4.0))  # not all outputs, not settled
    assert h.state.next_deadline() == pytest.approx(4.05)
    h.feed(Tick(4.05))
    h.feed(ChangesConfirmed(()))
    copied = tuple(f"in/{i}.csv" for i in range(5))  # more than a save: a copy
    h.feed(FilesReported(copied, 5.0, settled=True))
    assert h.state.next_deadline() == pytest.approx(5.05)


@pytest.mark.parametrize(("first", "second", "merged"), [
    ("files", "params", "params"), ("params", "files", "params"), ("files", "code", "code"),
    ("params", "code", "code"), ("code", "run", "run"), ("files", "files", "files"),
])
def test_merged_runs_are_named_by_their_weightiest_cause(first: str, second: str, merged: str) -> None:
    """A params.yaml save beside a data edit made a wave of "code" (no code changed)."""
    from broker.wave import PendingRun

    run = PendingRun({"a"}, False, False, True, first, ["x"])
    run.merge(PendingRun({"b"}, False, False, True, second, ["y"]))
    assert (run.trigger, run.paths, run.stages) == (merged, ["x", "y"], {"a", "b"})
