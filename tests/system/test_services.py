"""Every role as a process of its own, over real tcp on loopback: `pivot broker`,
`pivot workers`, `pivot ping`, `pivot ps`, `pivot repro --broker`, and what goes wrong:
a broker that is not there, a port in use, another project, another protocol version,
a bind off loopback without keys, garbage on every socket.

The broker binds port 0 (free ports) and announces what it bound at hello, so tests
never race for ports; they read the control endpoint from the broker's endpoints.json.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from procs import (
    Broker,
    ProcGuard,
    describe,
    finished,
    parse_events,
    proc_info,
    run_pivot,
    start_pivot,
    start_pool,
    wait_exit,
    wait_for,
    write_files,
)

from pivot.protocol.codec import PROTOCOL_VERSION, decode, encode
from pivot.protocol.messages import Hello, PoolHello, Refused, StageResult

pytestmark = pytest.mark.timeout(60)

WAIT_S = 20.0

# Two stages that can only finish when both run at once: each marks itself started,
# then waits (with its own deadline) for the other's mark. One slot in each of two
# pools is enough; one pool of one slot is not.
PAIR_PIPELINE = '''\
import os
import time

from pivot import stage


def meet(me: str, other: str) -> None:
    with open(f"{me}.pid", "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + 20
    while not os.path.exists(f"{other}.pid"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{other} never started beside {me}")
        time.sleep(0.01)
    with open(f"{me}.txt", "w") as f:
        f.write(me)


@stage(outs=["a.txt"])
def a() -> None:
    meet("a", "b")


@stage(outs=["b.txt"])
def b() -> None:
    meet("b", "a")
'''


def ps(root: Path, control: str) -> list[dict[str, Any]]:
    result = run_pivot(root, "ps", "--broker", control, "--json")
    assert result.returncode == 0, describe(result)
    rows: list[dict[str, Any]] = json.loads(result.stdout)["processes"]
    return rows


def pool_of(pid: int, pools: dict[int, str]) -> str:
    """The pool (by name) whose process is an ancestor of `pid` (a stage's worker)."""
    seen = pid
    for _ in range(10):
        if seen in pools:
            return pools[seen]
        info = proc_info(seen)
        assert info is not None, f"process {seen} is gone"
        seen = info.ppid
    raise AssertionError(f"process {pid} descends from none of the pools {pools}")


def test_pools_on_their_own_join_a_tcp_broker_and_share_a_wave(
    tmp_path: Path, proc_guard: ProcGuard, start_broker: Callable[..., Broker]
) -> None:
    root = write_files(tmp_path / "proj", {"pipeline.py": PAIR_PIPELINE})
    broker = start_broker(root, "--bind", "tcp://127.0.0.1:0")
    control = broker.wait_bound()
    assert control.startswith("tcp://127.0.0.1:") and not control.endswith(":0"), control

    ping = run_pivot(root, "ping", "--broker", control)
    assert ping.returncode == 0 and "answered" in ping.stdout, describe(ping)

    pools = {start_pool(proc_guard, root, control, name, "-j", "1").pid: name for name in ("p1", "p2")}
    wait_for(lambda: len([r for r in ps(root, control) if r["role"] == "pool"]) == 2, WAIT_S, "both pools in ps")
    rows = ps(root, control)
    assert [r["role"] for r in rows].count("broker") == 1, rows
    assert {r["name"]: (r["slots"], r["pid"]) for r in rows if r["role"] == "pool"} == {
        name: (1, pid) for pid, name in pools.items()
    }, rows

    result = run_pivot(root, "repro", "--broker", control, "--json", timeout=WAIT_S + 10)
    assert result.returncode == 0, describe(result)
    done = finished(parse_events(result.stdout))
    assert {s: e["status"] for s, e in done.items()} == {"a": "ran", "b": "ran"}
    # Each stage ran in a worker of a different pool: the wave used both pools' slots.
    ran_in = {pool_of(int((root / f"{s}.pid").read_text()), pools) for s in ("a", "b")}
    assert ran_in == {"p1", "p2"}, ran_in

    rc, _, err = broker.stop()
    assert rc == 0, err
    for pid in pools:  # the pools were told the engine stopped
        proc = next(p for p in proc_guard.popens if p.pid == pid)
        rc, _, err = wait_exit(proc, 10, f"pool {pools[pid]}")
        assert rc == 0, err
    assert not (root / ".pivot" / "run" / "endpoints.json").exists()


def test_a_broker_that_is_not_there_is_reported_after_a_bounded_wait(tmp_path: Path, proc_guard: ProcGuard) -> None:
    root = write_files(tmp_path / "proj", {"pipeline.py": PAIR_PIPELINE})
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    # Side by side: each waits out its own bound.
    attach = proc_guard.track(start_pivot(root, "attach", "--broker", endpoint))
    pool = start_pool(proc_guard, root, endpoint, "lonely", "--broker-timeout", "1")
    watcher = proc_guard.track(start_pivot(root, "watcher", "--broker", endpoint, "--broker-timeout", "1"))
    ping = run_pivot(root, "ping", "--broker", endpoint, "--timeout", "0.5")
    assert ping.returncode == 1, describe(ping)
    assert f"no Pivot broker answered at {endpoint}" in ping.stderr, describe(ping)
    assert "Traceback" not in ping.stderr
    rc, out, err = wait_exit(attach, 30, "an attach whose broker never answers")
    assert rc == 1 and "no Pivot broker answered" in err, describe((rc, out, err))
    rc, out, err = wait_exit(pool, 15, "a pool whose broker never answers")
    assert rc == 3, describe((rc, out, err))
    said = [line for line in err.splitlines() if "no broker answered" in line]
    assert len(said) == 1 and said[0].startswith(f"error: no broker answered at {endpoint}"), err
    rc, out, err = wait_exit(watcher, 15, "a watcher whose broker never answers")
    assert rc == 3, describe((rc, out, err))
    said = [line for line in err.splitlines() if "no broker answered" in line]
    assert len(said) == 1 and said[0].startswith(f"error: no broker answered at {endpoint}"), err


def test_a_port_in_use_is_refused_with_a_message(
    tmp_path: Path, start_broker: Callable[..., Broker]
) -> None:
    root = write_files(tmp_path / "proj", {"pipeline.py": PAIR_PIPELINE})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        broker = start_broker(root, "--bind", f"tcp://127.0.0.1:{port}")
        rc, out, err = wait_exit(broker.proc, 15, "a broker on a port in use")
    assert rc == 2, describe((rc, out, err))
    assert f"cannot bind tcp://127.0.0.1:{port}" in err and "in use" in err, err
    assert "Traceback" not in err


def test_binding_off_loopback_without_keys_is_refused(
    tmp_path: Path, start_broker: Callable[..., Broker]
) -> None:
    root = write_files(tmp_path / "proj", {"pipeline.py": PAIR_PIPELINE})
    env = {**os.environ, "PIVOT_KEYS_DIR": str(tmp_path / "no-keys")}
    broker = start_broker(root, "--bind", "tcp://0.0.0.0:0", env=env)
    rc, out, err = wait_exit(broker.proc, 15, "a broker binding 0.0.0.0 without keys")
    assert rc == 2, describe((rc, out, err))
    assert "without CURVE keys" in err and "pivot keys init" in err, err
    assert not (tmp_path / "no-keys").exists()


def test_a_pool_of_another_project_is_refused(
    tmp_path: Path, proc_guard: ProcGuard, start_broker: Callable[..., Broker]
) -> None:
    root = write_files(tmp_path / "proj", {"pipeline.py": PAIR_PIPELINE})
    other = write_files(tmp_path / "other", {"pipeline.py": PAIR_PIPELINE})
    control = start_broker(root, "--bind", "tcp://127.0.0.1:0").wait_bound()
    pool = start_pool(proc_guard, other, control, "stranger")
    rc, out, err = wait_exit(pool, 15, "a pool of another project")
    assert rc == 2, describe((rc, out, err))
    assert "sees another project" in err and "shared file system" in err, err
    assert not [r for r in ps(root, control) if r["role"] == "pool"]
    log = (root / ".pivot" / "logs" / "broker.jsonl").read_text()
    assert "refused hello" in log and "stranger" in log, log


def _request(control: str, frames: list[bytes], timeout_ms: int = 5000) -> bytes | None:
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(control)
        sock.send_multipart(frames)
        return sock.recv() if sock.poll(timeout_ms) else None
    finally:
        ctx.destroy(linger=0)


def test_a_peer_of_another_protocol_version_is_refused_naming_both(
    tmp_path: Path, start_broker: Callable[..., Broker]
) -> None:
    root = write_files(tmp_path / "proj", {"pipeline.py": PAIR_PIPELINE})
    broker = start_broker(root, "--bind", "tcp://127.0.0.1:0")
    control = broker.wait_bound()
    wire = msgpack.unpackb(encode(Hello("pool", "from-the-future", 1, "h", ""), sender="from-the-future"))
    wire["v"] = PROTOCOL_VERSION + 1
    answer = _request(control, [msgpack.packb(wire)])
    assert answer is not None, "no answer to a hello of another version"
    refused = decode(answer).msg
    assert isinstance(refused, Refused) and refused.code == "version", refused
    assert str(PROTOCOL_VERSION + 1) in refused.reason and str(PROTOCOL_VERSION) in refused.reason
    log = (root / ".pivot" / "logs" / "broker.jsonl").read_text()
    assert f"speaks protocol version {PROTOCOL_VERSION + 1}, this broker speaks {PROTOCOL_VERSION}" in log


def test_a_client_refused_for_its_version_says_which_versions(tmp_path: Path) -> None:
    """The client's side: a broker (here a stand-in on a real socket) of another version
    answers `refused`; `pivot ping` exits 2 naming both versions."""
    root = write_files(tmp_path / "proj", {"pipeline.py": PAIR_PIPELINE})
    ctx = zmq.Context()
    try:
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        pinger = start_pivot(root, "ping", "--broker", f"tcp://127.0.0.1:{port}")
        assert router.poll(WAIT_S * 1000), "no hello from pivot ping"
        peer, _ = router.recv_multipart()
        wire = msgpack.unpackb(encode(Refused("version", "not mine", PROTOCOL_VERSION + 7), sender="broker"))
        wire["v"] = PROTOCOL_VERSION + 7
        router.send_multipart([peer, msgpack.packb(wire)])
        rc, out, err = wait_exit(pinger, 15, "pivot ping")
    finally:
        ctx.destroy(linger=0)
    assert rc == 2, describe((rc, out, err))
    assert f"protocol version {PROTOCOL_VERSION + 7}" in err and f"this Pivot speaks {PROTOCOL_VERSION}" in err, err


def test_garbage_and_wrongly_typed_messages_on_every_socket_leave_the_broker_serving(
    tmp_path: Path, proc_guard: ProcGuard, start_broker: Callable[..., Broker]
) -> None:
    root = write_files(tmp_path / "proj", {"pipeline.py": PAIR_PIPELINE})
    broker = start_broker(root, "--bind", "tcp://127.0.0.1:0")
    control = broker.wait_bound()
    info = json.loads((root / ".pivot" / "run" / "endpoints.json").read_text())
    ctx = zmq.Context()
    try:
        junk = [b"", b"\xff" * 64, b"\x00garbage", msgpack.packb([1, 2, 3]), msgpack.packb({"v": PROTOCOL_VERSION})]
        for link, kind in (("control", zmq.DEALER), ("work", zmq.DEALER), ("changes", zmq.PUSH), ("events", zmq.XSUB)):
            sock = ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 1000)
            sock.connect(info[link])
            for payload in junk:
                sock.send_multipart([payload])
                sock.send_multipart([payload, payload])
            sock.close()
        # A pool that said hello, then a well-formed stage_result whose log pair is
        # empty: that shape used to pass the codec and crash the broker's loop.
        pool = ctx.socket(zmq.DEALER)
        pool.setsockopt(zmq.LINGER, 1000)
        pool.setsockopt(zmq.ROUTING_ID, b"fake")
        pool.connect(info["work"])
        pool.send(encode(PoolHello("fake", os.getpid(), 1, "i1", "h", [], {}), sender="fake"))
        assert pool.poll(WAIT_S * 1000), "no welcome for the fake pool"
        pool.recv()
        bad = msgpack.unpackb(encode(StageResult("x", "a", "ran", "ran", "r", 0.1, None, [], {}, "i1"), sender="fake"))
        bad["b"]["logs"] = [[]]
        pool.send(msgpack.packb(bad))
        bad["b"]["duration_s"] = "slow"
        pool.send(msgpack.packb(bad))
        pool.close()
    finally:
        ctx.destroy(linger=0)
    ping = run_pivot(root, "ping", "--broker", control)
    assert ping.returncode == 0, describe(ping)
    assert broker.proc.poll() is None, "the broker died of bad input"
    log = (root / ".pivot" / "logs" / "broker.jsonl").read_text()
    assert "stage_result.logs: expected" in log, log
    assert "stage_result.duration_s: expected float" in log, log
    rc, _, err = broker.stop()
    assert rc == 0 and "Traceback" not in err, err


# `held` appends "pid alive-earlier-pids..." to starts.log when it starts (so each start
# says whether an earlier attempt still ran), then waits for `release` (own deadline).
ONCE_PIPELINE = '''\
import os
import time

from pivot import stage


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@stage(outs=["held.txt"])
def held() -> None:
    earlier = []
    if os.path.exists("starts.log"):
        earlier = [int(line.split()[0]) for line in open("starts.log").read().splitlines()]
    with open("starts.log", "a") as f:
        f.write(" ".join(str(p) for p in [os.getpid(), *[p for p in earlier if alive(p)]]) + "\\n")
    deadline = time.monotonic() + 40
    while not os.path.exists("release"):
        if time.monotonic() > deadline:
            raise TimeoutError("release never appeared")
        time.sleep(0.02)
    with open("held.txt", "w") as f:
        f.write("held")
'''


def starts(root: Path) -> list[list[int]]:
    log = root / "starts.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [[int(x) for x in line.split()] for line in lines]


@dataclass
class HeldOnFirst:
    """`held` running on pool `first` for a `pivot repro --broker` (`run`); pool
    `second` joined after it started."""

    root: Path
    first: subprocess.Popen[str]
    second: subprocess.Popen[str]
    run: subprocess.Popen[str]
    stage_pid: int


def held_on_first(tmp_path: Path, guard: ProcGuard, start_broker: Callable[..., Broker]) -> HeldOnFirst:
    root = write_files(tmp_path / "proj", {"pipeline.py": ONCE_PIPELINE})
    control = start_broker(root, "--bind", "tcp://127.0.0.1:0").wait_bound()
    first = start_pool(guard, root, control, "first", "-j", "1")
    run = guard.track(start_pivot(root, "repro", "--broker", control, "--json"))
    [[stage_pid]] = wait_for(lambda: starts(root), WAIT_S, "held to start on the first pool")
    assert pool_of(stage_pid, {first.pid: "first"}) == "first"
    second = start_pool(guard, root, control, "second", "-j", "1")
    wait_for(lambda: len([r for r in ps(root, control) if r["role"] == "pool"]) == 2, WAIT_S, "the second pool")
    return HeldOnFirst(root, first, second, run, stage_pid)


@pytest.mark.timeout(90)
def test_a_pool_killed_mid_stage_hands_the_stage_to_the_other_pool_never_twice_at_once(
    tmp_path: Path, proc_guard: ProcGuard, start_broker: Callable[..., Broker]
) -> None:
    held = held_on_first(tmp_path, proc_guard, start_broker)
    root, first, second, run, stage_pid = held.root, held.first, held.second, held.run, held.stage_pid
    first.kill()  # SIGKILL: nothing of the first pool can say goodbye
    # Its loky worker notices its pool is gone and exits: the attempt dies with it.
    wait_for(lambda: proc_info(stage_pid) is None or proc_info(stage_pid).state in ("Z", "X"), 5.0,  # type: ignore[union-attr]
             "the killed pool's worker to exit")
    # The broker declares the pool lost after 3 s of silence and gives its stage to the
    # other pool only after the fencing margin: once, and with no earlier attempt alive.
    again = wait_for(lambda: starts(root)[1:], 30.0, "held to start again on the other pool")
    assert again == [[again[0][0]]], f"an earlier attempt was still alive: {starts(root)}"
    assert pool_of(again[0][0], {second.pid: "second"}) == "second"
    (root / "release").write_text("")
    rc, out, err = wait_exit(run, 30, "pivot repro --broker")
    assert rc == 0, describe((rc, out, err))
    events = parse_events(out)
    lost = [e for e in events if e["event"] == "pool_lost"]
    assert [(e["pool"], e["stages"]) for e in lost] == [("first", ["held"])], lost
    assert finished(events)["held"]["status"] == "ran"
    assert len(starts(root)) == 2


def test_a_pool_stopped_with_sigterm_hands_back_its_stage_at_once(
    tmp_path: Path, proc_guard: ProcGuard, start_broker: Callable[..., Broker]
) -> None:
    held = held_on_first(tmp_path, proc_guard, start_broker)
    root, first, second, run = held.root, held.first, held.second, held.run
    first.terminate()
    rc, _, err = wait_exit(first, 15, "the first pool after SIGTERM")
    assert rc == 0, err
    again = wait_for(lambda: starts(root)[1:], 10.0, "held to start again on the other pool")
    assert again == [[again[0][0]]], f"an earlier attempt was still alive: {starts(root)}"
    assert pool_of(again[0][0], {second.pid: "second"}) == "second"
    (root / "release").write_text("")
    rc, out, err = wait_exit(run, 30, "pivot repro --broker")
    assert rc == 0, describe((rc, out, err))
    events = parse_events(out)
    assert not [e for e in events if e["event"] == "pool_lost"], events  # it said goodbye
    assert finished(events)["held"]["status"] == "ran"


@pytest.mark.timeout(90)
def test_the_broker_killed_and_restarted_while_pools_and_displays_stay_up(
    tmp_path: Path, proc_guard: ProcGuard, start_broker: Callable[..., Broker]
) -> None:
    from procs import LiveRun

    root = write_files(tmp_path / "proj", {"pipeline.py": PAIR_PIPELINE})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    first = start_broker(root, "--bind", endpoint)
    first.wait_bound()
    pools = [start_pool(proc_guard, root, endpoint, name, "-j", "1") for name in ("p1", "p2")]
    wait_for(lambda: len([r for r in ps(root, endpoint) if r["role"] == "pool"]) == 2, WAIT_S, "both pools")
    display = LiveRun(proc_guard.track(start_pivot(root, "attach", "--broker", endpoint, "--json")))
    ran = run_pivot(root, "repro", "--broker", endpoint, "--json", timeout=WAIT_S + 10)
    assert ran.returncode == 0, describe(ran)
    display.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "the display to show the run")

    first.proc.kill()
    wait_exit(first.proc, 10, "the killed broker")
    second = start_broker(root, "--bind", endpoint)  # the same endpoint; new free ports
    second.wait_bound()
    # The pools say hello again and join the new broker; the display follows it.
    wait_for(lambda: len([r for r in ps(root, endpoint) if r["role"] == "pool"]) == 2, 30.0, "the pools to rejoin")
    wait_for(lambda: "answered; following it" in display.stderr, 30.0, "the display to follow the new broker")
    assert all(p.poll() is None for p in pools) and display.proc.poll() is None

    mark = display.mark()
    again = run_pivot(root, "repro", "--broker", endpoint, "--json", timeout=WAIT_S + 10)
    assert again.returncode == 0, describe(again)
    # The new broker knew nothing, but nothing that was up to date runs again.
    assert {s: e["status"] for s, e in finished(parse_events(again.stdout)).items()} == {
        "a": "skipped", "b": "skipped",
    }
    display.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "the display to show the new wave", mark)

    rc, _, err = second.stop()
    assert rc == 0, err
    assert display.wait_exit(15) == 0, display.stderr
    for pool in pools:
        rc, _, err = wait_exit(pool, 15, "a pool after its broker stopped")
        assert rc == 0, err


# A stage whose declaration depends on the host (here: an environment variable), as an
# old checkout's would: a pool that loads another version of it must not run it.
HOST_PIPELINE = '''\
import os

from pivot import stage


@stage(outs=["a.txt"])
def a(version: int = int(os.environ.get("PIPELINE_VERSION", "1"))) -> None:
    with open("a.txt", "w") as f:
        f.write(f"{os.getpid()} {version}")
'''


def test_a_pool_that_loaded_other_code_gets_none_of_those_stages(
    tmp_path: Path, proc_guard: ProcGuard, start_broker: Callable[..., Broker]
) -> None:
    root = write_files(tmp_path / "proj", {"pipeline.py": HOST_PIPELINE})
    # A standalone broker loads the pipeline itself (a loader beside it): version 1.
    control = start_broker(root, "--bind", "tcp://127.0.0.1:0").wait_bound()
    stale = proc_guard.track(start_pivot(
        root, "workers", "--broker", control, "--name", "stale", "-j", "1",
        env={**os.environ, "PIPELINE_VERSION": "2"},
    ))
    display = proc_guard.track(start_pivot(root, "attach", "--broker", control, "--json"))
    from procs import LiveRun

    live = LiveRun(display)
    notice = live.wait_event(lambda e: e["event"] == "notice", WAIT_S, "the mismatch notice")
    assert "worker pool stale loaded other code or declarations for a" in notice["message"], notice
    [row] = [r for r in ps(root, control) if r["name"] == "stale"]
    assert row["mismatched"] == ["a"] and row["current"] is True, row
    shown = run_pivot(root, "ps", "--broker", control)
    assert "other code for 1 stage(s): a" in shown.stdout, describe(shown)
    good = start_pool(proc_guard, root, control, "good", "-j", "1")
    result = run_pivot(root, "repro", "--broker", control, "--json", timeout=WAIT_S + 10)
    assert result.returncode == 0, describe(result)
    pid, version = (root / "a.txt").read_text().split()
    assert version == "1" and pool_of(int(pid), {good.pid: "good", stale.pid: "stale"}) == "good"


TAGGED_PIPELINE = '''\
import os

from pivot import stage


@stage(outs=["cpu.txt"])
def cpu() -> None:
    with open("cpu.txt", "w") as f:
        f.write(str(os.getpid()))


@stage(deps=["cpu.txt"], outs=["gpu.txt"], tags=["gpu"])
def gpu() -> None:
    with open("gpu.txt", "w") as f:
        f.write(str(os.getpid()))
'''


def test_a_tagged_stage_runs_only_on_a_pool_with_its_tags(
    tmp_path: Path, proc_guard: ProcGuard, start_broker: Callable[..., Broker]
) -> None:
    root = write_files(tmp_path / "proj", {"pipeline.py": TAGGED_PIPELINE})
    control = start_broker(root, "--bind", "tcp://127.0.0.1:0").wait_bound()
    plain = start_pool(proc_guard, root, control, "plain", "-j", "2")
    wait_for(lambda: [r for r in ps(root, control) if r["role"] == "pool"], WAIT_S, "the plain pool")
    run = proc_guard.track(start_pivot(root, "repro", "--broker", control, "--json"))
    # No pool has the tag yet: under a running engine the stage waits, and says why.
    wait_for(lambda: (root / "cpu.txt").exists(), WAIT_S, "the untagged stage to run")
    status = run_pivot(root, "status", "--broker", control)
    assert "gpu: queued (wave 1; waiting for a pool with tags gpu)" in status.stdout, describe(status)
    gpu_pool = start_pool(proc_guard, root, control, "gpu-box", "-j", "1", "--tag", "gpu", "--tag", "big")
    rc, out, err = wait_exit(run, 30, "pivot repro --broker")
    assert rc == 0, describe((rc, out, err))
    pools = {plain.pid: "plain", gpu_pool.pid: "gpu-box"}
    assert pool_of(int((root / "gpu.txt").read_text()), pools) == "gpu-box"
    assert pool_of(int((root / "cpu.txt").read_text()), pools) == "plain"
    rows = {r["name"]: r for r in ps(root, control) if r["role"] == "pool"}
    assert rows["gpu-box"]["tags"] == ["big", "gpu"], rows


def test_a_one_shot_run_fails_a_stage_no_pool_can_take(tmp_path: Path) -> None:
    root = write_files(tmp_path / "proj", {"pipeline.py": TAGGED_PIPELINE})
    result = run_pivot(root, "repro", "--json")
    assert result.returncode == 1, describe(result)
    done = finished(parse_events(result.stdout))
    assert done["cpu"]["status"] == "ran"
    assert (done["gpu"]["status"], done["gpu"]["reason_code"]) == ("failed", "no_pool"), done
    assert "pivot workers --tag gpu" in done["gpu"]["reason"]


COPY_PIPELINE = '''\
from pivot import stage


@stage(deps=["in.txt"], outs=["out.txt"])
def copy() -> None:
    with open("in.txt") as src, open("out.txt", "w") as dst:
        dst.write(src.read().upper())
'''


def test_a_watcher_on_its_own_makes_a_standalone_broker_react_to_edits(
    tmp_path: Path, proc_guard: ProcGuard, start_broker: Callable[..., Broker]
) -> None:
    from procs import LiveRun

    root = write_files(tmp_path / "proj", {"pipeline.py": COPY_PIPELINE, "in.txt": "one\n"})
    control = start_broker(root, "--bind", "tcp://127.0.0.1:0").wait_bound()
    start_pool(proc_guard, root, control, "p1", "-j", "1")
    display = LiveRun(proc_guard.track(start_pivot(root, "attach", "--broker", control, "--json")))
    watcher = proc_guard.track(start_pivot(root, "watcher", "--broker", control))
    # A watcher joining makes the broker check every stage: the first wave runs copy.
    display.wait_event(lambda e: e["event"] == "wave_finished" and e["ran"] == ["copy"], WAIT_S, "the check wave")
    assert (root / "out.txt").read_text() == "ONE\n"
    rows = ps(root, control)
    assert [r["pid"] for r in rows if r["role"] == "watcher"] == [watcher.pid], rows
    mark = display.mark()
    (root / "in.txt").write_text("two\n")
    began = display.wait_event(lambda e: e["event"] == "wave_started", WAIT_S, "the edit's wave", mark)
    assert (began["trigger"], began["paths"]) == ("files", ["in.txt"]), began
    display.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "the edit's wave to end", mark)
    assert (root / "out.txt").read_text() == "TWO\n"
    watcher.terminate()
    rc, _, err = wait_exit(watcher, 10, "the watcher after SIGTERM")
    assert rc == 0, err


def test_a_run_asked_of_an_engine_whose_pipeline_is_broken_says_so_at_once(
    tmp_path: Path, start_broker: Callable[..., Broker]
) -> None:
    """The pipeline failed to load before the run was asked: no event says so again (it is
    in the snapshot the client joins with), and the run must end with the error, exit 2,
    not wait for a wave that never comes."""
    cycle = COPY_PIPELINE.replace('deps=["in.txt"]', 'deps=["out.txt"]')
    root = write_files(tmp_path / "proj", {"pipeline.py": cycle})
    broker = start_broker(root, "--bind", "tcp://127.0.0.1:0")
    control = broker.wait_bound()
    records = root / ".pivot" / "logs" / "broker.jsonl"
    wait_for(lambda: records.is_file() and "pipeline_invalid" in records.read_text(errors="replace"),
             WAIT_S, "the broker to find the pipeline broken")
    for display in ("plain", "json"):
        result = run_pivot(root, "repro", "--broker", control, "--display", display, timeout=WAIT_S)
        assert result.returncode == 2, describe(result)
        if display == "plain":
            assert result.stderr.splitlines()[0].startswith("error: "), describe(result)
            assert "out.txt" in result.stderr, describe(result)
