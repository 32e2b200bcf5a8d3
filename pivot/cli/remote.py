"""A client of a running engine: attach to it, ask it for a wave, look at its state.

The engine may be this project's (`pivot up`, found through `.pivot/run/`) or any broker
named by `--broker`; either way the client knows only the control endpoint and says
hello there first (`pivot/transport/greet.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pivot.errors import UserError

if TYPE_CHECKING:
    import zmq

    from pivot.display.client import EngineClient
    from pivot.protocol.messages import Snapshot
    from pivot.transport.greet import BrokerInfo

__all__ = ["RemoteEngine", "connect", "running_engine"]


class RemoteEngine:
    """Hello to the broker at `control`, then its event stream and control link.

    `grace_s` is what `q` / Ctrl-C give running stages when this client stops the engine
    (only `pivot up`, which owns it, does)."""

    one_shot = False  # a lost pool is replaced, or other pools take its stages

    def __init__(
        self,
        control: str,
        name: str,
        *,
        key: Path | None = None,
        broker_key: Path | None = None,
        project: str = "",
        grace_s: float = 0.0,
        timeout: float | None = None,
    ) -> None:
        import zmq

        from pivot.transport.curve import client_keys
        from pivot.transport.greet import GREET_TIMEOUT_S

        self.grace_s = grace_s
        self.control, self.name, self.project = control, name, project
        self.keys = client_keys(control, key, broker_key, default_name="operator")
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            self.client: EngineClient = self._join(GREET_TIMEOUT_S if timeout is None else timeout)
        except BaseException:
            self.ctx.destroy(linger=0)
            raise

    def _join(self, timeout: float) -> EngineClient:
        from pivot.display.client import EngineClient
        from pivot.transport.greet import greet
        from pivot.transport.rundir import Endpoints

        self.info: BrokerInfo = greet(
            self.ctx, self.control, role="cli", name=self.name, project=self.project,
            timeout=timeout, keys=self.keys,
        )
        if self.info.access in ("pool", "watcher"):
            raise UserError(
                f"this client's key is a {self.info.access} key: it may not view or run "
                "the engine; use an operator or viewer key (--key)"
            )
        endpoints = Endpoints(
            work=self.info.work, control=self.control, events=self.info.events, changes=self.info.changes
        )
        return EngineClient(self.ctx, endpoints, self.name, self.keys)

    def rejoin(self, timeout: float = 1.0) -> bool:
        """Say hello again (the broker went silent: it may have restarted, its other
        endpoints moved); True with a fresh client when a broker answered."""
        from pivot.transport.greet import NoBroker

        try:
            client = self._join(timeout)
        except NoBroker:
            return False
        self.client.close()
        self.client = client
        return True

    def __enter__(self) -> RemoteEngine:
        return self

    def __exit__(self, *_: object) -> None:
        self.client.close()
        self.ctx.destroy(linger=0)

    def check(self) -> None:
        """Raise InfraError when the engine is known to have broken (a silent broker is
        caught by the client itself: no tick for a while)."""

    def snapshot(self, timeout: float) -> Snapshot:
        """The engine's state as a joining display gets it, for a one-shot look: one
        control request (no events are followed, so no welcome is awaited), answered
        within `timeout` seconds or InfraError."""
        from pivot.protocol.messages import Snapshot, SnapshotRequest

        snap = self.client.request(SnapshotRequest(), Snapshot, timeout)
        assert isinstance(snap, Snapshot)
        return snap


def running_engine(root: Path) -> bool:
    """Whether an engine serves this project here (a one-shot `repro` engine takes no
    requests but its own and exits after its wave)."""
    from pivot.cli.target import local_control

    return local_control(root) is not None


def connect(
    root: Path | None,
    name: str,
    broker: str | None,
    key: Path | None,
    broker_key: Path | None,
    *,
    required: bool = True,
    timeout: float | None = None,
    one_shot: bool = False,
) -> RemoteEngine | None:
    """The engine `--broker` / PIVOT_BROKER names, else this project's running engine
    (with `one_shot`, also a running `pivot repro`'s: to view it); None (or a UserError
    when `required`) when there is none."""
    from pivot.cli.target import keys_from, resolve

    control = resolve(broker, root, one_shot=one_shot)
    if control is None:
        if not required:
            return None
        where = f" for {root}" if root is not None else ""
        raise UserError(f"no Pivot engine is running{where}; start one with `pivot up`, or name one with --broker")
    key, broker_key = keys_from(key, broker_key)
    project = ""
    import os

    if root is not None and not (broker or os.environ.get("PIVOT_BROKER")):
        from pivot.pipeline.project import project_id

        project = project_id(root)
    return RemoteEngine(control, name, key=key, broker_key=broker_key, project=project, timeout=timeout)
