"""A view's stop requests (`pivot attach` on q, Ctrl-C, SIGTERM) against a real broker
in this process over ipc: a view only detaches, whatever the timing of its signal; the
`pivot up` that owns the engine stops it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from broker.service import BrokerService
from pivot.cli.follow import StopRequests
from pivot.cli.remote import RemoteEngine
from pivot.transport.rundir import RunDir

pytestmark = pytest.mark.timeout(60)


class Broker:
    def __init__(self, root: Path) -> None:
        self.rundir = RunDir(root)
        endpoints = self.rundir.acquire()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.service = BrokerService(root, endpoints, self.ctx)
        self.service.bind()
        self.control = endpoints.control
        self.thread = threading.Thread(target=self.service.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.service.stop()
        self.thread.join(10)
        self.ctx.destroy(linger=0)
        self.rundir.release()
        assert not self.thread.is_alive(), "the broker thread did not stop"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    (tmp_path / "pipeline.py").write_text("")
    b = Broker(tmp_path)
    yield b
    b.close()


def asked_to_stop(broker: Broker, engine: RemoteEngine, owner: bool) -> bool:
    """Whether the broker is stopping once it has read what `done` sent (a snapshot
    request after it, on the same socket, comes back after)."""
    stops = StopRequests(owner)
    stops.add()  # as the SIGTERM handler does, at any point of the view's loop
    stops.done(engine)
    engine.snapshot(timeout=10)
    return broker.service.state.stopping


def test_a_view_that_is_asked_to_stop_only_detaches(broker: Broker) -> None:
    with RemoteEngine(broker.control, "attach") as engine:
        assert asked_to_stop(broker, engine, owner=False) is False
        assert StopRequests(False).done(engine) is True  # nothing to wait for


def test_the_owner_that_is_asked_to_stop_stops_the_engine(broker: Broker) -> None:
    with RemoteEngine(broker.control, "up") as engine:
        assert asked_to_stop(broker, engine, owner=True) is True
