"""The pool's own worker processes (workers/processes.py), driven as the pool's loop drives
them: submit, poll `waitables`, `collect`. Real processes and pipes; this test process
plays the pool."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pickle
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import BrokenExecutor, Future
from pathlib import Path

import pytest
from procs import ProcGuard, ProcInfo, all_processes, is_live, wait_for

from pivot.launch.procs import is_alive
from pivot.launch.spawn import python_cmd, run_loader, write_manifest
from pivot.runtime.cancel import marker_path
from pivot.runtime.job import StageJob, StageOutcome
from workers.processes import WorkerProcesses

pytestmark = pytest.mark.timeout(60)

PIPELINE = '''\
import os
import signal
import time

from pivot import stage


def mark(name):
    with open(f"pid.{name}", "w") as f:
        f.write(str(os.getpid()))


@stage(outs=["a.txt"])
def a() -> None:
    mark("a")
    open("a.txt", "w").write("a\\n")


@stage(outs=["b.txt"])
def b() -> None:
    mark("b")
    open("b.txt", "w").write("b\\n")


@stage(outs=["c.txt"])
def c() -> None:
    mark("c")
    open("c.txt", "w").write("c\\n")


@stage(outs=["blocker.txt"])
def blocker() -> None:
    # Memory it wrote to: its process takes a while to go once killed (~25 ms here), so
    # a pool that did not wait for it would see it still there.
    ballast = b"x" * (256 << 20)
    mark("blocker")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.01)
    open("blocker.txt", "w").write("late\\n" if ballast else "")


def wait_for(path):
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


@stage(outs=["slow.txt"])
def slow() -> None:
    mark("slow")
    wait_for("release")
    open("slow.txt", "w").write("slow\\n")


@stage(outs=["once.txt"])
def once() -> None:
    mark("once")
    with open("once.log", "a") as f:  # each run of it
        f.write(f"{os.getpid()}\\n")
    open("once.txt", "w").write("once\\n")


@stage(outs=["fails.txt"])
def fails() -> None:
    raise ValueError("no")


@stage(outs=["dies.txt"])
def dies() -> None:
    mark("dies")
    wait_for("release")
    os.kill(os.getpid(), signal.SIGKILL)


@stage(outs=["killer.txt"])
def killer() -> None:
    deadline = time.monotonic() + 30
    while not os.path.exists("pid.blocker") and time.monotonic() < deadline:
        time.sleep(0.01)
    mark("killer")
    os.kill(os.getpid(), signal.SIGKILL)
'''

DEADLINE_S = 20.0


@pytest.fixture
def root(make_project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    # Plain spawned workers: a forkserver would outlive the test in this process.
    monkeypatch.setenv("PIVOT_PRELOAD", "0")
    return make_project({"pipeline.py": PIPELINE})


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerProcesses]:
    made = WorkerProcesses(2)
    made.claims_folder = str(tmp_path)
    yield made
    made.close()


def job(root: Path, stage: str) -> StageJob:
    (root / "attempts").mkdir(exist_ok=True)
    return StageJob(
        root=str(root), stage=stage, params={}, outs=(f"{stage}.txt",), fingerprint="f", code_parts={},
        dep_hashes={}, recorded_outs={}, run_key="", reason_code="forced", reason="forced",
        details={}, pid_file=str(root / "attempts" / stage),
    )


def loop_until(workers: WorkerProcesses, done: Callable[[], bool], what: str) -> None:
    """The pool's loop: poll the executor's descriptors, hand the ready ones to it."""
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        now = time.monotonic()
        left = deadline - now
        assert left > 0, f"timed out waiting for {what}"
        due = workers.rebalance(now)
        wait = min(left, 0.5) if due is None else max(0.0, min(left, due - now))
        ready, _, _ = select.select(workers.waitables(), [], [], wait)
        workers.collect(set(ready))


def outcome(future: Future[StageOutcome]) -> StageOutcome:
    result = future.result(timeout=0)
    assert isinstance(result, StageOutcome)
    return result


def pid_of(root: Path, stage: str) -> int:
    return int((root / f"pid.{stage}").read_text())


def test_stages_run_on_at_most_jobs_workers_and_their_outcomes_come_back(
    root: Path, workers: WorkerProcesses
) -> None:
    futures = [workers.submit(job(root, s)) for s in ("a", "b", "c")]
    loop_until(workers, lambda: all(f.done() for f in futures), "three stages")
    assert [outcome(f).status for f in futures] == ["ran"] * 3, [outcome(f) for f in futures]
    assert (root / "c.txt").read_text() == "c\n"
    assert len({pid_of(root, s) for s in ("a", "b", "c")}) <= 2
    assert workers.started


def test_a_worker_that_dies_idle_is_replaced_without_failing_the_next_stage(
    root: Path, workers: WorkerProcesses
) -> None:
    first = workers.submit(job(root, "a"))
    loop_until(workers, first.done, "stage a")
    assert outcome(first).status == "ran"
    idle = pid_of(root, "a")
    os.kill(idle, signal.SIGKILL)
    loop_until(workers, lambda: not is_alive(idle) and not workers.started, "the idle worker to be gone")
    generation = workers.generation
    second = workers.submit(job(root, "b"))
    loop_until(workers, second.done, "stage b")
    assert outcome(second).status == "ran", outcome(second)
    assert pid_of(root, "b") != idle
    assert workers.generation == generation  # nothing was replaced


def test_a_death_in_a_stage_fails_every_stage_in_flight_and_replace_starts_afresh(
    root: Path, workers: WorkerProcesses
) -> None:
    blocked = workers.submit(job(root, "blocker"))
    killed = workers.submit(job(root, "killer"))
    loop_until(workers, lambda: blocked.done() and killed.done(), "both stages to fail")
    with pytest.raises(BrokenExecutor, match="SIGKILL"):
        killed.result(timeout=0)
    with pytest.raises(BrokenExecutor):
        blocked.result(timeout=0)
    assert not is_alive(pid_of(root, "killer"))
    # The survivor still runs its stage until its pool replaces the workers (the pool
    # judges first which stage's worker died), as loky did.
    survivor = pid_of(root, "blocker")
    assert is_alive(survivor)
    after = workers.submit(job(root, "a"))  # a broken executor replaces its workers first
    # Waited for (reaped, by this process that started it) before the next attempt of its
    # stage can begin: two attempts are never alive at once.
    assert not os.path.exists(f"/proc/{survivor}")
    loop_until(workers, after.done, "a stage after the death")
    assert outcome(after).status == "ran", outcome(after)
    assert not (root / "blocker.txt").exists()


def test_idle_workers_replaced_are_reaped_by_the_loop_and_a_new_one_runs_the_next_stage(
    root: Path, workers: WorkerProcesses
) -> None:
    first = workers.submit(job(root, "a"))
    loop_until(workers, first.done, "stage a")
    idle = pid_of(root, "a")
    # The idle worker's pipe and exit descriptor (after the executor's own wake-up pipe),
    # by what they are open on: this process's other descriptors come and go (a previous
    # test's objects closed by the collector), and a number may be reused.
    old = {_open_file(fd) for fd in workers.waitables()[1:]} - {None}
    assert len(old) == 2, old
    workers.replace()  # as a code change does: the idle worker is not waited for
    second = workers.submit(job(root, "b"))
    # The loop's passes forget the old one once it is gone: its descriptors are closed.
    loop_until(
        workers, lambda: second.done() and not old & _open_files(),
        "stage b, and the old worker's descriptors closed",
    )
    assert outcome(second).status == "ran", outcome(second)
    assert pid_of(root, "b") != idle
    assert not is_alive(idle)


def _open_file(fd: int) -> str | None:
    """What descriptor `fd` of this process is open on (`pipe:[INODE]`, a path), or None."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _open_files() -> set[str]:
    return {f for fd in os.listdir("/proc/self/fd") if (f := _open_file(int(fd))) is not None}


def test_closing_stops_a_worker_whose_start_the_loop_has_not_taken_yet(root: Path) -> None:
    workers = WorkerProcesses(1)
    try:
        workers.submit(job(root, "a"))
        # Its start thread has handed it over (and woken the loop), which does not look.
        ready, _, _ = select.select(workers.waitables(), [], [], DEADLINE_S)
        assert ready, "no worker started"
    finally:
        workers.close()
    assert multiprocessing.active_children() == []


def test_a_stage_queued_behind_a_running_one_starts_on_that_worker_when_it_ends(root: Path) -> None:
    workers = WorkerProcesses(1)
    started: list[str] = []
    try:
        warm = workers.submit(job(root, "a"))  # the worker exists: the next two go to it at once
        loop_until(workers, warm.done, "stage a")
        first = workers.submit(job(root, "slow"), on_start=lambda: started.append("slow"))
        second = workers.submit(job(root, "b"), on_start=lambda: started.append("b"))
        loop_until(workers, lambda: (root / "pid.slow").exists(), "stage slow to begin")
        assert started == ["slow"]  # b waits in the worker's pipe: not said to run
        (root / "release").touch()
        loop_until(workers, lambda: first.done() and second.done(), "both stages")
        assert started == ["slow", "b"]
        assert [outcome(f).status for f in (first, second)] == ["ran", "ran"]
        assert pid_of(root, "b") == pid_of(root, "slow") == pid_of(root, "a")
    finally:
        workers.close()


def test_a_stage_queued_behind_a_long_one_moves_to_the_worker_gone_idle(root: Path, tmp_path: Path) -> None:
    workers = WorkerProcesses(2)
    workers.claims_folder = str(tmp_path)
    try:
        workers.start(2)
        loop_until(workers, lambda: len(workers.waitables()) == 1 + 2 * 2, "two workers to start")
        started: list[str] = []
        slow = workers.submit(job(root, "slow"), on_start=lambda: started.append("slow"))
        quick = workers.submit(job(root, "a"), on_start=lambda: started.append("a"))
        queued = workers.submit(job(root, "once"), on_start=lambda: started.append("once"))  # behind slow
        loop_until(workers, queued.done, "the queued stage, moved to the worker that ran a")
        assert not slow.done()  # it waits for its release: `once` did not wait for it
        assert outcome(quick).status == outcome(queued).status == "ran"
        # (its worker may not have begun it yet: the queue moves 20 ms after it was sent)
        loop_until(workers, lambda: (root / "pid.slow").exists(), "stage slow to begin")
        assert pid_of(root, "once") == pid_of(root, "a") != pid_of(root, "slow")
        assert started == ["slow", "a", "once"]  # said to run once, when it began
        (root / "release").touch()
        loop_until(workers, slow.done, "stage slow")
        assert outcome(slow).status == "ran"
        # A stage each: both workers are past what their pipes held (the withdrawn `once`).
        more = [workers.submit(job(root, "b")), workers.submit(job(root, "c"))]
        loop_until(workers, lambda: all(f.done() for f in more), "stages b and c")
        assert {pid_of(root, "b"), pid_of(root, "c")} == {pid_of(root, "a"), pid_of(root, "slow")}
        assert (root / "once.log").read_text().split() == [str(pid_of(root, "once"))]  # it ran once
        assert len(list(tmp_path.glob("claims-*"))) == 2
    finally:
        workers.close()
    assert not list(tmp_path.glob("claims-*"))


def test_a_worker_kept_by_a_replace_finishes_its_stage_only_and_counts_against_jobs(
    root: Path, tmp_path: Path
) -> None:
    """A code change that left `slow` as it was: its worker runs it to the end, runs
    nothing queued behind it, and goes; the new workers take only the room it leaves."""
    workers = WorkerProcesses(1)
    workers.claims_folder = str(tmp_path)
    try:
        warm = workers.submit(job(root, "a"))  # the worker exists: `b` is queued behind slow
        loop_until(workers, warm.done, "stage a")
        slow = workers.submit(job(root, "slow"))
        behind = workers.submit(job(root, "b"))
        loop_until(workers, lambda: (root / "pid.slow").exists(), "stage slow to begin")
        old = pid_of(root, "slow")
        workers.prepare(root)  # the new code's worker, adopted: it waits for the room
        workers.replace(adopt=True, keep=frozenset({job(root, "slow").pid_file}))
        # `b`, queued behind it, is taken back: it fails and never runs there.
        loop_until(workers, behind.done, "the stage queued behind slow to fail")
        with pytest.raises(BrokenExecutor):
            behind.result(timeout=0)
        started: list[str] = []
        after = workers.submit(job(root, "c"), on_start=lambda: started.append("c"))
        loop_until(workers, lambda: len(workers.waitables()) == 1 + 2 * 2, "the new code's worker to start")
        assert started == []  # -j 1: it waits for slow's worker to go
        assert is_alive(old) and not slow.done()
        (root / "release").touch()
        loop_until(workers, lambda: slow.done() and after.done(), "slow, then c on a new worker")
        assert outcome(slow).status == "ran" and outcome(after).status == "ran"
        assert not (root / "b.txt").exists()
        assert pid_of(root, "c") != old
        loop_until(workers, lambda: not is_alive(old), "the kept worker to go once its stage ended")
        assert (root / "c.txt").stat().st_mtime_ns >= (root / "slow.txt").stat().st_mtime_ns
    finally:
        workers.close()


def test_workers_whose_claims_file_cannot_be_made_run_stages_that_never_move(root: Path, tmp_path: Path) -> None:
    workers = WorkerProcesses(2)
    workers.claims_folder = str(tmp_path / "missing")  # no such folder: no claims file
    try:
        workers.start(2)
        loop_until(workers, lambda: len(workers.waitables()) == 1 + 2 * 2, "two workers to start")
        slow = workers.submit(job(root, "slow"))
        quick = workers.submit(job(root, "a"))
        queued = workers.submit(job(root, "once"))  # behind slow, for good
        loop_until(workers, quick.done, "stage a")
        assert not queued.done()
        (root / "release").touch()
        loop_until(workers, lambda: slow.done() and queued.done(), "slow, then the stage behind it")
        assert [outcome(f).status for f in (slow, quick, queued)] == ["ran"] * 3
        assert pid_of(root, "once") == pid_of(root, "slow")
    finally:
        workers.close()


def test_a_worker_that_cannot_open_its_claims_file_runs_nothing(root: Path, tmp_path: Path) -> None:
    """Its pool could take back a job it holds and give it to another worker: without
    the file it would run that job too. It exits instead (its pool starts another)."""
    from pivot.runtime.worker import serve

    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe(duplex=True)
    proc = context.Process(target=serve, args=(theirs, 30.0, None, str(tmp_path / "gone")))
    proc.start()
    theirs.close()
    try:
        ours.send_bytes(pickle.dumps((1, job(root, "a"))))
        proc.join(DEADLINE_S)
        assert proc.exitcode == 0
        with pytest.raises((EOFError, ConnectionResetError)):  # no answer: it is gone
            ours.recv()
        assert not (root / "pid.a").exists()
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(DEADLINE_S)
        ours.close()


def test_a_death_fails_the_stage_queued_behind_it_which_never_began(root: Path) -> None:
    workers = WorkerProcesses(1)
    started: list[str] = []
    try:
        warm = workers.submit(job(root, "a"))
        loop_until(workers, warm.done, "stage a")
        dying = workers.submit(job(root, "dies"), on_start=lambda: started.append("dies"))
        queued = workers.submit(job(root, "b"), on_start=lambda: started.append("b"))
        loop_until(workers, lambda: (root / "pid.dies").exists(), "stage dies to begin")
        (root / "release").touch()
        loop_until(workers, lambda: dying.done() and queued.done(), "both stages to fail")
        with pytest.raises(BrokenExecutor, match="SIGKILL"):
            dying.result(timeout=0)
        with pytest.raises(BrokenExecutor):
            queued.result(timeout=0)
        assert started == ["dies"]
        assert not (root / "pid.b").exists()
    finally:
        workers.close()


def test_after_a_failure_the_next_stage_waits_for_resume_and_a_cancel_meanwhile_leaves_its_outputs(
    root: Path,
) -> None:
    """Fail fast: the broker may cancel what its pool queued behind a failed stage, and
    its cancel comes before its answer to the failure (the pool calls `resume` then)."""
    workers = WorkerProcesses(1)
    started: list[str] = []
    (root / "b.txt").write_text("last good run\n")
    try:
        warm = workers.submit(job(root, "a"))
        loop_until(workers, warm.done, "stage a")
        failing = workers.submit(job(root, "fails"), on_start=lambda: started.append("fails"))
        queued = workers.submit(job(root, "b"), on_start=lambda: started.append("b"))
        loop_until(workers, failing.done, "stage fails")
        assert outcome(failing).status == "failed"
        marker_path(root / "attempts" / "b").write_text("cancel\n")  # the broker's cancel
        assert started == ["fails"]
        workers.resume()
        loop_until(workers, queued.done, "stage b")
        assert outcome(queued).status == "cancelled", outcome(queued)
        assert started == ["fails", "b"]
        assert (root / "b.txt").read_text() == "last good run\n"  # never begun: untouched
        again = workers.submit(job(root, "c"))  # a cancel does not hold the next stage
        loop_until(workers, again.done, "stage c")
        assert outcome(again).status == "ran"
    finally:
        workers.close()


# Each import of the pipeline says which process made it.
IMPORT_LOGGED = """\
import os

with open("imported.log", "a") as f:
    f.write(f"{os.getpid()}\\n")
""" + PIPELINE


def importers(root: Path) -> list[int]:
    log = root / "imported.log"
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def test_a_worker_prepared_for_code_being_loaded_imports_it_at_once_and_is_adopted_as_the_first_worker(
    make_project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PIVOT_PRELOAD", "0")
    root = make_project({"pipeline.py": IMPORT_LOGGED})
    workers = WorkerProcesses(1)
    try:
        first = workers.submit(job(root, "a"))
        loop_until(workers, first.done, "stage a")
        old = pid_of(root, "a")
        workers.prepare(root)
        loop_until(workers, lambda: len(importers(root)) == 2, "the prepared worker's import")
        prepared = importers(root)[1]
        assert prepared != old and is_alive(old)  # the old code's worker stays until the new is accepted
        workers.replace(adopt=True)
        second = workers.submit(job(root, "b"))
        loop_until(workers, second.done, "stage b")
        assert outcome(second).status == "ran", outcome(second)
        assert pid_of(root, "b") == prepared
        assert importers(root) == [old, prepared]  # it did not import the pipeline again
        loop_until(workers, lambda: not is_alive(old), "the old worker to be gone")
    finally:
        workers.close()
    assert multiprocessing.active_children() == []


def test_a_worker_prepared_again_replaces_the_first_and_outlives_a_replace_that_does_not_adopt(
    make_project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PIVOT_PRELOAD", "0")
    root = make_project({"pipeline.py": IMPORT_LOGGED})
    workers = WorkerProcesses(1)
    try:
        workers.prepare(root)
        loop_until(workers, lambda: len(importers(root)) == 1, "the first prepared worker's import")
        workers.prepare(root)  # a second code change before the first was accepted
        loop_until(workers, lambda: len(importers(root)) == 2, "the second prepared worker's import")
        dropped, prepared = importers(root)
        loop_until(workers, lambda: not is_alive(dropped), "the first prepared worker to be gone")
        workers.replace()  # (a death's replace meanwhile: the old code's workers only)
        workers.replace(adopt=True)
        ran = workers.submit(job(root, "a"))
        loop_until(workers, ran.done, "stage a")
        assert outcome(ran).status == "ran", outcome(ran)
        assert pid_of(root, "a") == prepared
    finally:
        workers.close()
    assert multiprocessing.active_children() == []


def test_a_worker_prepared_under_other_third_party_modules_is_not_adopted(
    make_project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PIVOT_PRELOAD", "0")
    root = make_project({"pipeline.py": IMPORT_LOGGED})
    workers = WorkerProcesses(1)
    try:
        workers.configure(("json",), "key-before")
        workers.prepare(root)
        loop_until(workers, lambda: len(importers(root)) == 1, "the prepared worker's import")
        [prepared] = importers(root)
        # The new code's: an upgraded package (its server would have the old one imported).
        workers.configure(("json",), "key-after")
        workers.replace(adopt=True)
        ran = workers.submit(job(root, "a"))
        loop_until(workers, lambda: ran.done() and not is_alive(prepared), "stage a, and the prepared worker gone")
        assert outcome(ran).status == "ran", outcome(ran)
        assert pid_of(root, "a") != prepared
    finally:
        workers.close()
    assert multiprocessing.active_children() == []


def test_start_brings_up_at_most_jobs_workers_before_any_stage(root: Path, workers: WorkerProcesses) -> None:
    workers.start(5)  # two jobs: two workers
    loop_until(workers, lambda: len(workers.waitables()) == 1 + 2 * 2, "two workers to start")
    assert workers.started
    ran = workers.submit(job(root, "a"))
    loop_until(workers, ran.done, "stage a")
    assert outcome(ran).status == "ran"
    assert len(workers.waitables()) == 1 + 2 * 2  # no third worker


def test_a_pool_told_stages_will_run_starts_its_workers_before_the_first_dispatch(
    make_project: Callable[..., Path], proc_guard: ProcGuard,
) -> None:
    """`pivot repro` hands its pool the pipeline and how many stages it found stale
    (`--manifest`, `--start-workers`): the workers' forkserver starts with the pool
    process, and its workers with the pipeline, with no broker there to dispatch yet."""
    root = make_project({"pipeline.py": PIPELINE})
    given = write_manifest(run_loader(root))
    pool = proc_guard.track(subprocess.Popen(
        python_cmd("workers", "--root", str(root), "--work", "ipc://" + str(root / "nobody.sock"),
                   "--name", "p", "--jobs", "2", "--manifest", str(given), "--start-workers", "9",
                   "--broker-timeout", "60"),  # (it waits for no broker meanwhile)
        cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, text=True,
    ))

    def workers_up() -> list[ProcInfo]:
        group = [p for p in all_processes() if p.pgid == pool.pid and p.pid != pool.pid and is_live(p)]
        # The forkserver is the pool's child; the workers, the forkserver's.
        return [p for p in group if p.ppid not in (pool.pid, 1) and not any("resource_tracker" in a for a in p.cmdline)]

    up = wait_for(lambda: len(workers_up()) >= 2 and workers_up(), DEADLINE_S, "two workers")
    assert len(up) == 2, [p.show() for p in up]
    assert not given.exists()  # read (and removed) by the pool
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(timeout=DEADLINE_S) == 0


def test_workers_started_ahead_of_their_stages_import_the_pipeline_meanwhile(
    make_project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `pivot repro` knows stages will run: its pool's workers import the pipeline while
    # the broker plans, not in their first stage.
    monkeypatch.setenv("PIVOT_PRELOAD", "0")
    root = make_project({"pipeline.py": PIPELINE + '\n\nmark(f"import.{os.getpid()}")  # each import of this file\n'})

    def imports() -> list[str]:
        return sorted(p.name for p in root.glob("pid.import.*"))

    made = WorkerProcesses(1)
    try:
        made.start(1, root)
        loop_until(made, lambda: bool(imports()), "the worker's import of pipeline.py, with no stage given")
        future = made.submit(job(root, "a"))
        loop_until(made, future.done, "stage a")
        assert outcome(future).status == "ran", outcome(future)
        assert imports() == [f"pid.import.{pid_of(root, 'a')}"]  # its own, once: the stage did not import it again
    finally:
        made.close()


def test_a_worker_that_lingers_after_a_stage_runs_the_next_one_it_is_given(
    root: Path, workers: WorkerProcesses,
) -> None:
    # A chain's link run alone: its worker watches for the next job a while before it
    # sleeps (StageJob.linger_s); a job arriving then, or later, runs as any other.
    first = workers.submit(dataclasses.replace(job(root, "a"), linger_s=0.5))
    loop_until(workers, first.done, "stage a")
    second = workers.submit(dataclasses.replace(job(root, "b"), linger_s=0.5))
    loop_until(workers, second.done, "stage b, given while its worker lingers")
    third = workers.submit(job(root, "c"))
    loop_until(workers, third.done, "stage c")
    assert [outcome(f).status for f in (first, second, third)] == ["ran"] * 3
    assert pid_of(root, "a") == pid_of(root, "b") == pid_of(root, "c")  # the one idle worker, each time
