"""Joining an engine another command started (`pivot up`): attach, ask it for a wave, or
look at its state (`pivot status`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pivot.errors import UserError

if TYPE_CHECKING:
    import zmq

    from pivot.display.client import EngineClient
    from pivot.protocol.messages import Snapshot

__all__ = ["RemoteEngine", "running_engine"]


class RemoteEngine:
    """A client of a running engine, shaped like `Stack` for `follow.py`: the processes
    belong to the engine's own `pivot up`, which supervises them."""

    pool = None
    grace_s = 0.0  # stopping a remote engine is its own `pivot up`'s business
    pool_log = Path(".pivot/logs/pool.log")
    watcher_log = Path(".pivot/logs/watcher.log")

    def __init__(self, root: Path, name: str) -> None:
        import zmq

        from pivot.display.client import EngineClient
        from pivot.transport.rundir import read_endpoints

        endpoints = read_endpoints(root)
        if endpoints is None:
            raise UserError(f"no Pivot engine is running for {root}; start one with `pivot up`")
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.client: EngineClient | None = EngineClient(self.ctx, endpoints, name)

    def __enter__(self) -> RemoteEngine:
        return self

    def __exit__(self, *_: object) -> None:
        if self.client is not None:
            self.client.close()
        self.ctx.destroy(linger=0)

    def snapshot(self, timeout: float) -> Snapshot:
        """The engine's state as a joining display gets it, for a one-shot look: one
        control request (no events are followed, so no welcome is awaited), answered
        within `timeout` seconds or InfraError."""
        from pivot.protocol.messages import Snapshot, SnapshotRequest

        assert self.client is not None
        snap = self.client.request(SnapshotRequest(), Snapshot, timeout)
        assert isinstance(snap, Snapshot)
        return snap

    def pool_exit(self) -> int | None:
        return None

    def watcher_exit(self) -> int | None:
        return None

    def broker_alive(self) -> bool:
        return True  # a silent broker is detected by the client (no tick for a while)

    def pool_log_tail(self) -> str:
        return ""

    def kill_lost_pool(self) -> None:
        pass  # the engine's own `pivot up` does that

    def restart_pool(self) -> None:  # never called: pool_exit() is always None here
        raise AssertionError("an attached view does not supervise")

    restart_watcher = restart_pool


def running_engine(root: Path) -> bool:
    """Whether a `pivot up` serves this project (a one-shot `repro` engine takes no
    requests but its own and exits after its wave)."""
    from pivot.transport.rundir import engine_mode, engine_running, read_endpoints

    return engine_running(root) and engine_mode(root) == "up" and read_endpoints(root) is not None
