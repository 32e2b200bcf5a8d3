"""Broker and pool services in this process (threads) over real ipc sockets.

User code is imported only by the pool's loader and loky worker processes, never here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from broker.service import BrokerService
from pivot.display.client import EngineClient
from pivot.launch.spawn import LoaderRun, handed_manifest
from pivot.pipeline.manifest import Manifest
from pivot.protocol.codec import Envelope
from pivot.protocol.messages import Snapshot, StageFinished, WaveFinished
from pivot.transport.rundir import Endpoints, RunDir
from pivot.transport.sockets import make_socket
from tests.procs import wait_for
from workers.pool import PoolService

pytestmark = pytest.mark.timeout(60)

PIPELINE = '''
from pivot import stage

@stage(deps=["in.txt"], outs=["mid.txt"])
def first(times: int = 2) -> None:
    print("first says hi")
    text = open("in.txt").read()
    open("mid.txt", "w").write(text * times)

@stage(deps=["mid.txt"], outs=["out.txt"])
def second() -> None:
    open("out.txt", "w").write(open("mid.txt").read().upper())
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    (tmp_path / "in.txt").write_text("abc\n")
    return tmp_path


class Engine:
    def __init__(self, root: Path, handed: Manifest | None = None, token: str = "", held: bool = True) -> None:
        """`handed`: the pool's pipeline, which it names by `token` (`pivot repro`'s
        forked pool); the broker holds it under that token if `held`."""
        self.rundir = RunDir(root)
        self.endpoints: Endpoints = self.rundir.acquire()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.broker = BrokerService(root, self.endpoints, self.ctx)
        if handed is not None and held:
            self.broker.handed[token] = (handed, None)
        self.broker.bind()
        first = handed_manifest(handed) if handed is not None else None
        self.pool = PoolService(root, self.endpoints.work, "pool-1", jobs=1, first_load=first,  # the manifest source
                                handed=token)
        self.threads = [
            threading.Thread(target=self.broker.run, daemon=True),
            threading.Thread(target=self.pool.run, daemon=True),
        ]
        self.client = EngineClient(self.ctx, self.endpoints, "test")

    def start(self) -> None:
        for t in self.threads:
            t.start()
        self.client.join(timeout=10)

    def wave(self, force: bool = False) -> list[Envelope]:
        assert self.client.run([], force, False).accepted
        seen: list[Envelope] = []
        for item in self.client.events(poll_s=0.1):
            assert not isinstance(item, Snapshot), "no gap expected on an idle machine"
            if isinstance(item, Envelope):
                seen.append(item)
                if isinstance(item.msg, WaveFinished):
                    return seen
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.client.shutdown(timeout=5)
        self.threads[1].join(10)
        self.broker.stop()
        self.threads[0].join(10)
        self.client.close()
        self.ctx.destroy(linger=0)
        self.rundir.release()
        assert not any(t.is_alive() for t in self.threads), "a service thread did not stop"


@pytest.fixture
def engine(project: Path) -> Iterator[Engine]:
    e = Engine(project)
    e.start()
    yield e
    e.close()


def outcomes(events: list[Envelope]) -> dict[str, str]:
    return {e.msg.stage: e.msg.status for e in events if isinstance(e.msg, StageFinished)}


def test_a_wave_runs_then_a_second_skips_everything(engine: Engine, project: Path) -> None:
    events = engine.wave()
    assert outcomes(events) == {"first": "ran", "second": "ran"}
    assert (project / "out.txt").read_text() == "ABC\nABC\n"
    logs = [(e.msg.stage, e.msg.line) for e in events if e.msg.TAG == "log"]
    assert ("first", "first says hi") in logs
    assert outcomes(engine.wave()) == {"first": "skipped", "second": "skipped"}
    assert outcomes(engine.wave(force=True)) == {"first": "ran", "second": "ran"}


def test_a_pool_names_the_pipeline_it_was_handed_and_the_broker_holding_it_runs_it(project: Path) -> None:
    manifest = LoaderRun(project).result()  # (a loader process: no user code here)
    e = Engine(project, manifest, token="t-1")  # the pool sends an empty manifest: only the token
    e.start()
    try:
        assert outcomes(e.wave()) == {"first": "ran", "second": "ran"}
        assert (project / "out.txt").read_text() == "ABC\nABC\n"
    finally:
        e.close()


def test_a_pipeline_named_by_a_token_the_broker_does_not_hold_is_an_unreadable_manifest(project: Path) -> None:
    manifest = LoaderRun(project).result()
    e = Engine(project, manifest, token="t-1", held=False)
    e.start()
    try:
        error = wait_for(lambda: e.client.snapshot().pipeline_error, 10, "the broker to reject the manifest")
        assert "handed in-process that this broker does not hold" in error.message
        assert not (project / "mid.txt").exists()
    finally:
        e.close()


def test_the_first_waves_plan_made_by_the_command_is_taken_without_asking_the_pool(project: Path) -> None:
    e = Engine(project)
    # What `pivot repro` planned before it started the engine: "first" up to date. It
    # never ran, so its pool's own plan would run it: a skip says whose plan was taken.
    e.broker.planned = (("first", "second"), ("first",))
    e.start()
    try:
        assert outcomes(e.wave())["first"] == "skipped"
        assert outcomes(e.wave()) == {"first": "ran", "second": "ran"}  # later waves ask the pool
    finally:
        e.close()


def test_a_plan_made_for_another_wave_is_not_taken(project: Path) -> None:
    e = Engine(project)
    e.broker.planned = (("second",), ("second",))
    e.start()
    try:
        assert outcomes(e.wave()) == {"first": "ran", "second": "ran"}
    finally:
        e.close()


def test_state_sequence_numbers_arrive_without_gaps(engine: Engine) -> None:
    events = [e for e in engine.wave() if e.msg.TAG != "log"]
    seqs = [e.seq for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_garbage_on_every_socket_is_dropped_and_the_broker_keeps_serving(engine: Engine) -> None:
    ctx = engine.ctx
    control = make_socket(ctx, zmq.DEALER)
    work = make_socket(ctx, zmq.DEALER)
    work.setsockopt(zmq.ROUTING_ID, b"intruder")
    push = make_socket(ctx, zmq.PUSH)
    try:
        control.connect(engine.endpoints.control)
        work.connect(engine.endpoints.work)
        push.connect(engine.endpoints.changes)
        control.send(b"\xc1 not msgpack")
        control.send_multipart([b"two", b"frames"])
        control.send(msgpack.packb({"v": 1, "k": "no_such_kind", "id": "x", "p": None,
                                    "s": "x", "n": 0, "t": 0.0, "b": {}}))
        work.send(b"\x00\x01garbage")
        push.send(b"garbage")
        # The broker answers a real request after the garbage: it is still serving.
        snap = engine.client.snapshot()
        assert isinstance(snap, Snapshot)
        assert outcomes(engine.wave()) == {"first": "ran", "second": "ran"}
    finally:
        for s in (control, work, push):
            s.close(linger=0)


def test_a_late_display_gets_the_finished_state_from_its_snapshot(engine: Engine) -> None:
    engine.wave()
    late = EngineClient(engine.ctx, engine.endpoints, "late")
    try:
        snap = late.join(timeout=10)
        assert snap.last_wave is not None and snap.last_wave.ran == ["first", "second"]
        assert {k: v.status for k, v in snap.stages.items()} == {"first": "ran", "second": "ran"}
    finally:
        late.close()


def test_what_a_step_sends_a_pool_is_one_message_in_order_refusals_included(project: Path) -> None:
    """A broker step's messages to a pool are held and sent as the frames of one message
    (a pool reads a frame at a time); a refusal sent during the step (a message of another
    protocol version) comes after what the step held before it, never ahead of it."""
    from broker.events import SendWork
    from pivot.protocol.codec import decode
    from pivot.protocol.messages import Refused, ResultAck

    rundir = RunDir(project)
    endpoints = rundir.acquire()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    broker = BrokerService(project, endpoints, ctx)  # bound, its loop not running
    broker.bind()
    pool = make_socket(ctx, zmq.DEALER)
    try:
        pool.setsockopt(zmq.IDENTITY, b"p1")
        pool.connect(endpoints.work)
        pool.send(b"knock")  # the ROUTER learns the identity with the first message
        assert broker.work.poll(10_000), "the pool's first message never reached the broker"
        assert broker.work.recv_multipart() == [b"p1", b"knock"]
        with broker._holding():
            broker._execute(SendWork("p1", ResultAck("a1")))
            broker._refuse(broker.work, b"p1", "version", "another version")
            broker._execute(SendWork("p1", ResultAck("a2")))
        assert pool.poll(10_000), "the step's messages never came"
        got = [decode(f).msg for f in pool.recv_multipart()]  # one message: the step's three
        assert [type(m).__name__ for m in got] == ["ResultAck", "Refused", "ResultAck"], got
        assert [m.attempt for m in got if isinstance(m, ResultAck)] == ["a1", "a2"]
        assert isinstance(got[1], Refused) and got[1].code == "version"
    finally:
        pool.close(linger=0)
        ctx.destroy(linger=0)  # the broker's sockets with it (its loop never ran)
        rundir.release()
