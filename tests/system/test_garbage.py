"""Garbage on the engine's sockets must be dropped, never break a run.

While a `pivot repro` is held inside a stage, raw ZeroMQ peers connect to the
endpoints in `.pivot/run/endpoints.json` and send junk: random bytes, wrong frame
counts, well-formed msgpack of an unknown kind, messages from a pool that never said
hello, an oversized message. The run must still finish normally.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import msgpack
import pytest
import zmq
from procs import (
    HELD_PIPELINE,
    ProcGuard,
    describe,
    finished,
    held_stage_pid,
    one,
    parse_events,
    release_held_stage,
    run_dir_leftovers,
    run_pivot,
    wait_exit,
    wait_for,
    write_files,
)

from pivot.protocol.codec import decode, encode
from pivot.protocol.messages import Heartbeat, Snapshot, SnapshotRequest, StageResult

pytestmark = pytest.mark.timeout(60)

ENDPOINT_KEYS = {"work", "control", "events", "changes", "mode", "pid"}
OVERSIZED = 16 * 1024 * 1024 + 1024  # over the receivers' MAXMSGSIZE


def envelope(kind: str, body: dict[str, object]) -> bytes:
    """A well-formed msgpack envelope (docs/protocol.md) with any kind and body."""
    return msgpack.packb(
        {"v": 1, "k": kind, "id": "0-0-1", "p": None, "s": "garbage", "n": 0,
         "t": time.time(), "b": body},
        use_bin_type=True,
    )




def dealer(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, identity: bytes | None = None) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 2000)
    if identity is not None:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.connect(endpoint)
    return sock


@pytest.mark.timeout(45)
def test_garbage_on_every_socket_does_not_break_the_run(
    tmp_path: Path, proc_guard: ProcGuard, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    root = write_files(tmp_path / "held", {"pipeline.py": HELD_PIPELINE})
    cli = proc_guard.start(root, "repro", "--json")
    sockets: list[zmq.Socket[bytes]] = []
    try:
        held_stage_pid(root)
        endpoints = json.loads((root / ".pivot" / "run" / "endpoints.json").read_text())
        assert set(endpoints) == ENDPOINT_KEYS, endpoints
        assert endpoints.pop("mode") == "repro", endpoints
        assert endpoints.pop("pid") == cli.pid, endpoints  # the broker runs in the CLI
        assert all(str(v).startswith("ipc://") for v in endpoints.values()), endpoints

        control = dealer(zctx, endpoints["control"])
        work = dealer(zctx, endpoints["work"], identity=b"garbage-pool")
        oversized = dealer(zctx, endpoints["control"])
        changes = zctx.socket(zmq.PUSH)
        changes.setsockopt(zmq.LINGER, 0)
        changes.setsockopt(zmq.SNDTIMEO, 2000)
        changes.connect(endpoints["changes"])
        sub = zctx.socket(zmq.XSUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(endpoints["events"])
        sockets += [control, work, oversized, changes, sub]

        junk = os.urandom(256)
        # control link (client DEALER -> broker ROUTER)
        control.send(junk)
        control.send(b"")
        control.send_multipart([b"one", b"two", b"three"])
        control.send(envelope("no_such_kind", {}))
        control.send(envelope("run_request", {"stages": "not a list", "force": 1, "keep_going": None}))
        control.send(msgpack.packb([1, 2, 3]))
        control.send(encode(SnapshotRequest(), sender="garbage") + b"trailing")
        oversized.send(b"\0" * OVERSIZED)
        # work link (pool DEALER -> broker ROUTER), from a pool that never said hello
        work.send(junk)
        work.send_multipart([b"a", b"b", b"c"])
        work.send(envelope("no_such_kind", {"pool": "garbage-pool"}))
        work.send(encode(Heartbeat("garbage-pool"), sender="garbage-pool"))
        work.send(encode(
            StageResult("w1-1", "held", "ran", "never_ran", "forged", 0.0, None, []),
            sender="garbage-pool",
        ))
        # changes (PULL) and events (XPUB): junk and odd subscription frames
        changes.send(junk)
        changes.send_multipart([b"x", b"y"])
        sub.send(b"\x01")
        sub.send(b"\x00unsubscribe-from-nothing")
        sub.send(b"\x07odd")

        # The broker still answers a valid request on the same control socket.
        control.send(encode(SnapshotRequest(), sender="garbage"))
        snap = None
        deadline = time.monotonic() + 10
        while snap is None and (left := deadline - time.monotonic()) > 0:
            if not control.poll(int(left * 1000) + 1):
                break
            env = decode(control.recv())
            if isinstance(env.msg, Snapshot):
                snap = env.msg
        assert snap is not None, "the broker did not answer a snapshot request after the garbage"
        # Every bad message was counted as dropped: 7 on control, 7 on work (the junk, the
        # three frames of one message, each a message on this link, the unknown kind, and 2
        # from a pool that never said hello), 2 on changes, 1 on events (a frame that is no
        # subscription). The oversized one never reaches the broker: libzmq drops it with
        # its connection.
        def dropped() -> int:
            ps = run_pivot(root, "ps", "--broker", endpoints["control"], "--json")
            assert ps.returncode == 0, describe(ps)
            [broker] = [p for p in json.loads(ps.stdout)["processes"] if p["role"] == "broker"]
            return int(broker["dropped"])

        # The other sockets' messages may be read after the snapshot request's answer.
        wait_for(lambda: dropped() >= 17, 10, "the broker to count the bad messages")
        assert dropped() == 17
        assert snap.stages["held"].status == "running", snap.stages
        assert cli.poll() is None, "the CLI exited while the stage was held"
    finally:
        for sock in sockets:
            sock.close(linger=0)
        release_held_stage(root)

    rc, out, err = wait_exit(cli, 30, "the held run after the garbage")
    assert rc == 0, describe((rc, out, err))
    events = parse_events(out)
    assert {n: e["status"] for n, e in finished(events).items()} == {"held": "ran", "after": "ran"}
    wave = one(events, "wave_finished")
    assert wave["ran"] == ["held", "after"], wave
    assert wave["failed"] == wave["blocked"] == wave["cancelled"] == wave["lost"] == []
    assert one(events, "wave_started")["stages"] == ["held", "after"]
    assert (root / "after.txt").read_text() == "HELD\n"
    assert run_dir_leftovers(root) == []


FLOOD = 500


@pytest.mark.timeout(45)
def test_a_flood_of_garbage_does_not_flood_the_terminal(
    tmp_path: Path, proc_guard: ProcGuard, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """`pivot repro` runs its broker in-process, so the broker's warnings about dropped
    messages go to the user's terminal: a peer sending hundreds of bad frames must leave
    a few lines there (pivot/launch/stderrlog.py), while each one is still counted."""
    root = write_files(tmp_path / "held", {"pipeline.py": HELD_PIPELINE})
    cli = proc_guard.start(root, "repro", "--json")
    try:
        held_stage_pid(root)
        endpoints = json.loads((root / ".pivot" / "run" / "endpoints.json").read_text())
        work = dealer(zctx, endpoints["work"], identity=b"garbage-pool")
        try:
            for i in range(FLOOD):
                work.send(b"garbage %d" % i)

            def dropped() -> int:
                ps = run_pivot(root, "ps", "--broker", endpoints["control"], "--json")
                assert ps.returncode == 0, describe(ps)
                [broker] = [p for p in json.loads(ps.stdout)["processes"] if p["role"] == "broker"]
                return int(broker["dropped"])

            wait_for(lambda: dropped() >= FLOOD, 10, "the broker to count the flood")
            assert dropped() == FLOOD
        finally:
            work.close(linger=0)
    finally:
        release_held_stage(root)
    rc, out, err = wait_exit(cli, 30, "the held run after the flood")
    assert rc == 0, describe((rc, out, err))
    said = [line for line in err.splitlines() if "dropped a malformed message" in line]
    assert 1 <= len(said) <= 5, err
