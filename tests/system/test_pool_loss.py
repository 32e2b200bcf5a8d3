"""The engine under process loss: the pool SIGKILLed mid-stage, and Ctrl-C on the CLI.

In both cases the CLI must exit promptly with the documented code and take every
process of the run with it: the pool, its loader and the worker that was running
the stage (the `proc_guard` fixture checks the whole tmp project as well).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from procs import (
    HELD_PIPELINE,
    ProcGuard,
    ProcInfo,
    alive,
    all_processes,
    children_of,
    describe,
    finished,
    held_stage_pid,
    is_live,
    mentions,
    of_kind,
    parse_events,
    release_held_stage,
    run_dir_leftovers,
    start_pivot,
    wait_exit,
    wait_for,
    write_files,
)

pytestmark = pytest.mark.timeout(60)

EXIT_WITHIN_S = 10.0
GONE_WITHIN_S = 3.0


def is_pool(info: ProcInfo) -> bool:
    """The CLI's child in a session of its own (`python -m workers`, or forked from the
    CLI with the pipeline: pivot/cli/stack.py); a loader it forks stays in the CLI's."""
    return info.pgid == info.pid


def find_pool(cli_pid: int) -> ProcInfo:
    pools = wait_for(
        lambda: [p for p in children_of(cli_pid) if is_pool(p)], 10, "the pool process"
    )
    assert len(pools) == 1, [p.show() for p in pools]
    return pools[0]


def run_processes(root: Path, cli_pid: int, pool: ProcInfo) -> list[ProcInfo]:
    """Every live process of the run except the CLI: the pool's group and whatever
    runs in the project."""
    return [
        p for p in all_processes()
        if is_live(p) and p.pid not in (cli_pid, os.getpid())
        and (p.pgid == pool.pgid or mentions(p, str(root)))
    ]


def assert_all_gone(procs: list[ProcInfo]) -> None:
    def survivors() -> list[ProcInfo]:
        return [p for p in procs if alive(p.pid)]

    try:
        wait_for(lambda: not survivors(), GONE_WITHIN_S, "the run's processes to exit")
    except AssertionError:
        raise AssertionError(
            "left behind: " + "; ".join(p.show() for p in survivors())
        ) from None


@pytest.fixture
def held_project(tmp_path: Path, proc_guard: ProcGuard) -> Path:
    return write_files(tmp_path / "held", {"pipeline.py": HELD_PIPELINE})


@pytest.mark.timeout(45)
def test_pool_killed_mid_stage_ends_the_run_with_code_1(
    held_project: Path, proc_guard: ProcGuard
) -> None:
    root = held_project
    cli = proc_guard.start(root, "repro", "--json")
    try:
        stage_pid = held_stage_pid(root)
        pool = find_pool(cli.pid)
        proc_guard.pgids.add(pool.pgid)
        assert pool.pgid == pool.pid, "the pool is not the leader of its own process group"
        assert alive(stage_pid)
        before = run_processes(root, cli.pid, pool)
        assert stage_pid in {p.pid for p in before}, [p.show() for p in before]

        os.kill(pool.pid, signal.SIGKILL)
        rc, out, err = wait_exit(cli, EXIT_WITHIN_S, "the CLI after its pool was killed")
    finally:
        release_held_stage(root)  # in case anything survived, let the stage finish

    assert rc == 1, describe((rc, out, err))
    events = parse_events(out)
    # The engine saw its pool die and said so: which pool, how, and the stage it lost
    # (no stage_finished: a lost stage would run again on a pool replacing it).
    [lost] = of_kind(events, "pool_lost")
    assert lost["stages"] == ["held"], lost
    assert "SIGKILL" in lost["reason"], lost
    assert "held" not in finished(events), finished(events)
    assert_all_gone(before)
    assert not alive(stage_pid), f"the loky worker running the stage (pid {stage_pid}) survived"
    assert not (root / ".pivot" / "stages" / "held.lock").exists()
    assert run_dir_leftovers(root) == []


@pytest.mark.timeout(45)
def test_ctrl_c_while_a_stage_runs_exits_130_and_cleans_up(
    held_project: Path, proc_guard: ProcGuard
) -> None:
    root = held_project
    cli = proc_guard.start(root, "repro", "--json")
    try:
        stage_pid = held_stage_pid(root)
        pool = find_pool(cli.pid)
        proc_guard.pgids.add(pool.pgid)
        before = run_processes(root, cli.pid, pool)

        os.kill(cli.pid, signal.SIGINT)
        rc, out, err = wait_exit(cli, EXIT_WITHIN_S, "the CLI after SIGINT")
    finally:
        release_held_stage(root)

    assert rc == 130, describe((rc, out, err))
    assert "Traceback" not in err, describe((rc, out, err))
    parse_events(out)  # whatever was printed is still valid JSON lines
    assert_all_gone(before)
    assert not alive(stage_pid), f"the loky worker running the stage (pid {stage_pid}) survived"
    assert not (root / ".pivot" / "stages" / "held.lock").exists()
    assert not (root / "held.txt").exists()
    assert run_dir_leftovers(root) == []


@pytest.mark.timeout(45)
@pytest.mark.parametrize("preload", ["1", "0"])
def test_a_stale_runs_pool_holds_none_of_the_clis_files(
    held_project: Path, proc_guard: ProcGuard, preload: str,
) -> None:
    """With the pipeline loaded, `pivot repro` forks its pool (no interpreter to start:
    pivot/cli/stack.py); `PIVOT_PRELOAD=0` starts `python -m workers` instead. Either way
    the pool holds no descriptor of the CLI's: not the run directory's lock (a pool that
    outlived a killed CLI would keep the next run out), not its output pipes."""
    root = held_project
    cli = proc_guard.track(start_pivot(root, "repro", "--json", env={**os.environ, "PIVOT_PRELOAD": preload}))
    try:
        held_stage_pid(root)
        pool = find_pool(cli.pid)
        proc_guard.pgids.add(pool.pgid)
        fds = Path(f"/proc/{pool.pid}/fd")
        opened = {os.readlink(fd) for fd in fds.iterdir()}
        assert str(root / ".pivot" / "run" / "lock") not in opened, opened
        cli_pipes = {os.readlink(f"/proc/{cli.pid}/fd/{n}") for n in (1, 2)}
        assert not cli_pipes & opened, (cli_pipes, opened)
        assert os.readlink(fds / "1") == str(root / ".pivot" / "logs" / "pool.log")
        spawned = any(pool.cmdline[i : i + 2] == ["-m", "workers"] for i in range(len(pool.cmdline) - 1))
        assert spawned == (preload == "0"), pool.show()
    finally:
        release_held_stage(root)
    rc, out, err = wait_exit(cli, EXIT_WITHIN_S, "the run")
    assert rc == 0, describe((rc, out, err))
    assert finished(parse_events(out))["held"]["status"] == "ran"
