"""Following one wave on the event bus until it ends: the exit code of `repro`.

Imported only once the pool is starting (see `repro_cmd`): the display and protocol
modules it needs take tens of milliseconds to import, which then overlap the pool's
own start-up instead of delaying it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pivot.cli.keypress import KeyReader
from pivot.cli.remote import RemoteEngine
from pivot.display.client import BrokerSilent
from pivot.display.render import (
    Renderer,
    make_renderer,
    resolve_mode,
    say_notice,
    show_engine_start,
    wave_failed,
)
from pivot.errors import InfraError, UserError
from pivot.launch.limits import HARD_KILL_S
from pivot.protocol.codec import Envelope
from pivot.protocol.messages import (
    EngineStopped,
    Notice,
    Paused,
    PauseRequest,
    PipelineInvalid,
    PoolLost,
    Resumed,
    RunReply,
    RunRequest,
    ShutdownReply,
    ShutdownRequest,
    Snapshot,
    WaveFinished,
    WaveStarted,
)

if TYPE_CHECKING:
    from pivot.cli.stack import Stack
    from pivot.display.client import EngineClient

    Engine = Stack | RemoteEngine

__all__ = ["run_wave"]

ENGINE_CHECK_S = 0.05  # a dead pool or broker thread is noticed within this during a wave


@dataclass
class Outcome:
    code: int | None = None  # set when the run is over
    wave: int | None = None  # our wave, once seen
    history: int = 0  # waves that finished before we joined are not ours
    # The in-process engine of `repro` has one pool and nobody to replace it: losing it
    # ends the run. A running engine supervises its pools, or others take the stages.
    ends_on_pool_loss: bool = False


def run_wave(
    stack: Engine, stages: tuple[str, ...], force: bool, keep_going: bool, display: str,
    select: str = "upstream", glob: bool = False,
) -> int:
    """Ask the engine for one wave of `stages` (as `select` and `glob` say: pivot/pipeline/
    select.py), show it with the `display` mode, return the exit code."""
    renderer = make_renderer(resolve_mode(display, sys.stdout), sys.stdout, sys.stderr)
    outcome = Outcome(ends_on_pool_loss=stack.one_shot)
    dropped = 0
    try:
        assert stack.client is not None
        client = stack.client
        joined = client.join()
        outcome.history = joined.wave
        if joined.pipeline_error is not None:
            # The pipeline failed to load before we joined (the engine's pool loads it as
            # it starts): no event will say so again, and no run can be made of it. The
            # error alone: the engine's last wave is not this command's (a resync showed
            # it, as if it had just run).
            show_engine_start(renderer, joined)
            outcome.code = 2
        else:
            renderer.baseline(joined)
            # Answered once the broker can check stage names against a manifest.
            client.send(RunRequest(list(stages), force, keep_going, select, glob))
            _follow(stack, renderer, outcome)
        dropped = client.dropped_logs
    finally:
        renderer.close(dropped)
    assert outcome.code is not None
    return outcome.code


def _run_answered(client: EngineClient) -> bool:
    """Whether the answer to our run request has arrived (never blocks). A refusal (an
    unknown stage, an engine shutting down) is the user's error."""
    reply = client.take_reply(RunReply)
    if reply is None:
        return False
    assert isinstance(reply, RunReply)
    if not reply.accepted:
        raise UserError(reply.message)
    if reply.message != "queued":  # accepted, with something to know
        print(f"pivot: {reply.message}", file=sys.stderr)
    return True


def _follow(stack: Engine, r: Renderer, outcome: Outcome) -> None:
    assert stack.client is not None
    answered = False
    next_check = 0.0
    for item in stack.client.events(poll_s=0.1):
        if not answered:
            answered = _run_answered(stack.client)
        if isinstance(item, Snapshot):
            r.resync(item)
            _say_missed(stack.client)
            _from_snapshot(item, outcome)
        elif isinstance(item, Envelope):
            if isinstance(item.msg, Notice):
                say_notice(item.msg)
            r.event(item)
            _from_event(item, outcome)
        else:
            r.idle()
        if outcome.code is not None:
            return
        # At every idle poll and at most every ENGINE_CHECK_S between events, which come
        # by the thousand in a wave: a check reaps the pool (a syscall, a thread lookup).
        now = time.monotonic()
        if item is None or now >= next_check:
            next_check = now + ENGINE_CHECK_S
            stack.check()


def _say_missed(client: EngineClient) -> None:
    """After a resync: how many events this display lost while it was behind (stopped
    with SIGSTOP or Ctrl-Z, or too slow: the broker's queue for it overflowed)."""
    missed = client.take_missed()
    if missed:
        events = "event" if missed == 1 else "events"
        print(
            f"pivot: this display fell behind and missed {missed} {events}; "
            "caught up from a snapshot of the engine's state",
            file=sys.stderr, flush=True,
        )


def _from_event(env: Envelope, outcome: Outcome) -> None:
    msg = env.msg
    if isinstance(msg, WaveStarted) and outcome.wave is None:
        outcome.wave = msg.wave
    elif isinstance(msg, WaveFinished) and msg.wave == outcome.wave:
        outcome.code = 1 if wave_failed(msg) else 0
    elif isinstance(msg, PipelineInvalid):
        outcome.code = 2
    elif isinstance(msg, PoolLost) and outcome.ends_on_pool_loss:
        outcome.code = 1
    elif isinstance(msg, EngineStopped):
        if msg.reason:
            raise InfraError(msg.reason)
        raise InfraError("the engine was stopped before the run finished (`pivot down`?)")


def _from_snapshot(snap: Snapshot, outcome: Outcome) -> None:
    if snap.pipeline_error is not None:
        outcome.code = 2
        return
    last = snap.last_wave
    if last is None or last.wave <= outcome.history or snap.wave_running:
        return
    if outcome.wave in (None, last.wave):
        outcome.code = 1 if wave_failed(last) else 0


def run_live(
    stack: Engine, stages: tuple[str, ...] | None, force: bool, keep_going: bool, display: str
) -> int:
    """`pivot up`: the first wave (the stale stages), then every wave changes cause, shown
    with `display`, until q, Ctrl-C or SIGTERM (exit 0). A broken pipeline is shown and the
    engine waits for a fix. With `stages` None (`pivot attach`) no wave is asked for, and
    stopping only detaches."""
    import signal
    import threading

    owner = stages is not None
    stops = StopRequests(owner)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stops.add())
        if stages is not None:  # the terminal of `pivot up` closed: stop the engine
            signal.signal(signal.SIGHUP, lambda *_: stops.add())
    renderer = make_renderer(resolve_mode(display, sys.stdout), sys.stdout, sys.stderr)
    if hasattr(renderer, "keys_hint") and sys.stdin.isatty():
        renderer.keys_hint = "q quit · f force · p pause"
    dropped = 0
    assert stack.client is not None
    client = stack.client
    paused = False
    try:
        joined = client.join()
        if stages is None:  # attaching: show the engine's state as it is now
            renderer.resync(joined)
        else:
            show_engine_start(renderer, joined)
            client.send(RunRequest(list(stages), force, keep_going))
        answered = stages is None
        with KeyReader() as keys:
            events = client.events(poll_s=0.1)
            while True:
                try:
                    item = next(events)
                    if not stops.asked and not answered:
                        answered = _run_answered(client)
                    if isinstance(item, Snapshot):
                        paused = item.paused
                        renderer.resync(item)
                        _say_missed(client)
                    elif isinstance(item, Envelope):
                        if isinstance(item.msg, (Paused, Resumed)):
                            paused = isinstance(item.msg, Paused)
                        elif isinstance(item.msg, Notice):
                            say_notice(item.msg)
                        renderer.event(item)
                        if isinstance(item.msg, EngineStopped):
                            if item.msg.reason:
                                raise InfraError(item.msg.reason)
                            if not owner:
                                return 0  # the engine we were attached to has stopped
                            if not stops.asked:
                                print("pivot: the engine was stopped (`pivot down`)", file=sys.stderr)
                                return 0
                    else:
                        renderer.idle()
                    for key in keys.pressed():
                        if key == "q":
                            stops.add()
                        elif key == "f" and not stops.asked:  # every (live) stage runs again
                            client.send(RunRequest(list(stages or ()), True, keep_going))
                        elif key == "p" and not stops.asked:
                            client.send(PauseRequest(not paused))
                    # Read once: a SIGTERM's handler may run between two reads, and a
                    # view that saw none then one would go on to stop the engine.
                    asked = stops.asked
                    if asked and not owner:
                        return 0  # detaching never affects the run
                    if not asked:
                        if answered:
                            client.take_reply(RunReply)  # answers to keys: nothing to show
                        stack.check()
                    elif stops.done(stack):  # after showing `item`: it may be the last one
                        return 0
                except KeyboardInterrupt:
                    stops.add()
                    if not owner:
                        return 0
                    # The interrupt may have ended the generator inside its poll; the
                    # client keeps its sequence numbers, so a new one carries on.
                    events = client.events(poll_s=0.1)
                except BrokerSilent:
                    # An attached view outlives its broker: it waits for one to answer
                    # at the same endpoint (a restarted broker) and starts over from its
                    # state (a new broker numbers its events and waves anew).
                    if owner or not isinstance(stack, RemoteEngine):
                        raise
                    if not _wait_for_broker(stack, keys):
                        return 0  # the user stopped waiting
                    renderer.close(client.dropped_logs)
                    client = stack.client
                    renderer = make_renderer(resolve_mode(display, sys.stdout), sys.stdout, sys.stderr)
                    renderer.resync(client.join())
                    events = client.events(poll_s=0.1)
    finally:
        dropped = client.dropped_logs
        renderer.close(dropped)


def _wait_for_broker(engine: RemoteEngine, keys: KeyReader) -> bool:
    """Say hello until a broker answers (True) or the user quits (q, Ctrl-C: False)."""
    print(
        f"pivot: the broker at {engine.control} went silent; waiting for it to come back "
        "(q or Ctrl-C to stop)",
        file=sys.stderr, flush=True,
    )
    try:
        while "q" not in keys.pressed():
            if engine.rejoin(timeout=1.0):
                print(f"pivot: broker {engine.info.broker} answered; following it", file=sys.stderr, flush=True)
                return True
    except KeyboardInterrupt:
        pass
    return False


class StopRequests:
    """q, Ctrl-C and SIGTERM. The first asks the broker to stop (running stages get the
    grace period, and the display shows how they end); another one cancels them now."""

    NOTICE_AFTER_S = 0.3  # an idle engine stops at once: no notice then
    SHOW_WITHIN_S = 1.0  # the last events are on their way when the reply comes
    # After the grace period: the broker cancels, waits up to HARD_KILL_S + 2 s, answers.
    ANSWER_WITHIN_S = HARD_KILL_S + 5.0

    def __init__(self, owner: bool) -> None:
        self.owner = owner  # only the `pivot up` that started the engine stops it
        self.count = 0
        self.sent = 0
        self.sent_at = 0.0
        self.noticed = False
        self.reply: ShutdownReply | None = None
        self.reply_at = 0.0

    @property
    def asked(self) -> bool:
        return self.count > 0

    def add(self) -> None:
        self.count += 1

    def done(self, stack: Engine) -> bool:
        """Send what was asked; whether the broker has stopped everything and the display
        has shown the events up to then (how the running stages ended)."""
        assert stack.client is not None
        if not self.owner:
            return True  # a view only detaches
        grace = stack.grace_s
        if self.sent < self.count:
            stack.client.send(ShutdownRequest(grace if self.count == 1 else 0.0))
            if self.sent == 0:
                self.sent_at = time.monotonic()
            self.sent = self.count
        if self.reply is None:
            reply = stack.client.take_reply(ShutdownReply)
            if isinstance(reply, ShutdownReply):
                self.reply, self.reply_at = reply, time.monotonic()
        if self.reply is not None:
            shown = stack.client.last_seq >= self.reply.seq
            return shown or time.monotonic() - self.reply_at > self.SHOW_WITHIN_S
        if time.monotonic() - self.sent_at > grace + self.ANSWER_WITHIN_S:
            # A broker that does not answer is not waited for: the stack's clean-up
            # stops every process anyway.
            print("pivot: the engine did not confirm the stop; stopping its processes", file=sys.stderr)
            return True
        if not self.noticed and self.count == 1 and time.monotonic() - self.sent_at > self.NOTICE_AFTER_S:
            self.noticed = True
            print(
                f"pivot: stopping: running stages get up to {grace:g} s to finish "
                "(Ctrl-C to cancel them now)",
                file=sys.stderr,
            )
        return False
