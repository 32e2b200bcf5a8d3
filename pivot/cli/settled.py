"""`pivot repro` with nothing to do, settled in the CLI's own process (issue 14, goal 2).

Through the engine, a run starts the pool's interpreter (~90 ms of imports), which loads
the pipeline, says hello and plans the wave; the broker finds every stage up to date and
the engine is stopped again: 0.21-0.25 s for 300 stages, where `pivot status` takes
0.10 s. Before any engine starts, the CLI forks the pipeline's loader itself (as
`status` does, as soon as it knows no engine owns the project) and drives the broker's
own state machine (broker/state.py) with the pool's part played in this process: a pool
joins, its manifest arrives, the run is requested, and the wave plan is answered by the
`plan_wave` a pool calls. When the state machine then publishes the end of the wave
without dispatching any stage, its events go to the display, and the run is over
without an engine. When it dispatches anything (a stage stale, restorable, failing on a
missing input...), nothing has been shown yet: the run goes to the engine as before, and
its pool is handed the pipeline loaded here instead of loading it again. The decisions
are the engine's own code; only the sockets are missing.

Not for `--force` (every stage runs), nor when an engine owns the project (the run is
its), nor when the pipeline does not load (the engine's pool loads it and says why).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pivot.errors import InfraError, PipelineError
from pivot.protocol.record import Record, record

if TYPE_CHECKING:
    from broker.events import Event, Publish
    from pivot.launch.spawn import Loading
    from pivot.pipeline.graph import StageGraph
    from pivot.pipeline.manifest import Manifest
    from pivot.state.lock import LockPrefetch
    from pivot.state.outputs import ProjectState

__all__ = ["Settled", "settle"]

POOL = "pool-1"
CLIENT = b"cli"


@record
class Settled(Record):
    code: int | None = None  # the run's exit code when it had nothing to do, else None
    manifest: Manifest | None = None  # as loaded here: the engine's pool need not load it
    graph: StageGraph | None = None  # the manifest's: its engine's broker need not build it
    stale: int = 0  # stages the plan found to run: the pool starts workers for them at once
    # The wave's stages and those the plan found up to date: its engine's broker takes
    # that answer rather than ask its pool to plan the same wave again.
    planned: tuple[tuple[str, ...], tuple[str, ...]] | None = None


def settle(
    root: Path, loading: Loading, stages: tuple[str, ...], keep_going: bool, display: str, select: str,
    glob: bool, jobs: int, out: TextIO, err: TextIO,
) -> Settled:
    """The run's exit code when it had nothing to do (and its display was shown); else
    the pipeline as loaded (`loading`, started by the caller before any thread), for the
    engine that must run it."""
    from pivot.state.lock import LockPrefetch
    from pivot.state.notices import stored_state_notices
    from pivot.state.outputs import ProjectState

    said: list[str] = []  # warnings about the stored state (a corrupt state cache...)
    with contextlib.ExitStack() as stack:
        stack.enter_context(stored_state_notices(said.append))
        project = ProjectState.open(root)
        stack.callback(project.close)
        # Read meanwhile: a plan reads every lock, and (a whole run) the files they name.
        locks = LockPrefetch(root, project.hashes if not stages else None)
        stack.callback(locks.join)  # (before the state cache it uses closes)
        return _settle(root, loading, stages, keep_going, display, select, glob, jobs, out, err,
                       project, locks, said)


def _settle(
    root: Path, loading: Loading, stages: tuple[str, ...], keep_going: bool, display: str, select: str,
    glob: bool, jobs: int, out: TextIO, err: TextIO, project: ProjectState, locks: LockPrefetch, said: list[str],
) -> Settled:
    # The broker's modules are imported while the loader runs.
    from broker.events import (
        ManifestArrived,
        Noticed,
        PoolJoined,
        Publish,
        Reply,
        RunRequested,
        SendWork,
        WavePlanned,
    )
    from broker.state import BrokerState
    from pivot.pipeline.graph import build_graph
    from pivot.protocol.codec import new_id
    from pivot.protocol.messages import PlanWave, RunReply, RunStage, WaveFinished
    try:
        manifest = loading.result()
        graph = build_graph(manifest)
    except (PipelineError, InfraError):
        return Settled()  # the engine's pool loads it again, and says what is wrong
    state = BrokerState()
    baseline = state.snapshot()
    published: list[Publish] = []
    plans: list[PlanWave] = []
    replies: list[RunReply] = []

    def feed(*events: Event) -> bool:
        """False when the state machine sent a stage to run, or refused the run (the
        engine says why: an unknown stage...)."""
        for event in events:
            for command in state.handle(event):
                match command:
                    case Publish():
                        published.append(command)
                    case SendWork(msg=RunStage()):
                        return False
                    case SendWork(msg=PlanWave() as plan):
                        plans.append(plan)
                    case Reply(msg=RunReply() as reply):
                        if not reply.accepted:
                            return False
                        replies.append(reply)
        return True

    now = time.monotonic()
    if not feed(
        PoolJoined(POOL, jobs, now, queue=jobs),
        ManifestArrived(POOL, manifest, graph),
        RunRequested(CLIENT, stages, False, keep_going, new_id(), select, glob),
    ):
        return Settled(manifest=manifest, graph=graph)
    if len(plans) != 1:
        return Settled(manifest=manifest, graph=graph)
    from pivot.state.plan import dep_producers, plan_wave

    plan = plans.pop()
    up_to_date = plan_wave(project, manifest, plan.stages, plan.upstream, dep_producers(manifest),
                           read=locks.reader(), hasher=locks.hasher(project.hashes))
    if not feed(*(Noticed(text) for text in said), WavePlanned(POOL, plan.wave, tuple(up_to_date))) or plans:
        return Settled(manifest=manifest, graph=graph, stale=len(plan.stages) - len(up_to_date),
                       planned=(tuple(plan.stages), tuple(up_to_date)))
    finished = [p.msg for p in published if isinstance(p.msg, WaveFinished)]
    if not finished:
        return Settled(manifest=manifest, graph=graph)
    for reply in replies:
        if reply.message != "queued":  # accepted, with something to know (as follow.py says it)
            print(f"pivot: {reply.message}", file=err)
    _show(published, baseline, display, out, err)
    _keep_outputs_ignored(root, manifest)
    from pivot.display.render import wave_failed

    return Settled(1 if wave_failed(finished[-1]) else 0)


def _show(published: list[Publish], baseline: object, display: str, out: TextIO, err: TextIO) -> None:
    from pivot.display.render import make_renderer, resolve_mode, say_notice
    from pivot.protocol.codec import Envelope, new_id
    from pivot.protocol.messages import Message, Notice, Snapshot

    assert isinstance(baseline, Snapshot)
    renderer = make_renderer(resolve_mode(display, out), out, err)
    try:
        renderer.baseline(baseline)
        for p in published:
            msg: Message = p.msg
            if isinstance(msg, Notice):
                say_notice(msg)
            renderer.event(Envelope(msg, new_id(), p.parent, "broker", p.seq, time.time()))
    finally:
        renderer.close(0)


def _keep_outputs_ignored(root: Path, manifest: Manifest) -> None:
    """What a pool does with every pipeline it loads (pivot/pipeline/gitignore.py): a
    read and a compare, a write only when the outputs changed (a stage removed)."""
    import logging

    from pivot.pipeline.gitignore import cached_outputs, keep_outputs_ignored

    try:
        keep_outputs_ignored(root, cached_outputs(manifest))
    except OSError as exc:
        logging.getLogger(__name__).warning("could not update %s: %s", root / ".gitignore", exc)
