"""A pool on a Dask cluster (`pivot workers --dask`), for real: a `dask scheduler` and two
`dask worker` processes on loopback, a standalone `pivot broker`, and the contract of a
loky pool: results, fresh code after a code change (no restart of the cluster), cancel,
lost (its Dask worker died) versus failed (its own process died)."""

from __future__ import annotations

import contextlib
import importlib.util
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from procs import (
    GONE,
    HOLD,
    Broker,
    ProcGuard,
    alive,
    describe,
    finished,
    kill_group,
    of_kind,
    parse_events,
    start_pivot,
    start_pool,
    wait_exit,
    wait_for,
    write_files,
)
from requires import require

pytestmark = pytest.mark.timeout(90)

WAIT_S = 30.0
STOP_WITHIN_S = 3.0  # a Dask process ignoring SIGINT that long is killed (nothing is lost)

PIPELINE = '''\
import os
import time

import helpers
from pivot import stage


def note(name):
    with open(f"{name}.runs", "a") as f:
        f.write(f"{helpers.VERSION} {os.getpid()} {os.getppid()}\\n")


@stage(deps=["data/in.txt"], outs=["a.txt"])
def a() -> None:
    note("a")
    with open("a.txt", "w") as f:
        f.write(f"version {helpers.VERSION}\\n")


@stage(deps=["a.txt"], outs=["slow.txt"])
def slow() -> None:
    # Version 1 runs until it is cancelled (at most 30 s); version 2 finishes.
    note("slow")
    print(f"slow v{helpers.VERSION} running", flush=True)
    deadline = time.monotonic() + 30
    while helpers.VERSION == 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    with open("slow.txt", "w") as f:
        f.write(f"version {helpers.VERSION}\\n")


@stage(outs=["steady.txt"])
def steady() -> None:
    # Calls nothing of helpers: a code change there leaves it running. Ends on "release".
    with open("steady.runs", "a") as f:
        f.write(f"{os.getpid()}\\n")
    deadline = time.monotonic() + 30
    while not os.path.exists("release") and time.monotonic() < deadline:
        time.sleep(0.01)
    with open("steady.txt", "w") as f:
        f.write("steady\\n")
'''

# In a stage: whether process PID is over (gone, or a zombie).
FAULTS = '''\
import os
import signal
import time

from pivot import stage


{gone}

@stage(outs=["victim.txt"])
def victim() -> None:
    # Its first attempt waits to be lost with its Dask worker (at most 30 s); the next
    # one finishes.
    with open("victim.runs", "a+") as f:
        f.seek(0)
        before = f.read().split()
        # The attempt before (if any) must be over: its process gone or a zombie.
        over = not before or _gone(int(before[0]))
        f.write(f"{os.getpid()} {os.getppid()} {over}\\n")
    first = not before
    deadline = time.monotonic() + 30
    while first and time.monotonic() < deadline:
        time.sleep(0.01)
    with open("victim.txt", "w") as f:
        f.write("done\\n")


@stage(outs=["suicide.txt"])
def suicide() -> None:
    with open("suicide.runs", "a") as f:
        f.write(f"{os.getpid()}\\n")
    os.kill(os.getpid(), signal.SIGKILL)
'''


FAULTS = FAULTS.replace("{gone}", GONE)


@dataclass
class Cluster:
    address: str
    workers: list[subprocess.Popen[str]]


def _dask() -> list[str]:
    return [str(Path(sys.executable).with_name("dask"))]


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A Dask scheduler and two single-thread workers (no nanny) on loopback."""
    require(importlib.util.find_spec("distributed") is not None,
            "Dask's distributed is not installed (pip install 'pivot[dask]')")
    from distributed import Client

    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*_dask(), *args], cwd=folder, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        )
        procs.append(proc)
        return proc

    try:
        start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
              "--scheduler-file", str(scheduler_file))
        wait_for(scheduler_file.exists, WAIT_S, "the Dask scheduler to start")
        workers = [
            start("worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--no-dashboard",
                  "--no-nanny", "--name", f"w{i}", "--local-directory", str(folder / f"w{i}"))
            for i in (1, 2)
        ]
        with Client(scheduler_file=str(scheduler_file), timeout=WAIT_S) as client:
            client.wait_for_workers(2, timeout=WAIT_S)
            address = client.scheduler.address
        yield Cluster(address, workers)
    finally:
        # The scheduler stops its workers, then itself; SIGINT for whatever did not hear.
        with contextlib.suppress(Exception), Client(scheduler_file=str(scheduler_file), timeout=5) as client:
            client.shutdown()
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(STOP_WITHIN_S)
            except subprocess.TimeoutExpired:
                kill_group(proc.pid)
                proc.wait(5)


def dask_pool(guard: ProcGuard, root: Path, control: str, cluster: Cluster) -> subprocess.Popen[str]:
    return start_pool(guard, root, control, "dask", "--dask", cluster.address)


def runs(root: Path, name: str) -> list[list[str]]:
    path = root / f"{name}.runs"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_stages_run_in_fresh_processes_on_the_cluster_and_a_code_change_cancels_and_reruns_them_it_changed(
    tmp_path: Path, proc_guard: ProcGuard, start_broker: Callable[..., Broker], cluster: Cluster,
) -> None:
    root = write_files(tmp_path / "proj", {
        "pipeline.py": PIPELINE, "helpers.py": "VERSION = 1\n", "data/in.txt": "x\n",
    })
    broker = start_broker(root)
    control = broker.wait_bound()
    pool = dask_pool(proc_guard, root, control, cluster)
    watcher = proc_guard.track(start_pivot(root, "watcher", "--broker", control))
    display = proc_guard.track(start_pivot(root, "attach", "--broker", control, "--display", "json"))
    worker_pids = {str(w.pid) for w in cluster.workers}

    # The standalone broker runs a wave once the watcher joins (nothing was checked yet).
    wait_for(lambda: runs(root, "slow"), WAIT_S, "stage slow to start on the cluster")
    [[version, pid, parent]] = runs(root, "slow")
    assert version == "1" and parent in worker_pids, (runs(root, "slow"), worker_pids)
    [[_, a_pid, a_parent]] = runs(root, "a")
    assert a_parent in worker_pids and a_pid != pid  # a process of its own for each stage
    # What it prints streams while it runs: the pool reads the attempt's files on the
    # shared file system into the stage's log (and the displays).
    part = root / ".pivot" / "logs" / "stages" / "slow.log.part"
    wait_for(lambda: part.exists() and "slow v1 running" in part.read_text(), WAIT_S,
             "the Dask pool to stream slow's output while it runs")

    wait_for(lambda: (root / "steady.runs").exists(), WAIT_S, "steady to run beside slow")
    (root / "helpers.py").write_text("VERSION = 2\n")  # while slow (version 1) and steady run
    wait_for(lambda: (root / "slow.txt").exists(), WAIT_S, "slow to run again on the new code")
    [steady_pid] = (root / "steady.runs").read_text().split()
    assert alive(int(steady_pid)) and not (root / "steady.txt").exists()  # spared: it runs on
    (root / "release").write_text("")
    wait_for(lambda: (root / "steady.txt").exists(), WAIT_S, "steady to end")
    assert (root / "steady.runs").read_text().split() == [steady_pid]  # it ran once
    assert (root / "slow.txt").read_text() == "version 2\n"
    assert (root / "a.txt").read_text() == "version 2\n"
    assert [r[0] for r in runs(root, "slow")] == ["1", "2"], runs(root, "slow")
    assert not alive(int(pid)), "the cancelled attempt's process is still alive"
    # The cluster was not restarted: the same Dask workers ran the new code.
    assert all(w.poll() is None for w in cluster.workers)
    assert {r[2] for r in runs(root, "slow") + runs(root, "a")} <= worker_pids

    rc, _, err = broker.stop()
    assert rc == 0, err
    watcher.send_signal(signal.SIGTERM)  # a watcher on its own waits for another broker
    for proc, what in ((pool, "the Dask pool"), (watcher, "the watcher")):
        rc, out, err = wait_exit(proc, 15, what)
        assert rc == 0, describe((rc, out, err))
    rc, out, err = wait_exit(display, 15, "the display")
    events = parse_events(out)
    cancelled = [e for e in of_kind(events, "stage_finished") if e["stage"] == "slow" and e["status"] == "cancelled"]
    assert cancelled and "code changed" in cancelled[0]["reason"].lower(), cancelled
    outcomes = [e["status"] for e in of_kind(events, "stage_finished") if e["stage"] == "slow"]
    assert outcomes == ["cancelled", "ran"], outcomes
    assert [e["status"] for e in of_kind(events, "stage_finished") if e["stage"] == "steady"] == ["ran"]
    assert any(e["moved"] == ["steady"] for e in of_kind(events, "wave_finished")), of_kind(events, "wave_finished")
    shown = [e["line"] for e in of_kind(events, "log") if e["stage"] == "slow"]
    assert "slow v1 running" in shown and "slow v2 running" in shown, shown


def test_a_lost_dask_worker_loses_its_stage_and_a_dead_stage_process_is_charged(
    tmp_path: Path, proc_guard: ProcGuard, start_broker: Callable[..., Broker], cluster: Cluster,
) -> None:
    root = write_files(tmp_path / "proj", {"pipeline.py": FAULTS})
    broker = start_broker(root)
    control = broker.wait_bound()
    dask_pool(proc_guard, root, control, cluster)
    repro = proc_guard.track(start_pivot(root, "repro", "--broker", control, "--json", "--keep-going"))

    wait_for(lambda: runs(root, "victim"), WAIT_S, "victim's first attempt to start")
    [[_, parent, _]] = runs(root, "victim")
    [holder] = [w for w in cluster.workers if str(w.pid) == parent]
    holder.send_signal(signal.SIGKILL)  # the Dask worker holding a running stage
    holder.wait(10)

    rc, out, err = wait_exit(repro, 60, "pivot repro")
    assert rc == 1, describe((rc, out, err))  # suicide failed
    events = parse_events(out)
    done = finished(events)
    assert done["victim"]["status"] == "ran", done
    assert done["suicide"]["status"] == "failed" and done["suicide"]["reason_code"] == "worker_died", done
    assert len(runs(root, "suicide")) == 3, runs(root, "suicide")  # charged three times
    victim = runs(root, "victim")
    assert len(victim) == 2 and victim[1][1] != parent, (victim, parent)  # on the other worker
    assert victim[1][2] == "True", f"the first attempt still ran when the second began: {victim}"
    assert not alive(int(victim[0][0])), "the lost attempt's process outlived its Dask worker"
    starts = [e for e in of_kind(events, "stage_started") if e["stage"] == "victim"]
    assert len(starts) >= 2, starts  # lost, then dispatched again
    assert not of_kind(events, "pool_lost"), "the pool itself was not lost"
    rc, _, err = broker.stop()
    assert rc == 0, err


def test_no_scheduler_is_a_clear_error(tmp_path: Path, proc_guard: ProcGuard, start_broker: Callable[..., Broker]) -> None:
    require(importlib.util.find_spec("distributed") is not None,
            "Dask's distributed is not installed (pip install 'pivot[dask]')")
    import socket

    root = write_files(tmp_path / "proj", {"pipeline.py": FAULTS})
    broker = start_broker(root)
    control = broker.wait_bound()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = start_pool(proc_guard, root, control, "dask", "--dask", f"tcp://127.0.0.1:{port}", "--dask-timeout", "1")
    rc, out, err = wait_exit(pool, 40, "a Dask pool without a scheduler")
    assert rc == 2, describe((rc, out, err))
    assert f"no Dask scheduler answered at tcp://127.0.0.1:{port}" in err, describe((rc, out, err))
    assert "Traceback" not in err
    alone = start_pool(proc_guard, root, control, "no-dask", "--dask-timeout", "1")
    rc, out, err = wait_exit(alone, 40, "a --dask-timeout without --dask")
    assert rc == 2 and "--dask-timeout goes with --dask" in err, describe((rc, out, err))




def test_a_pool_that_stops_renewing_its_lease_has_its_stage_process_killed_before_it_runs_again(
    tmp_path: Path, proc_guard: ProcGuard, start_broker: Callable[..., Broker], cluster: Cluster,
) -> None:
    root = write_files(tmp_path / "proj", {"pipeline.py": HOLD})
    broker = start_broker(root)
    control = broker.wait_bound()
    pool = dask_pool(proc_guard, root, control, cluster)
    repro = proc_guard.track(start_pivot(root, "repro", "--broker", control, "--json"))
    wait_for(lambda: runs(root, "hold"), WAIT_S, "the first attempt to start")
    [[first, _, _]] = runs(root, "hold")
    pool.send_signal(signal.SIGSTOP)  # frozen: no lease renewed, no heartbeat
    try:
        wait_for(lambda: not alive(int(first)), 15, "the stage's process to be killed on the expired lease")
    finally:
        pool.send_signal(signal.SIGCONT)
    rc, out, err = wait_exit(repro, 60, "pivot repro")
    assert rc == 0, describe((rc, out, err))
    assert finished(parse_events(out))["hold"]["status"] == "ran"
    attempts = runs(root, "hold")
    assert len(attempts) == 2 and attempts[1][2] == "True", attempts
    rc, _, err = broker.stop()
    assert rc == 0, err
