"""Several hosts, simulated: the broker on one host, a pool on each of two others, CURVE
on, the project on a shared file system (here: the same tmp folder, which every network
namespace sees at the same path).

What each test proves, and how:
- a data edit runs stages on both pools: two stages that can finish only when both run
  at once, each writing the network namespace it ran in (/proc/self/ns/net);
- a host that dies while its pool runs a stage: every process of that namespace
  SIGKILLed; the stage (which wrote a start marker) starts again on the other host,
  once, with no earlier attempt alive;
- a partition (the host's veth down at the switch): the cut-off pool stops its own
  workers (its process stays), and only then does the stage start on the other host;
  the stage's start markers and heartbeat stamps show the two attempts never overlap;
- a pool with a key the broker does not know is refused during the handshake.

Markers live beside the project (tmp_path/marks), outside what the watcher watches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hostcluster import WAIT_S, Cluster
from procs import (
    children_of,
    describe,
    finished,
    of_kind,
    parse_events,
    pivot_cmd,
    proc_info,
    wait_exit,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

# Two stages that can finish only when both run at once: each writes "pid netns" to
# ../marks/ROUND.NAME (ROUND: the contents of in.txt), then waits for the other's.
MEET_PIPELINE = '''\
import os
import time

from pivot import stage

MARKS = os.path.join("..", "marks")


def meet(me: str, other: str) -> None:
    with open("in.txt") as f:
        rnd = f.read().strip()
    mark = os.path.join(MARKS, f"{rnd}.{me}")
    with open(mark + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {os.readlink('/proc/self/ns/net')}")
    os.replace(mark + ".tmp", mark)
    deadline = time.monotonic() + 20
    while not os.path.exists(os.path.join(MARKS, f"{rnd}.{other}")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{other} never ran beside {me} in round {rnd}")
        time.sleep(0.01)
    with open(f"{me}.txt", "w") as f:
        f.write(f"{rnd} {me}")


@stage(deps=["in.txt"], outs=["a.txt"])
def a() -> None:
    meet("a", "b")


@stage(deps=["in.txt"], outs=["b.txt"])
def b() -> None:
    meet("b", "a")
'''

# `held` appends "pid start-time netns alive-earlier-pids..." to ../marks/starts.log when
# it starts (so each start says whether an earlier attempt still lived), stamps
# ../marks/beat.PID with the time every 20 ms while it waits for ../marks/release (its
# own deadline), then writes its output.
HELD_PIPELINE = '''\
import os
import time

from pivot import stage

MARKS = os.path.join("..", "marks")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@stage(outs=["held.txt"])
def held() -> None:
    log = os.path.join(MARKS, "starts.log")
    earlier = []
    if os.path.exists(log):
        with open(log) as f:
            earlier = [int(line.split()[0]) for line in f.read().splitlines()]
    me, began = os.getpid(), time.time()
    still = " ".join(str(p) for p in earlier if alive(p))
    with open(log, "a") as f:
        f.write(f"{me} {began!r} {os.readlink('/proc/self/ns/net')} {still}".rstrip() + "\\n")
    beat = os.path.join(MARKS, f"beat.{me}")
    deadline = time.monotonic() + 50
    while not os.path.exists(os.path.join(MARKS, "release")):
        if time.monotonic() > deadline:
            raise TimeoutError("release never appeared")
        with open(beat + ".tmp", "w") as f:
            f.write(repr(time.time()))
        os.replace(beat + ".tmp", beat)
        time.sleep(0.02)
    with open("held.txt", "w") as f:
        f.write("held")
'''


def marks(c: Cluster) -> Path:
    folder = c.root.parent / "marks"
    folder.mkdir(exist_ok=True)
    return folder


def ran_on(c: Cluster, mark: Path) -> str:
    """The host whose namespace the stage that wrote `mark` ("pid netns") ran in."""
    netns = mark.read_text().split()[1]
    host = c.net.host_of_netns(netns)
    assert host is not None, f"{mark.name}: ran in {netns}, none of the test's hosts"
    return host


def test_a_data_edit_runs_stages_on_both_hosts_pools(cluster: Callable[[dict[str, str]], Cluster]) -> None:
    c = cluster({"pipeline.py": MEET_PIPELINE, "in.txt": "1\n"})
    folder = marks(c)
    c.pool("pool-a", "pool-a")
    c.pool("pool-b", "pool-b")
    rows = c.wait_pools("pool-a", "pool-b")
    # Each pool said hello from its own host (its own UTS name, its own address).
    assert {name: row["host"] for name, row in rows.items()} == {"pool-a": "pool-a", "pool-b": "pool-b"}, rows
    display = c.display()
    c.watcher()
    # A watcher joining makes the broker check every stage: both run (never ran before).
    # The display shows that wave live, or from the snapshot it takes when it joins: once
    # it has, it is following the engine.
    first = display.wait_event(lambda e: e["event"] == "wave_finished" and e["wave"] == 1, WAIT_S,
                               "the check wave")
    assert sorted(first["ran"]) == ["a", "b"], first
    assert {ran_on(c, folder / f"1.{s}") for s in ("a", "b")} == {"pool-a", "pool-b"}

    mark = display.mark()
    (c.root / "in.txt").write_text("2\n")
    began = display.wait_event(lambda e: e["event"] == "wave_started", WAIT_S, "the edit's wave", mark)
    assert (began["trigger"], began["paths"]) == ("files", ["in.txt"]), began
    done = display.wait_event(lambda e: e["event"] == "wave_finished" and e["wave"] == began["wave"],
                              WAIT_S, "the edit's wave to end", mark)
    assert sorted(done["ran"]) == ["a", "b"], done
    events = display.since(mark)
    assert sorted(e["stage"] for e in of_kind(events, "stage_started")) == ["a", "b"], events
    # The stages ran at once, one on each pool host; nothing ran on the broker's host.
    assert {ran_on(c, folder / f"2.{s}") for s in ("a", "b")} == {"pool-a", "pool-b"}
    assert (c.root / "a.txt").read_text() == "2 a" and (c.root / "b.txt").read_text() == "2 b"
    c.stop()


def starts(c: Cluster) -> list[tuple[int, float, str, list[int]]]:
    """(pid, start time, host, earlier attempts still alive) of each start of `held`."""
    log = c.root.parent / "marks" / "starts.log"
    found = []
    for line in (log.read_text().splitlines() if log.exists() else []):
        pid, began, netns, *alive = line.split()
        host = c.net.host_of_netns(netns)
        assert host is not None, f"held ran in {netns}, none of the test's hosts"
        found.append((int(pid), float(began), host, [int(p) for p in alive]))
    return found


def held_running(c: Cluster) -> tuple[str, str, int]:
    """Both pools joined, `pivot repro` started on the broker host and `held` running:
    (the host running it, the other pool host, the stage's pid)."""
    marks(c)
    c.pool("pool-a", "pool-a")
    c.pool("pool-b", "pool-b")
    c.wait_pools("pool-a", "pool-b")
    [(pid, _, host, _)] = wait_for(lambda: starts(c), WAIT_S, "held to start")
    other = {"pool-a": "pool-b", "pool-b": "pool-a"}[host]
    return host, other, pid


def finish_run(c: Cluster, run_name: str) -> list[dict[str, object]]:
    """Release `held`; the run must end with it run; its events."""
    (c.root.parent / "marks" / "release").write_text("")
    rc, out, err = wait_exit(c.procs[run_name], 30, "pivot repro --broker")
    assert rc == 0, describe((rc, out, err))
    events = parse_events(out)
    assert finished(events)["held"]["status"] == "ran", events
    return events


@pytest.mark.timeout(90)
def test_a_host_that_dies_mid_stage_hands_the_stage_to_the_other_host(
    cluster: Callable[[dict[str, str]], Cluster],
) -> None:
    c = cluster({"pipeline.py": HELD_PIPELINE})
    c.repro()
    host, other, stage_pid = held_running(c)
    killed = c.net.kill_host(host)  # the pool, its loky workers: the whole machine at once
    assert c.procs[host].pid in killed and stage_pid in killed, (killed, c.procs[host].pid, stage_pid)
    c.may_fail.add(host)
    # The broker hears nothing more from that pool: lost after 3 s of silence, its stage
    # released to the other pool after the fencing margin.
    again = wait_for(lambda: starts(c)[1:], 30.0, "held to start again on the other host")
    [(_, _, again_host, alive)] = again
    assert again_host == other, starts(c)
    assert alive == [], f"an earlier attempt was still alive: {starts(c)}"
    events = finish_run(c, "repro")
    lost = of_kind(events, "pool_lost")
    assert [(e["pool"], e["stages"]) for e in lost] == [(host, ["held"])], lost
    assert len(starts(c)) == 2
    assert sorted(c.pools()) == [other]
    c.stop()


@pytest.mark.timeout(90)
def test_a_partitioned_pool_stops_its_own_workers_before_its_stage_runs_elsewhere(
    cluster: Callable[[dict[str, str]], Cluster],
) -> None:
    c = cluster({"pipeline.py": HELD_PIPELINE})
    c.repro()
    host, other, stage_pid = held_running(c)
    pool = c.procs[host]
    workers = pool_workers(stage_pid)
    c.net.partition(host)

    # The cut-off pool hears no heartbeat for 3 s and stops its workers itself; it stays.
    wait_for(lambda: not any(_alive(w) for w in workers), 10.0, f"the cut-off pool to stop its workers {workers}")
    workers_gone_at = time.time()  # polled: they were gone by then
    assert pool.poll() is None, "the cut-off pool itself exited"

    # The broker gives the stage to the other pool only after the pool's silence, the
    # time it takes that pool to notice, and a margin (broker/pools.py).
    again = wait_for(lambda: starts(c)[1:], 30.0, "held to start again on the other host")
    [(_, again_at, again_host, alive)] = again
    assert again_host == other, starts(c)
    assert alive == [], f"an earlier attempt was still alive: {starts(c)}"
    last_beat = float((c.root.parent / "marks" / f"beat.{stage_pid}").read_text())
    # Never twice at once: the first attempt's last sign of life, then its workers all
    # gone (seen from here), then the second attempt's start.
    assert last_beat < workers_gone_at < again_at, (last_beat, workers_gone_at, again_at)
    assert pool.poll() is None, "the cut-off pool itself exited"

    c.net.heal(host)  # the pool comes back; it must not run the stage again
    c.wait_pools("pool-a", "pool-b", timeout=30.0)
    events = finish_run(c, "repro")
    assert [(e["pool"], e["stages"]) for e in of_kind(events, "pool_lost")] == [(host, ["held"])], events
    assert len(starts(c)) == 2, starts(c)
    assert "the broker has been silent" in c.stderr(host), c.stderr(host)
    c.stop()


def test_a_pool_with_a_key_the_broker_does_not_know_is_refused(
    cluster: Callable[[dict[str, str]], Cluster],
) -> None:
    c = cluster({"pipeline.py": MEET_PIPELINE, "in.txt": "1\n"})
    stranger = c.root.parent / "stranger"
    made = c.net.run("pool-b", [*pivot_cmd(), "keys", "add", "pool-b", "--role", "pool", "--dir", str(stranger)],
                     cwd=c.root)
    assert made.returncode == 0, describe(made)
    intruder = c.pool("pool-b", "intruder", key="pool-b", keys=stranger)
    rc, _, _ = wait_exit(intruder, 20, "a pool with an unknown key")
    err = c.stderr("intruder")
    assert rc == 2, f"exit code {rc}\n{err}"
    assert "authentication failed at tcp://broker:7000" in err and "Traceback" not in err, err
    c.may_fail.add("intruder")
    log = c.broker_log()
    assert "refused an unknown key (fingerprint" in log and c.net["pool-b"].address in log, log
    # The same host with the broker's own key for it gets in: it was the key.
    c.pool("pool-b", "pool-b")
    assert sorted(c.wait_pools("pool-b")) == ["pool-b"]
    c.stop()


def pool_workers(stage_pid: int) -> list[int]:
    """The worker running a stage and its siblings: every worker of that pool."""
    info = proc_info(stage_pid)
    assert info is not None, f"the stage's worker {stage_pid} is gone"
    return [stage_pid, *(p.pid for p in children_of(info.ppid) if p.pid != stage_pid)]


def _alive(pid: int) -> bool:
    info = proc_info(pid)
    return info is not None and info.state not in ("Z", "X")

