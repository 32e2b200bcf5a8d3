"""A real pool process with this test as its broker, on a real ZeroMQ socket: stages
given behind attempts of their upstream stages (`run_stage`'s `after`, docs/protocol.md
"Behind its upstream"), handed ahead to their upstream's worker (a chain link, decided
there), and what the pool says when it crashes."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from pivot.launch import python_cmd
from pivot.protocol.codec import decode, encode
from pivot.protocol.messages import (
    CancelStage,
    Heartbeat,
    LoadManifest,
    ManifestLoaded,
    Message,
    PoolHello,
    PoolWelcome,
    ResultAck,
    RunStage,
    StageOutput,
    StageResult,
    StageRunning,
)
from tests.procs import ProcGuard, wait_exit, wait_for, write_files

pytestmark = pytest.mark.timeout(90)

WAIT_S = 30.0

PIPELINE = '''\
import os
import time

from pivot import stage


@stage(outs=["a.txt"])
def a() -> None:
    if os.path.exists("fail-a"):
        raise RuntimeError("a fails, as the test asked")
    open("a.started", "w").close()
    deadline = time.monotonic() + 30
    while os.path.exists("hold-a") and time.monotonic() < deadline:
        time.sleep(0.01)
    content = open("a.content").read() if os.path.exists("a.content") else "a\\n"
    with open("a.txt", "w") as f:
        f.write(content)


@stage(deps=["a.txt"], outs=["b.txt"])
def b() -> None:
    with open("a.txt") as src, open("b.txt", "w") as dst:
        dst.write(src.read().upper())
    with open("b.runs", "a") as f:
        f.write("ran\\n")
'''


class FakeBroker:
    """The work link's ROUTER, a pool started against it and the messages it sent."""

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], root: Path, guard: ProcGuard,
        heartbeat_s: float = WAIT_S, env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        endpoint = f"ipc://{root}/work.sock"
        self.sock.bind(endpoint)
        self.stderr_path = root / "pool.stderr"
        self.stderr = self.stderr_path.open("w")
        self.proc = guard.track(subprocess.Popen(
            python_cmd("workers", "--root", str(root), "--work", endpoint, "--name", "p", "--jobs", "1",
                       "--broker-timeout", "60"),
            cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr,
            text=True, start_new_session=True, env=env,
        ))
        self.identity = b""
        self.results_by: dict[str, StageResult] = {}  # each attempt's result, as the pool said it
        self.pending: collections.deque[Message] = collections.deque()  # read, not yet taken
        hello = self.next_of(PoolHello)
        assert isinstance(hello, PoolHello) and hello.queue >= 1, hello
        self.send(PoolWelcome("p", heartbeat_s, 3))
        self.next_of(ManifestLoaded)

    def send(self, msg: Message) -> None:
        self.sock.send_multipart([self.identity, encode(msg, sender="broker")])

    def send_pair(self, wave: int, force: bool = False) -> tuple[str, str]:
        """a, and b behind it (attempts w{wave}-1 and w{wave}-2); `force`: a runs whatever."""
        a, b = f"w{wave}-1", f"w{wave}-2"
        self.send(RunStage(wave, "a", a, force))
        self.send(RunStage(wave, "b", b, False, [a]))
        return a, b

    def next(self) -> Message:
        """The pool's next message, heartbeats and output lines aside."""
        deadline = time.monotonic() + WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            if self.pending:
                return self.pending.popleft()
            if not self.sock.poll(int(left * 1000) + 1):
                break
            # What one pass of the pool sent: a message a frame, in order.
            identity, *payloads = self.sock.recv_multipart()
            self.identity = identity
            for payload in payloads:
                msg = decode(payload).msg
                if isinstance(msg, Heartbeat):
                    self.send(Heartbeat("p"))
                elif not isinstance(msg, StageOutput):
                    self.pending.append(msg)
        raise AssertionError(f"the pool sent nothing within {WAIT_S} s (exit code {self.proc.poll()})")

    def next_of(self, kind: type[Message]) -> Message:
        msg = self.next()
        assert isinstance(msg, kind), f"expected {kind.TAG}, got {msg}"
        return msg

    def results(self, *attempts: str) -> list[tuple[str, str]]:
        """(attempt, kind or status) of what the pool says until `attempts` all have
        results, in order; each result acknowledged as it comes."""
        said: list[tuple[str, str]] = []
        waiting = set(attempts)
        while waiting:
            msg = self.next()
            if isinstance(msg, StageRunning):
                said.append((msg.attempt, "running"))
            elif isinstance(msg, StageResult):
                said.append((msg.attempt, msg.status))
                self.results_by[msg.attempt] = msg
                self.send(ResultAck(msg.attempt))
                waiting.discard(msg.attempt)
        return said


@pytest.fixture
def broker(tmp_path: Path, proc_guard: ProcGuard, zctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[FakeBroker]:
    root = proc_guard.watch_dir(write_files(tmp_path / "proj", {"pipeline.py": PIPELINE}))
    fake = FakeBroker(zctx, root, proc_guard)
    yield fake
    fake.proc.terminate()
    fake.proc.wait(WAIT_S)
    fake.sock.close(linger=0)
    fake.stderr.close()


def test_a_stage_behind_its_upstream_starts_once_that_ran_without_the_broker(broker: FakeBroker) -> None:
    broker.send_pair(1)
    # No acknowledgement, no other message from the broker between a's result and b.
    said = broker.results("w1-1", "w1-2")
    assert said == [("w1-1", "running"), ("w1-1", "ran"), ("w1-2", "running"), ("w1-2", "ran")]
    assert (broker.root / "b.txt").read_text() == "A\n"


def test_a_stage_behind_an_upstream_that_failed_is_given_back_unstarted(broker: FakeBroker) -> None:
    (broker.root / "fail-a").touch()
    broker.send_pair(1)
    assert broker.results("w1-1", "w1-2") == [("w1-1", "running"), ("w1-1", "failed"), ("w1-2", "lost")]
    assert "not started: upstream attempt w1-1 ended failed" in broker.results_by["w1-2"].reason
    assert not (broker.root / "b.runs").exists()
    # One whose upstream attempt is not this pool's (nor a result it still holds).
    broker.send(RunStage(2, "b", "w2-2", False, ["w9-9"]))
    assert broker.results("w2-2") == [("w2-2", "lost")]
    assert "is not this pool's" in broker.results_by["w2-2"].reason
    # The pool goes on: a, then b behind it, run once the failure is acknowledged.
    (broker.root / "fail-a").unlink()
    broker.send_pair(3)
    assert broker.results("w3-1", "w3-2")[-1] == ("w3-2", "ran")
    assert (broker.root / "b.runs").read_text() == "ran\n"


def test_a_stage_behind_its_upstream_is_cancelled_at_once_and_its_upstream_runs_on(broker: FakeBroker) -> None:
    (broker.root / "hold-a").touch()
    broker.send_pair(1)
    assert broker.next_of(StageRunning) == StageRunning("w1-1", "never_ran", "never ran", {})
    wait_for((broker.root / "a.started").exists, WAIT_S, "stage a to start")
    broker.send(CancelStage("w1-2", "the test cancels it"))
    assert broker.results("w1-2") == [("w1-2", "cancelled")]
    assert not (broker.root / "a.txt").exists()  # a still runs, held by the test
    (broker.root / "hold-a").unlink()
    assert broker.results("w1-1") == [("w1-1", "ran")]
    assert not (broker.root / "b.runs").exists()


def test_a_stage_behind_its_upstream_runs_in_that_worker_without_the_pools_loop(broker: FakeBroker) -> None:
    (broker.root / "hold-a").touch()
    broker.send_pair(1)
    # A stage not in the pipeline fails at once: its result says the pool read b before it.
    broker.send(RunStage(1, "nowhere", "w1-3", False))
    said = broker.results("w1-3")
    assert said[-1] == ("w1-3", "failed"), said
    if ("w1-1", "running") not in said:
        assert broker.next_of(StageRunning).attempt == "w1-1"
    wait_for((broker.root / "a.started").exists, WAIT_S, "stage a to start")
    os.kill(broker.proc.pid, signal.SIGSTOP)  # the pool's loop can decide nothing now
    try:
        (broker.root / "hold-a").unlink()
        # Well within the 3 s after which a worker leaves a pool that stays stopped.
        wait_for((broker.root / "b.runs").exists, 2.0, "b to run while its pool is stopped")
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    said = broker.results("w1-1", "w1-2")
    assert said == [("w1-1", "ran"), ("w1-2", "running"), ("w1-2", "ran")]
    assert broker.results_by["w1-2"].reason_code == "never_ran"
    assert (broker.root / "b.txt").read_text() == "A\n"


def test_a_stage_handed_ahead_is_given_back_unrun_when_its_upstream_is_cancelled(broker: FakeBroker) -> None:
    (broker.root / "hold-a").touch()
    broker.send_pair(1)
    wait_for((broker.root / "a.started").exists, WAIT_S, "stage a to start")
    broker.send(CancelStage("w1-1", "the test cancels it"))
    said = broker.results("w1-1", "w1-2")
    assert ("w1-1", "cancelled") in said and ("w1-2", "lost") in said, said
    assert "upstream attempt w1-1 ended cancelled" in broker.results_by["w1-2"].reason
    assert not (broker.root / "b.runs").exists()
    # Its worker goes on with the next ones.
    (broker.root / "hold-a").unlink()
    broker.send_pair(2)
    assert broker.results("w2-1", "w2-2")[-1] == ("w2-2", "ran")
    assert (broker.root / "b.runs").read_text() == "ran\n"


def test_a_stage_handed_ahead_is_cancelled_unrun_when_the_code_changes(broker: FakeBroker) -> None:
    # b waits in a's worker, which would decide and run it on the code it imported: a
    # code change cancels it there (a, begun, runs on until the broker says otherwise).
    (broker.root / "hold-a").touch()
    broker.send_pair(1)
    wait_for((broker.root / "a.started").exists, WAIT_S, "stage a to start")
    broker.send(LoadManifest(True, 1))
    said = broker.results("w1-2")
    assert said[-1] == ("w1-2", "cancelled"), said
    assert "code changed" in broker.results_by["w1-2"].reason
    (broker.root / "hold-a").unlink()
    assert broker.results("w1-1")[-1] == ("w1-1", "ran")
    assert not (broker.root / "b.runs").exists()


def test_a_stage_its_upstreams_worker_decides_is_skipped_or_restored_as_the_pool_would(broker: FakeBroker) -> None:
    content = broker.root / "a.content"
    runs = broker.root / "b.runs"
    content.write_text("x\n")
    broker.send_pair(1)
    assert broker.results("w1-1", "w1-2")[-1] == ("w1-2", "ran")
    # a again, same output: b, decided by a's worker, is up to date.
    broker.send_pair(2, force=True)
    assert broker.results("w2-1", "w2-2") == [("w2-1", "running"), ("w2-1", "ran"), ("w2-2", "skipped")]
    content.write_text("y\n")
    broker.send_pair(3, force=True)
    assert broker.results("w3-1", "w3-2")[-1] == ("w3-2", "ran")
    assert (broker.root / "b.txt").read_text() == "Y\n"
    # Back to x: b's first run is in the run cache, and its outputs are placed from it.
    content.write_text("x\n")
    broker.send_pair(4, force=True)
    assert broker.results("w4-1", "w4-2") == [("w4-1", "running"), ("w4-1", "ran"), ("w4-2", "restored")]
    assert (broker.root / "b.txt").read_text() == "X\n"
    assert runs.read_text() == "ran\nran\n"


def test_a_pool_that_crashes_in_native_code_says_where_each_thread_was(
    tmp_path: Path, proc_guard: ProcGuard, zctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    # The crash comes from inside the pool's loop, in native code holding the GIL, as a C
    # extension's would: a SIGSEGV sent from outside could land while another thread runs
    # Python, and the fault handler reading that thread's frames as they change can crash
    # mid-dump.
    root = proc_guard.watch_dir(write_files(tmp_path / "proj", {"pipeline.py": PIPELINE}))
    (root / "hold-a").touch()
    broker = FakeBroker(zctx, root, proc_guard, heartbeat_s=0.1, env={**os.environ, "PIVOT_FAULT": "heartbeat:segv"})
    try:
        broker.send(RunStage(1, "a", "w1-1", False))
        rc, _, _ = wait_exit(broker.proc, WAIT_S, "the pool to crash at its heartbeat while a runs")
        assert rc == -signal.SIGSEGV
        said = broker.stderr_path.read_text()
        assert "Fatal Python error: Segmentation fault" in said, said
        assert "Current thread" in said and "Thread 0x" in said, said  # every thread's stack,
        assert 'File "' in said and "workers/pool.py" in said and "in reached" in said, said  # to the fault
    finally:
        broker.sock.close(linger=0)
        broker.stderr.close()
