"""`pivot repro` (and friends) end to end: the real CLI on temporary projects.

Every test here starts real processes (CLI, broker thread, pool, loader, loky
workers); the `proc_guard` fixture (tests/conftest.py) fails a test that leaves any of
them behind, or leaves sockets in `.pivot/run/`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from procs import (
    HELD_PIPELINE,
    ProcGuard,
    alive,
    check_wave_contract,
    describe,
    finished,
    held_stage_pid,
    of_kind,
    one,
    parse_events,
    pivot_cmd,
    release_held_stage,
    run_dir_leftovers,
    run_pivot,
    wait_exit,
    wait_for,
)

import pivot

pytestmark = pytest.mark.timeout(60)

STAGES = ["prepare", "features", "fit", "evaluate"]
OUTPUTS = ["data/clean.csv", "data/features.csv", "model/model.json", "metrics.json"]
REPO = Path(__file__).resolve().parents[2]
# Pivot's own source folders: no traceback shown to a user may point into them.
OWN_SOURCES = [str(Path(pivot.__file__).resolve().parent), str(REPO / "broker"), str(REPO / "workers")]

MakeProject = Callable[..., Path]


def repro(root: Path, *args: str, timeout: float = 30.0) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """`pivot repro --json ARGS`: the result and its parsed events. Checks that the run
    directory holds nothing but `lock` afterwards."""
    result = run_pivot(root, "repro", "--json", *args, timeout=timeout)
    assert result.stdout.isascii(), "JSON lines must be plain ASCII (docs/events.md)"
    events = parse_events(result.stdout)
    check_wave_contract(events)
    assert run_dir_leftovers(root) == [], describe(result)
    return result, events


def statuses(events: list[dict[str, Any]]) -> dict[str, str]:
    return {name: e["status"] for name, e in finished(events).items()}


def reason_codes(events: list[dict[str, Any]]) -> dict[str, str]:
    return {name: e["reason_code"] for name, e in finished(events).items()}


def traceback_files(text: str) -> list[str]:
    return re.findall(r'File "([^"]+)", line \d+', text)


def assert_no_own_frames(text: str) -> None:
    for path in traceback_files(text):
        assert not any(path.startswith(src) for src in OWN_SOURCES), (
            f"a traceback frame from Pivot's own source {path!r}:\n{text}"
        )
        assert "/click/" not in path, f"a click frame {path!r}:\n{text}"


def stage_src(body: str) -> str:
    """A pipeline.py: `from pivot import stage` plus `body` (dedented)."""
    return "import os\nimport sys\n\nfrom pivot import stage\n\n" + textwrap.dedent(body)


def sorted_keys_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    assert keys == sorted(keys), f"keys not sorted: {keys}"
    return dict(pairs)


# --- the quickstart: first run, second run, changes ----------------------------------


def test_first_run_runs_every_stage_and_second_run_skips_them(project: Path) -> None:
    result, events = repro(project)
    assert result.returncode == 0, describe(result)

    assert one(events, "wave_started")["stages"] == STAGES
    assert statuses(events) == dict.fromkeys(STAGES, "ran")
    wave = one(events, "wave_finished")
    assert sorted(wave["ran"]) == sorted(STAGES)
    assert wave["skipped"] == wave["failed"] == wave["blocked"] == wave["cancelled"] == []
    assert [e["stage"] for e in of_kind(events, "stage_started")] == STAGES

    for out in OUTPUTS:
        assert (project / out).is_file(), f"{out} was not written"
    metrics = json.loads((project / "metrics.json").read_text())
    assert {"mse", "r2", "n_test"} <= set(metrics)

    for name in STAGES:
        lock = project / ".pivot" / "stages" / f"{name}.lock"
        assert lock.is_file(), f"no lock file for {name}"
        data = json.loads(lock.read_text(), object_pairs_hook=sorted_keys_hook)
        assert data["stage"] == name
        assert set(data) == {"stage", "code", "code_parts", "params", "deps", "outs"}
    fit_lock = json.loads((project / ".pivot" / "stages" / "fit.lock").read_text())
    assert fit_lock["params"] == {"lr": 0.05, "epochs": 300}  # params.yaml overrides 200

    again, events2 = repro(project)
    assert again.returncode == 0, describe(again)
    assert of_kind(events2, "stage_started") == []
    assert statuses(events2) == dict.fromkeys(STAGES, "skipped")
    assert reason_codes(events2) == dict.fromkeys(STAGES, "up_to_date")
    assert sorted(one(events2, "wave_finished")["skipped"]) == sorted(STAGES)


def test_runs_that_start_workers_leave_the_pools_stderr_empty(project: Path) -> None:
    """pool.log is the pool's standard error: a warning there is something gone wrong.
    One was, in most runs: the resource tracker killed while loky still used it, started
    anew ("died unexpectedly"), or left to report semaphores loky never closed (workers/
    executors.py `close`, workers/pool.py `_shutdown`)."""
    pool_log = project / ".pivot" / "logs" / "pool.log"
    for _ in range(3):
        result = run_pivot(project, "repro", "-f", "--json", timeout=60)
        assert result.returncode == 0, describe(result)
        assert not pool_log.exists() or pool_log.read_text() == "", pool_log.read_text()


def test_a_reader_that_goes_away_stops_the_run_silently_and_the_next_run_finishes_it(project: Path) -> None:
    """`pivot repro | head -1`: exit 1 without a word (docs/cli.md, exit codes), no
    process left behind (proc_guard), and what it left is a state the next run completes."""
    proc = subprocess.Popen(
        [*pivot_cmd(), "repro", "--display", "plain"], cwd=project, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()  # the wave's first line: the run is under way
        assert first.startswith("wave 1"), first
        proc.stdout.close()
        rc = proc.wait(30)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert (rc, err) == (1, ""), f"exit {rc}, standard error: {err!r}"

    result, events = repro(project)
    assert result.returncode == 0, describe(result)
    assert set(statuses(events).values()) <= {"ran", "skipped"}, statuses(events)
    again, events2 = repro(project)
    assert statuses(events2) == dict.fromkeys(STAGES, "skipped"), describe(again)
    for out in OUTPUTS:
        assert (project / out).is_file(), f"{out} was not written"


def test_a_command_started_with_its_standard_output_closed_runs_without_a_traceback(project: Path) -> None:
    """`pivot repro >&-`: Python starts with sys.stdout None (it was an AttributeError)."""
    for args in (("repro",), ("status",)):
        done = subprocess.run(
            [*pivot_cmd(), *args], cwd=project, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            timeout=60, start_new_session=True, preexec_fn=lambda: os.close(1),
        )
        assert (done.returncode, done.stderr) == (0, ""), f"pivot {args[0]}: {describe(done)}"
    _, events = repro(project)
    assert statuses(events) == dict.fromkeys(STAGES, "skipped")


def test_a_repro_killed_outright_stops_its_pool_at_once_and_the_next_run_is_its_own(
    make_project: MakeProject, proc_guard: ProcGuard,
) -> None:
    """SIGKILL (no handler runs): its pool, a process of its own, must not run on beside
    the next run (which once stored a truncated output in the run cache under the killed
    run's inputs): it stops its stages when its engine's process exits, and a new engine
    waits until it has (pivot/transport/rundir.py)."""
    root = make_project({"pipeline.py": HELD_PIPELINE})
    first = proc_guard.start(root, "repro", "--json")
    held_stage_pid(root)
    (root / "held.started").unlink()  # the next one is the second run's
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    second = proc_guard.start(root, "repro", "--json")
    held_stage_pid(root)
    release_held_stage(root)
    rc, out, err = wait_exit(second, 30, "the second repro")
    assert rc == 0, describe((rc, out, err))
    events = parse_events(out)
    assert statuses(events) == {"held": "ran", "after": "ran"}, describe((rc, out, err))
    assert (root / "after.txt").read_text() == "HELD\n"
    records = (root / ".pivot" / "logs" / "pool.jsonl").read_text()
    assert f"its engine (pid {first.pid}) exited" in records
    status = run_pivot(root, "status")
    assert status.returncode == 0 and "everything is up to date" in status.stdout, describe(status)


READ_WHEN_TOLD = stage_src(
    """\
    import time


    def wait_for(name):
        deadline = time.monotonic() + 30
        while not os.path.exists(name):
            if time.monotonic() > deadline:
                raise TimeoutError(name)
            time.sleep(0.01)


    @stage(deps=["in.txt"], outs=["out.txt"])
    def reader() -> None:
        open("started", "w").close()
        wait_for("read-now")
        text = open("in.txt").read()
        open("read", "w").close()
        wait_for("finish")
        with open("out.txt", "w") as f:
            f.write("OUT:" + text)
    """
)


def test_a_dep_written_while_its_stage_ran_leaves_it_stale_even_once_put_back(
    make_project: MakeProject, proc_guard: ProcGuard,
) -> None:
    """The stage was decided on v1 and read v3, saved while it ran, put back to v1 before
    it ended: which version it read is not known, so its lock matches none (its output
    said OUT:v3 under a lock of v1, `pivot status` saying "up to date")."""
    root = make_project({"pipeline.py": READ_WHEN_TOLD, "in.txt": "v1\n"})
    proc = proc_guard.start(root, "repro", "--json")
    wait_for((root / "started").exists, 20, "the stage to start")
    (root / "in.txt").write_text("v3\n")
    (root / "read-now").touch()
    wait_for((root / "read").exists, 20, "the stage to read its dep")
    (root / "in.txt.tmp").write_text("v1\n")
    os.replace(root / "in.txt.tmp", root / "in.txt")  # put back as an editor saves
    (root / "finish").touch()
    rc, out, err = wait_exit(proc, 30, "pivot repro")
    assert rc == 0, describe((rc, out, err))
    assert (root / "out.txt").read_text() == "OUT:v3\n"
    status = run_pivot(root, "status")
    assert "reader: stale" in status.stdout, describe(status)
    again = run_pivot(root, "repro")  # its markers are all there: it runs through
    assert again.returncode == 0, describe(again)
    assert (root / "out.txt").read_text() == "OUT:v1\n"
    assert "everything is up to date" in run_pivot(root, "status").stdout


def test_up_and_down_beside_a_running_repro_say_what_it_is(make_project: MakeProject, proc_guard: ProcGuard) -> None:
    """`pivot up` beside a `pivot repro` said an engine ran that `pivot repro` asks and
    `pivot down` stops; `pivot down` then said no engine was running (exit 0)."""
    root = make_project({"pipeline.py": HELD_PIPELINE})
    running = proc_guard.start(root, "repro", "--json")
    held_stage_pid(root)
    up = run_pivot(root, "up")
    assert up.returncode == 2 and f"a `pivot repro` (pid {running.pid}) is running" in up.stderr, describe(up)
    assert "`pivot down` stops it" not in up.stderr
    down = run_pivot(root, "down")
    assert down.returncode == 1 and f"a `pivot repro` (pid {running.pid}) is running" in down.stderr, describe(down)
    release_held_stage(root)
    rc, out, err = wait_exit(running, 30, "the repro")
    assert rc == 0, describe((rc, out, err))
    after = run_pivot(root, "down")
    assert after.returncode == 0 and "no Pivot engine is running" in after.stderr, describe(after)


READ_FOLDER_WHEN_TOLD = READ_WHEN_TOLD.replace('deps=["in.txt"]', 'deps=["in/"]').replace(
    'text = open("in.txt").read()',
    'text = "".join(f"{n}={open(os.path.join(\'in\', n)).read()}" for n in sorted(os.listdir("in")))',
)


@pytest.mark.parametrize("edit", ["changed", "added"])
def test_a_folder_dep_written_while_its_stage_ran_leaves_it_stale_even_once_put_back(
    make_project: MakeProject, proc_guard: ProcGuard, edit: str,
) -> None:
    """As above, a file in a folder dependency: changed (or a file added) after the
    stage began, read, put back (removed) before it ended. Its output said what no clean
    run would (x.txt=v3, or y.txt), `pivot status` "up to date", and the run cache gave
    it back under the folder as decided (after `rm out.txt`) until a forced run."""
    root = make_project({"pipeline.py": READ_FOLDER_WHEN_TOLD, "in/x.txt": "v1\n"})
    proc = proc_guard.start(root, "repro", "--json")
    wait_for((root / "started").exists, 20, "the stage to start")
    changed = root / "in" / ("x.txt" if edit == "changed" else "y.txt")
    changed.write_text("v3\n")
    (root / "read-now").touch()
    wait_for((root / "read").exists, 20, "the stage to read its dep")
    if edit == "changed":
        (root / "in" / "x.tmp").write_text("v1\n")
        os.replace(root / "in" / "x.tmp", changed)  # put back as an editor saves
    else:
        changed.unlink()
    (root / "finish").touch()
    rc, out, err = wait_exit(proc, 30, "pivot repro")
    assert rc == 0, describe((rc, out, err))
    assert (root / "out.txt").read_text() != "OUT:x.txt=v1\n"
    status = run_pivot(root, "status")
    assert "reader: stale" in status.stdout, describe(status)
    (root / "out.txt").unlink()
    for name in ("started", "read"):
        (root / name).unlink()
    again = run_pivot(root, "repro")  # run, not restored from the run cache: its markers are there
    assert again.returncode == 0 and "restored" not in again.stdout, describe(again)
    assert (root / "out.txt").read_text() == "OUT:x.txt=v1\n"
    assert "everything is up to date" in run_pivot(root, "status").stdout


FOLDER_COUNT = stage_src(
    """\
    @stage(outs=["data/many/"])
    def many() -> None:
        os.makedirs("data/many/sub", exist_ok=True)
        for i in range(5):
            with open(f"data/many/sub/f{i}.txt", "w") as f:
                f.write(f"{i}\\n")


    @stage(deps=["data/"], outs=["count.txt"])
    def count() -> None:
        with open("count.txt", "w") as f:
            f.write(str(sum(len(files) for _, _, files in os.walk("data"))))
    """
)


def test_a_partial_copy_a_killed_process_left_beside_an_output_is_neither_read_nor_counted(
    make_project: MakeProject,
) -> None:
    """A `pivot checkout` (or a restore) killed outright while it copied an output left
    the copy beside it (`.pivot-tmp-PID-...`) for good: a stage reading the folder above
    counted its files, `pivot status` saying "up to date". It is no part of a folder's
    digest, is removed before a stage reading the folder runs, and where an output is
    placed in its folder."""
    root = make_project({"pipeline.py": FOLDER_COUNT})
    first = run_pivot(root, "repro")
    assert first.returncode == 0 and (root / "count.txt").read_text() == "5", describe(first)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)  # (a pid no process has now)

    def leave_copy() -> Path:
        copy = root / "data" / f".pivot-tmp-{dead}-0a1b2c3d4e5f"
        shutil.copytree(root / "data" / "many", copy)
        return copy

    copy = leave_copy()
    assert "everything is up to date" in run_pivot(root, "status").stdout
    # A user's file whose name merely begins so is content like any other: counted, kept.
    mine = root / "data" / ".pivot-tmp-notes.txt"
    mine.write_text("mine\n")
    assert "count: stale" in run_pivot(root, "status").stdout
    forced = run_pivot(root, "repro", "-f", "count")
    assert forced.returncode == 0, describe(forced)
    assert (root / "count.txt").read_text() == "6" and not copy.exists() and mine.read_text() == "mine\n"
    mine.unlink()
    ran = run_pivot(root, "repro")
    assert ran.returncode == 0 and (root / "count.txt").read_text() == "5", describe(ran)
    copy = leave_copy()
    shutil.rmtree(root / "data" / "many")
    put = run_pivot(root, "checkout", "many")
    assert put.returncode == 0 and not copy.exists() and len(os.listdir(root / "data" / "many" / "sub")) == 5, describe(put)
    assert "everything is up to date" in run_pivot(root, "status").stdout


IMPORT_COUNTING = stage_src(
    """\
    with open("imports.log", "a") as _log:  # one line each time pipeline.py is imported
        _log.write("imported\\n")


    @stage(deps=["in.txt"], outs=["a.txt"])
    def a() -> None:
        with open("a.txt", "w") as f:
            f.write(open("in.txt").read().upper())


    @stage(deps=["a.txt"], outs=["b.txt"])
    def b() -> None:
        with open("b.txt", "w") as f:
            f.write(open("a.txt").read() + "b\\n")
    """
)


def test_a_run_with_nothing_to_do_starts_no_engine_and_a_stale_one_loads_the_pipeline_once(
    make_project: MakeProject,
) -> None:
    """pivot/cli/settled.py: a no-op is decided in the CLI (no pool starts: its role log
    is not even opened), with the engine's events; a run with something to do goes to the
    engine, whose pool takes the pipeline the CLI loaded instead of importing it again."""
    root = make_project({"pipeline.py": IMPORT_COUNTING, "in.txt": "x\n"})
    imports = root / "imports.log"
    pool_log = root / ".pivot" / "logs" / "pool.log"
    result, events = repro(root, "-j", "1")
    assert result.returncode == 0, describe(result)
    assert statuses(events) == {"a": "ran", "b": "ran"}
    # The CLI's load, then its one worker's import.
    assert imports.read_text().count("imported") == 2, imports.read_text()
    pool_log.unlink()
    imports.write_text("")

    result, events = repro(root)
    assert result.returncode == 0, describe(result)
    assert statuses(events) == {"a": "skipped", "b": "skipped"}
    assert [e["event"] for e in events] == [
        "pipeline_loaded", "wave_started", "stage_finished", "stage_finished", "wave_finished",
    ]
    assert not pool_log.exists(), "a pool was started for a run with nothing to do"
    assert imports.read_text().count("imported") == 1  # the CLI's loader only

    (root / "in.txt").write_text("y\n")
    imports.write_text("")
    result, events = repro(root, "-j", "1")
    assert result.returncode == 0, describe(result)
    assert statuses(events) == {"a": "ran", "b": "ran"}
    assert (root / "b.txt").read_text() == "Y\nb\n"
    # The CLI's load and the worker's: the pool did not load it again.
    assert imports.read_text().count("imported") == 2, imports.read_text()


SLOW_SECOND = stage_src(
    """\
    import time


    @stage(outs=["a.txt"])
    def a() -> None:
        with open("a.txt", "w") as f:
            f.write("a\\n")


    @stage(deps=["a.txt"], outs=["b.txt"])
    def b() -> None:
        time.sleep(0.1)  # its work: a.txt was written well before the run ends
        with open("b.txt", "w") as f:
            f.write(open("a.txt").read() + "b\\n")
    """
)


def test_outputs_written_during_a_run_are_trusted_by_the_next_check(make_project: MakeProject) -> None:
    """A worker hashes an output moments after writing it: a racy row, which the next
    check would read again (the first no-op after a cold run was 20-30 % slower). The
    pool hashes those rows again before it exits (workers/pool.py `_refresh_written`)."""
    from pivot.state.statecache import StateCache

    root = make_project({"pipeline.py": SLOW_SECOND})
    result, events = repro(root)
    assert result.returncode == 0, describe(result)
    assert statuses(events) == {"a": "ran", "b": "ran"}
    with StateCache(root / ".pivot" / "state.db") as hashes:
        hashes.hash_path(root / "a.txt")
        assert hashes.reads == 0, "a.txt's row is still racy: the next check reads it again"


DATA_READERS = stage_src(
    """\
    @stage(deps=["data/a.txt"], outs=["a.txt"])
    def a() -> None:
        open("a.txt", "w").write(open("data/a.txt").read())


    for n in ("b", "c", "d"):  # one is handed to a's worker ahead; its pool decides the others
        @stage(name=n, deps=["a.txt", f"data/{n}.txt"], outs=[f"{n}.txt"])
        def follow(n: str = n) -> None:
            open(f"{n}.txt", "w").write(open("a.txt").read() + open(f"data/{n}.txt").read())
    """
)


def test_the_data_files_a_run_hashed_are_not_read_again_by_the_next_check(make_project: MakeProject) -> None:
    """The pool decides a stage in its loop reading only small files, and stored none of
    their rows (its loop must not wait on another writer): the first no-op after a cold
    run read every data file a stage reads again. They go with its workers' rows now."""
    from pivot.state.statecache import StateCache

    data = {f"data/{n}.txt": f"{n}\n" for n in "abcd"}
    root = make_project({"pipeline.py": DATA_READERS, **data})
    for name in data:  # written long before: no row of theirs is racy
        os.utime(root / name, (1_700_000_000, 1_700_000_000))
    result, events = repro(root, "-j", "2")
    assert result.returncode == 0, describe(result)
    assert statuses(events) == {"a": "ran", "b": "ran", "c": "ran", "d": "ran"}
    with StateCache(root / ".pivot" / "state.db") as hashes:
        for name in data:
            assert hashes.hash_path(root / name) == hashes.recorded(root / name)
        assert hashes.reads == 0, "a data file's row was not stored: the next check reads it again"


def many_stages(n: int) -> str:
    return stage_src(
        f"""\
        def copy(i: int = 0) -> None:
            os.makedirs("out", exist_ok=True)
            with open(f"data/{{i}}.txt") as f, open(f"out/{{i}}.txt", "w") as out:
                out.write(f.read())


        for i in range({n}):
            stage(name=f"s{{i}}", deps=[f"data/{{i}}.txt"], outs=[f"out/{{i}}.txt"], params={{"i": i}})(copy)
        """
    )


@pytest.mark.parametrize(("stages", "after_the_loader"), [(300, True), (900, False)])
def test_a_project_with_many_locks_has_them_read_beside_the_command_with_the_same_answers(
    make_project: MakeProject, stages: int, after_the_loader: bool,
) -> None:
    """Past ~200 locks the `pivot` script reads them, and hashes what they name, in a
    process of its own (pivot/launch/early.py), once the loader has exited (up to ~700)
    or at once: `status` and a run decide as before."""
    from pivot.launch.early import MANY_LOCKS_BYTES, SOME_LOCKS_BYTES

    root = make_project({"pipeline.py": many_stages(stages), **{f"data/{i}.txt": f"{i}\n" for i in range(stages)}})
    result, events = repro(root, timeout=120)
    assert result.returncode == 0, describe(result)
    assert set(statuses(events).values()) == {"ran"} and len(events) > stages
    size = (root / ".pivot" / "stages").stat().st_size
    assert size > SOME_LOCKS_BYTES, "too few locks to fork their reader"
    assert (size < MANY_LOCKS_BYTES) == after_the_loader, size

    (root / "data" / "7.txt").write_text("seven\n")
    (root / "out" / "11.txt").write_text("hand-edited\n")
    status = subprocess.run([*pivot_cmd(), "status", "--json"], cwd=root, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert status.returncode == 0, describe(status)
    stale = {name for name, row in json.loads(status.stdout)["stages"].items() if row["stale"]}
    assert stale == {"s7", "s11"}
    result, events = repro(root, timeout=60)
    assert result.returncode == 0, describe(result)
    ran = {name for name, status_ in statuses(events).items() if status_ != "skipped"}
    assert ran == {"s7", "s11"}
    assert (root / "out" / "7.txt").read_text() == "seven\n" and (root / "out" / "11.txt").read_text() == "11\n"
    result, events = repro(root, timeout=60)
    assert result.returncode == 0, describe(result)
    assert set(statuses(events).values()) == {"skipped"}


def test_runs_that_start_workers_leave_nothing_in_the_temp_folder(project: Path, tmp_path: Path) -> None:
    """multiprocessing's forkserver keeps its socket in a temp folder that the pool,
    ending in os._exit, never removed: one `pymp-*` folder per run was left (25,000 on
    the development machine). This TMPDIR is also too long for the socket's path: the
    folder goes to /tmp then (the workers could not start)."""
    temp = tmp_path / "temp"
    temp.mkdir()
    assert len(str(temp)) > 60, temp
    before = set(Path("/tmp").glob("pivot-mp-*"))

    def left_behind() -> set[Path]:
        """New folders of processes now gone (a pool running for another command on this
        machine has its own, named for its pid: not one this test's runs left)."""
        new = set(Path("/tmp").glob("pivot-mp-*")) - before
        return {p for p in new if not alive(int(p.name.split("-")[2]))}

    for _ in range(2):
        result = subprocess.run(
            [*pivot_cmd(), "repro", "-f", "--json"], cwd=project, capture_output=True, text=True,
            timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, "TMPDIR": str(temp)},
        )
        assert result.returncode == 0, describe(result)
        assert finished(parse_events(result.stdout))["fit"]["status"] == "ran"
        assert sorted(p.name for p in temp.iterdir()) == []
        assert left_behind() == set()


def test_malformed_raw_row_reruns_prepare_only_early_cutoff(ran_project: Path) -> None:
    raw = ran_project / "data" / "raw.csv"
    assert raw.read_text().endswith("\n")
    clean_before = (ran_project / "data" / "clean.csv").read_bytes()
    with raw.open("a") as f:
        f.write("x,1\n")

    result, events = repro(ran_project)
    assert result.returncode == 0, describe(result)
    assert statuses(events) == {
        "prepare": "ran", "features": "skipped", "fit": "skipped", "evaluate": "skipped",
    }
    assert reason_codes(events)["prepare"] == "deps_changed"
    assert [e["stage"] for e in of_kind(events, "stage_started")] == ["prepare"]
    assert (ran_project / "data" / "clean.csv").read_bytes() == clean_before


def test_param_edit_reruns_fit_and_what_its_output_changed(ran_project: Path) -> None:
    params = ran_project / "params.yaml"
    text = params.read_text()
    assert "epochs: 300" in text
    params.write_text(text.replace("epochs: 300", "epochs: 50"))

    result, events = repro(ran_project)
    assert result.returncode == 0, describe(result)
    assert statuses(events) == {
        "prepare": "skipped", "features": "skipped", "fit": "ran", "evaluate": "ran",
    }
    codes = reason_codes(events)
    assert codes["fit"] == "params_changed"
    assert codes["evaluate"] == "upstream_changed"  # model/model.json, written by fit
    assert "epochs" in finished(events)["fit"]["reason"]
    lock = json.loads((ran_project / ".pivot" / "stages" / "fit.lock").read_text())
    assert lock["params"]["epochs"] == 50


def test_repro_of_one_stage_runs_only_it_and_its_upstream(project: Path) -> None:
    result, events = repro(project, "features")
    assert result.returncode == 0, describe(result)
    assert one(events, "wave_started")["stages"] == ["prepare", "features"]
    assert statuses(events) == {"prepare": "ran", "features": "ran"}
    assert (project / "data" / "features.csv").is_file()
    assert not (project / "model").exists()
    assert not (project / ".pivot" / "stages" / "fit.lock").exists()


def test_unknown_stage_name_is_a_usage_error(project: Path) -> None:
    result = run_pivot(project, "repro", "nosuchstage")
    assert result.returncode == 2, describe(result)
    assert "nosuchstage" in result.stderr
    assert "Traceback" not in result.stderr, describe(result)
    assert run_dir_leftovers(project) == []


@pytest.mark.parametrize(("args", "direct"), [
    (["repro", "--display", "plain", "-j", "2"], True),
    (["repro", "nosuchstage", "--display", "plain"], True),
    (["status", "--explain"], True),
    (["status", "nosuchstage"], True),
    (["repro", "--dry-run"], False),  # (the test's own check: click is seen when it parses)
])
def test_the_common_repro_and_status_lines_run_without_importing_click(
    project: Path, args: list[str], direct: bool,
) -> None:
    """pivot/cli/direct.py: no process of such a command imports click (a no-op's
    critical path, docs/benchmarks.md); its errors end as click's would (one line, exit 2)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-P", "-c", "from pivot.cli.entry import main; main()", *args],
        cwd=project, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    imported = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines() if "import time:" in line}
    assert "pivot.pipeline.manifest" in imported, describe(result)  # (the imports were seen)
    assert ("click" not in imported) is direct, describe(result)
    messages = [line for line in result.stderr.splitlines() if "import time:" not in line]
    if "nosuchstage" in args:
        assert result.returncode == 2, describe(result)
        assert messages == [
            "error: unknown stage(s): nosuchstage; stages are: prepare, features, fit, evaluate"
        ], describe(result)
    else:
        assert result.returncode == 0 and messages == [], describe(result)
        assert "prepare" in result.stdout, describe(result)


def _cli(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*pivot_cmd(), *args], cwd=root, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
        start_new_session=True, env={**os.environ, **(env or {})},
    )


def test_odd_command_lines_end_in_one_line_each_never_a_traceback(project: Path) -> None:
    """Found comparing the lines run without click with click's: a stage name of other
    bytes, a -j past what a pool can start, a name holding terminal escapes (shown, not
    obeyed: stripped in a log, as click.echo did)."""
    for args, said in [
        (("repro", os.fsdecode(b"fit\xff")), "error: unknown stage 'fit\\udcff': it is not UTF-8 text"),
        (("status", os.fsdecode(b"fit\xff")), "error: unknown stage 'fit\\udcff': it is not UTF-8 text"),
        (("repro", "-j", "99999999999999"), "error: Invalid value for '-j' / '--jobs': 99999999999999 is not in"),
        (("repro", "\x1b[31mred"), "error: unknown stage(s): red; stages are: prepare"),
        (("status", "\x1b[31mred"), "error: unknown stage(s): red; stages are: prepare"),
    ]:
        result = _cli(project, *args)
        err = result.stderr.decode()
        assert result.returncode == 2 and err.startswith(said) and len(err.splitlines()) == 1, (args, err)
        assert "Traceback" not in err and "\x1b" not in err, (args, err)


def test_an_ascii_terminal_gets_utf8_not_a_traceback(make_project: MakeProject) -> None:
    """PYTHONIOENCODING=ascii (or LC_ALL=C without UTF-8 mode): text beyond ASCII (a
    param, a reason) is written as UTF-8, as click made it; it was a traceback of
    `pivot status` and of the plain display."""
    pipeline_py = "from pivot import stage\n\n\n@stage(outs=['o.txt'])\ndef lab(label: str = 'caf\\u00e9') -> None:\n    open('o.txt', 'w').write(label)\n"
    root = make_project({"pipeline.py": pipeline_py})
    assert run_pivot(root, "repro").returncode == 0
    (root / "pipeline.py").write_text(pipeline_py.replace("caf\\u00e9", "th\\u00e9"))
    for env in ({"PYTHONIOENCODING": "ascii"}, {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}):
        status = _cli(root, "status", env=env)
        assert status.returncode == 0, status.stderr.decode()
        assert "label 'café' -> 'thé'" in status.stdout.decode(), status.stdout
    ran = _cli(root, "repro", "--display", "plain", env={"PYTHONIOENCODING": "ascii"})
    assert ran.returncode == 0 and "label 'café' -> 'thé'" in ran.stdout.decode(), ran.stderr.decode()


def test_ctrl_c_ends_the_terminals_line_then_says_interrupted(make_project: MakeProject) -> None:
    """As click does (its Abort): the ^C the terminal echoed is ended first."""
    root = make_project({"pipeline.py": HELD_PIPELINE})
    proc = subprocess.Popen([*pivot_cmd(), "repro", "--display", "plain"], cwd=root, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        held_stage_pid(root)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        release_held_stage(root)
    assert proc.returncode == 130 and err.decode().endswith("\ninterrupted\n"), err


def test_a_folder_dep_holding_a_link_to_nothing_runs_its_stage(make_project: MakeProject) -> None:
    """An editor's lock file in a folder dep (Emacs' `.#name`, a link to nothing) made the
    folder "missing": the stage failed "dependency missing" while the user edited."""
    root = make_project({
        "data/a.txt": "a\n",
        "pipeline.py": "import os\nfrom pivot import stage\n\n\n@stage(deps=['data/'], outs=['n.txt'])\n"
                       "def count() -> None:\n    open('n.txt', 'w').write(str(len(os.listdir('data'))))\n",
    })
    (root / "data" / ".#a.txt").symlink_to("user@host.1234:1700000000")
    result, events = repro(root)
    assert result.returncode == 0, describe(result)
    assert statuses(events) == {"count": "ran"} and (root / "n.txt").read_text() == "2"
    assert run_pivot(root, "status").stdout.splitlines()[-1] == "everything is up to date"


# --- failures inside stages ----------------------------------------------------------

FAILING = stage_src(
    """\
    @stage(outs=["a.txt"])
    def broken() -> None:
        rows = [1, 2, 3]
        raise ValueError(f"bad rows in broken stage: {len(rows)}")


    @stage(deps=["a.txt"], outs=["b.txt"])
    def downstream() -> None:
        with open("b.txt", "w") as f:
            f.write("b\\n")


    @stage(outs=["c.txt"])
    def unrelated() -> None:
        with open("c.txt", "w") as f:
            f.write("c\\n")
    """
)


def test_failing_stage_fails_fast(make_project: MakeProject) -> None:
    root = make_project({"pipeline.py": FAILING})
    # One slot, so `unrelated` is still waiting when `broken` fails.
    result, events = repro(root, "-j", "1")
    assert result.returncode == 1, describe(result)
    assert statuses(events) == {"broken": "failed", "downstream": "blocked", "unrelated": "cancelled"}

    error = finished(events)["broken"]["error"]
    assert error is not None
    assert 'raise ValueError(f"bad rows in broken stage: {len(rows)}")' in error
    assert f'File "{root / "pipeline.py"}", line 9, in broken' in error
    assert "ValueError: bad rows in broken stage: 3" in error
    assert traceback_files(error) == [str(root / "pipeline.py")], error
    assert_no_own_frames(error)
    assert "ValueError" in finished(events)["broken"]["reason"]

    wave = one(events, "wave_finished")
    assert (wave["failed"], wave["blocked"], wave["cancelled"]) == (["broken"], ["downstream"], ["unrelated"])
    assert not (root / "c.txt").exists()
    assert not (root / ".pivot" / "stages" / "broken.lock").exists()


INDEPENDENT = stage_src(
    """\
    @stage(outs=["a.txt"])
    def first() -> None:
        open("a.txt", "w").write("a\\n")


    @stage(outs=["b.txt"])
    def second() -> None:
        open("b.txt", "w").write("b\\n")


    @stage(outs=["c.txt"])
    def third() -> None:
        open("c.txt", "w").write("c\\n")
    """
)


def test_with_one_slot_the_displays_see_one_stage_running_at_a_time(make_project: MakeProject) -> None:
    """A worker holds the next stage while it runs one (workers/processes.py): that stage
    is said to start when it begins, not when it is queued there."""
    root = make_project({"pipeline.py": INDEPENDENT})
    result, events = repro(root, "-j", "1")
    assert result.returncode == 0, describe(result)
    running: set[str] = set()
    for e in events:
        if e["event"] == "stage_started":
            running.add(e["stage"])
            assert len(running) == 1, f"{sorted(running)} said to run at once with -j 1: {events}"
        elif e["event"] == "stage_finished":
            running.discard(e["stage"])
    assert statuses(events) == dict.fromkeys(["first", "second", "third"], "ran")


LONG_BESIDE_A_CHAIN = stage_src(
    """\
    import time


    @stage(outs=["long.txt"])
    def long() -> None:
        # Ends only once the chain beside it has: it would wait 20 s and fail if a stage
        # of that chain waited behind it on its worker.
        deadline = time.monotonic() + 20
        while not os.path.exists("t2.txt"):
            if time.monotonic() > deadline:
                raise TimeoutError("the chain beside this stage never ended")
            time.sleep(0.01)
        open("long.txt", "w").write("long\\n")


    @stage(outs=["s1.txt"])
    def s1() -> None:
        open("s1.txt", "w").write("s1\\n")


    @stage(outs=["s2.txt"])
    def s2() -> None:
        open("s2.txt", "w").write("s2\\n")


    @stage(deps=["s2.txt"], outs=["t1.txt"])
    def t1() -> None:
        open("t1.txt", "w").write("t1\\n")


    @stage(deps=["t1.txt"], outs=["t2.txt"])
    def t2() -> None:
        open("t2.txt", "w").write("t2\\n")
    """
)


def test_stages_queued_behind_a_long_one_run_on_a_worker_gone_idle(make_project: MakeProject) -> None:
    """Two workers: `long` on one, s1 on the other, s2 queued behind `long` in its
    worker's pipe; once s1 is done, s2 and its chain move to the idle worker
    (workers/processes.py `rebalance`) and `long`, which waits for them, ends."""
    root = make_project({"pipeline.py": LONG_BESIDE_A_CHAIN})
    result, events = repro(root, "-j", "2")
    assert result.returncode == 0, describe(result)
    assert statuses(events) == dict.fromkeys(["long", "s1", "s2", "t1", "t2"], "ran")
    order = [e["stage"] for e in events if e["event"] == "stage_finished"]
    assert order[-1] == "long", order


def test_failing_stage_with_keep_going_still_runs_unrelated_stages(make_project: MakeProject) -> None:
    root = make_project({"pipeline.py": FAILING})
    result, events = repro(root, "-j", "1", "--keep-going")
    assert result.returncode == 1, describe(result)
    assert statuses(events) == {"broken": "failed", "downstream": "blocked", "unrelated": "ran"}
    assert (root / "c.txt").read_text() == "c\n"
    assert (root / ".pivot" / "stages" / "unrelated.lock").is_file()


def test_stage_not_writing_its_declared_output_fails(make_project: MakeProject) -> None:
    root = make_project({"pipeline.py": stage_src(
        """\
        @stage(outs=["out/result.txt", "out/other.txt"])
        def lazy() -> None:
            os.makedirs("out", exist_ok=True)
            with open("out/other.txt", "w") as f:
                f.write("half of a run\\n")
        """
    )})
    result, events = repro(root)
    assert result.returncode == 1, describe(result)
    done = finished(events)["lazy"]
    assert done["status"] == "failed"
    assert "declared output not produced: out/result.txt" in done["reason"]
    assert not (root / ".pivot" / "stages" / "lazy.lock").exists()
    assert not (root / "out" / "other.txt").exists(), "what a failed run wrote is removed"


def test_stage_output_becomes_log_events(make_project: MakeProject) -> None:
    root = make_project({"pipeline.py": stage_src(
        """\
        @stage(outs=["chatty.txt"])
        def chatty() -> None:
            print("to stdout, line one")
            print("to stderr, line two", file=sys.stderr)
            print("na\u00efve \u2713")
            with open("chatty.txt", "w") as f:
                f.write("ok\\n")
        """
    )})
    result, events = repro(root)
    assert result.returncode == 0, describe(result)
    logs = [(e["stage"], e["stream"], e["line"]) for e in of_kind(events, "log")]
    assert ("chatty", "stdout", "to stdout, line one") in logs, logs
    assert ("chatty", "stderr", "to stderr, line two") in logs, logs
    assert ("chatty", "stdout", "na\u00efve \u2713") in logs, logs


# --- bad input: exit code 2, a clear message, no traceback of Pivot's --------------

PLAIN_STAGE = """\
@stage(outs=["a.txt"])
def a() -> None:
    with open("a.txt", "w") as f:
        f.write("a\\n")
"""

PARAM_STAGE = stage_src(
    """\
    @stage(outs=["t.txt"])
    def train(epochs: int = 10, lr: float = 0.1) -> None:
        with open("t.txt", "w") as f:
            f.write(f"{epochs} {lr}\\n")
    """
)

BAD_INPUTS: dict[str, tuple[dict[str, str], list[str]]] = {
    "syntax_error": (
        {"pipeline.py": "from pivot import stage\n\n\n@stage(outs=['a'])\ndef a(:\n    pass\n"},
        ["pipeline.py", "def a(:"],
    ),
    "import_error_in_helper": (
        {
            "helper.py": "import no_such_module_for_pivot_tests\n",
            "pipeline.py": "import helper\n\n" + stage_src(PLAIN_STAGE),
        },
        ["helper.py", "no_such_module_for_pivot_tests"],
    ),
    "cycle": (
        {"pipeline.py": stage_src(
            """\
            @stage(deps=["x.txt"], outs=["y.txt"])
            def ping() -> None:
                pass


            @stage(deps=["y.txt"], outs=["x.txt"])
            def pong() -> None:
                pass
            """
        )},
        ["cycle", "ping", "pong"],
    ),
    "two_producers": (
        {"pipeline.py": stage_src(
            """\
            @stage(outs=["same.txt"])
            def first() -> None:
                pass


            @stage(outs=["same.txt"])
            def second() -> None:
                pass
            """
        )},
        ["same.txt", "first", "second"],
    ),
    "duplicate_stage_name": (
        {"pipeline.py": stage_src(
            """\
            @stage(name="twin", outs=["one.txt"])
            def one() -> None:
                pass


            @stage(name="twin", outs=["two.txt"])
            def two() -> None:
                pass
            """
        )},
        ["twin", "duplicate"],
    ),
    "nested_stage_function": (
        {"pipeline.py": stage_src(
            """\
            def make() -> None:
                @stage(outs=["inner.txt"])
                def inner() -> None:
                    pass


            make()
            """
        )},
        ["inner", "module level"],
    ),
    "params_yaml_is_a_list": (
        {"pipeline.py": PARAM_STAGE, "params.yaml": "- train\n- epochs\n"},
        ["params.yaml", "list"],
    ),
    "params_yaml_unknown_param": (
        {"pipeline.py": PARAM_STAGE, "params.yaml": "train:\n  epochz: 3\n"},
        ["params.yaml", "train", "epochz"],
    ),
    "params_yaml_wrong_type": (
        {"pipeline.py": PARAM_STAGE, "params.yaml": "train:\n  epochs: many\n"},
        ["params.yaml", "train", "epochs", "int"],
    ),
}


def assert_usage_error(result: subprocess.CompletedProcess[str], expected: list[str]) -> None:
    assert result.returncode == 2, describe(result)
    err = result.stderr
    for text in expected:
        assert text in err, f"{text!r} not in stderr\n{describe(result)}"
    assert_no_own_frames(err)
    assert "Traceback" not in err.split("\n", 1)[0], describe(result)
    # The message comes first and is short; what follows is at most the user's traceback.
    first = err.splitlines()[0] if err else ""
    assert first.startswith("error:"), describe(result)
    assert len(first) < 400, describe(result)
    if "Traceback" in err:
        assert traceback_files(err), describe(result)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_pipeline_is_a_usage_error(case: str, make_project: MakeProject) -> None:
    files, expected = BAD_INPUTS[case]
    root = make_project(files)
    result = run_pivot(root, "repro")
    assert_usage_error(result, expected)
    assert run_dir_leftovers(root) == []
    assert not list((root / ".pivot" / "stages").glob("*.lock"))


def test_syntax_error_shows_the_users_line(make_project: MakeProject) -> None:
    files, _ = BAD_INPUTS["syntax_error"]
    root = make_project(files)
    result = run_pivot(root, "repro")
    assert result.returncode == 2, describe(result)
    assert re.search(r"pipeline\.py.*line 5", result.stderr), describe(result)


def test_import_error_traceback_shows_only_project_frames(make_project: MakeProject) -> None:
    files, _ = BAD_INPUTS["import_error_in_helper"]
    root = make_project(files)
    result = run_pivot(root, "repro")
    assert result.returncode == 2, describe(result)
    frames = traceback_files(result.stderr)
    assert frames == [str(root / "pipeline.py"), str(root / "helper.py")], describe(result)


def test_no_pipeline_is_a_usage_error(tmp_path: Path, proc_guard: ProcGuard) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_pivot(empty, "repro")
    assert_usage_error(result, ["pipeline.py"])
    assert "Traceback" not in result.stderr
    assert not (empty / ".pivot").exists()


# --- project modules that share a name with Pivot's packages -------------------------


def test_user_modules_named_workers_and_broker_do_not_shadow_pivot(make_project: MakeProject) -> None:
    root = make_project({
        "workers.py": "GREETING = 'from the user workers module'\n",
        "broker.py": "def shout(text: str) -> str:\n    return text.upper()\n",
        "pipeline.py": "import broker\nimport workers\n\n" + stage_src(
            """\
            @stage(outs=["greeting.txt"])
            def greet() -> None:
                with open("greeting.txt", "w") as f:
                    f.write(broker.shout(workers.GREETING) + "\\n")
            """
        ),
    })
    result, events = repro(root)
    assert result.returncode == 0, describe(result)
    assert statuses(events) == {"greet": "ran"}
    assert (root / "greeting.txt").read_text() == "FROM THE USER WORKERS MODULE\n"


# --- status, list, init ---------------------------------------------------------------


def status_json(root: Path) -> dict[str, Any]:
    result = run_pivot(root, "status", "--json")
    assert result.returncode == 0, describe(result)
    data: dict[str, Any] = json.loads(result.stdout)["stages"]
    return data


def test_status_before_a_run_says_every_stage_is_stale(project: Path) -> None:
    stages = status_json(project)
    assert list(stages) == STAGES
    assert all(row["stale"] for row in stages.values()), stages
    assert [r["code"] for r in stages["prepare"]["reasons"]] == ["never_ran"]


def test_status_before_a_run_gives_never_ran_for_every_stage(project: Path) -> None:
    stages = status_json(project)
    codes = {name: [r["code"] for r in row["reasons"]] for name, row in stages.items()}
    assert all("never_ran" in c for c in codes.values()), codes


def test_status_after_a_run_has_nothing_stale(ran_project: Path) -> None:
    stages = status_json(ran_project)
    assert list(stages) == STAGES
    assert [n for n, row in stages.items() if row["stale"]] == [], stages


def test_list_json_lists_the_stages_in_order(project: Path) -> None:
    result = run_pivot(project, "list", "--json")
    assert result.returncode == 0, describe(result)
    rows = json.loads(result.stdout)["stages"]
    assert [r["name"] for r in rows] == STAGES
    by_name = {r["name"]: r for r in rows}
    assert by_name["prepare"]["deps"] == ["data/raw.csv"]
    assert by_name["prepare"]["outs"] == ["data/clean.csv"]
    assert by_name["features"]["deps"] == ["data/clean.csv"]
    assert by_name["fit"]["outs"] == ["model/model.json"]
    assert sorted(by_name["evaluate"]["deps"]) == ["data/features.csv", "model/model.json"]
    assert "metrics.json" in by_name["evaluate"]["outs"]
    assert by_name["fit"]["params"] == {"lr": 0.05, "epochs": 300}


def test_list_made_in_the_loader_is_the_list_of_a_loaded_manifest(project: Path) -> None:
    # Forked, the loader answers the listing itself; PIVOT_PRELOAD=0 starts a fresh one,
    # whose manifest is listed here.
    forked = run_pivot(project, "list")
    fresh = subprocess.run([*pivot_cmd(), "list"], cwd=project, capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL, env={**os.environ, "PIVOT_PRELOAD": "0"})
    assert forked.returncode == 0 and fresh.returncode == 0, describe(forked) + describe(fresh)
    assert forked.stdout == fresh.stdout and forked.stdout.startswith("prepare\n  deps:   data/raw.csv\n")


def git_ignored(repo: Path, rel: str) -> bool:
    result = subprocess.run(
        ["git", "-c", "core.excludesFile=/dev/null", "check-ignore", "-q", "--no-index", rel],
        cwd=repo, capture_output=True, text=True, timeout=10,
    )
    assert result.returncode in (0, 1), describe(result)
    return result.returncode == 0


def init_repo(tmp_path: Path) -> Path:
    root = tmp_path / "fresh"
    root.mkdir()
    result = run_pivot(root, "init")
    assert result.returncode == 0, describe(result)
    assert (root / ".pivot" / ".gitignore").is_file()
    return root


def test_init_gitignore_keeps_only_lock_files(tmp_path: Path, proc_guard: ProcGuard) -> None:
    root = init_repo(tmp_path)
    kept = [".pivot/stages/fit.lock", ".pivot/stages/train@small.lock", ".pivot/.gitignore"]
    ignored = [".pivot/run/lock", ".pivot/run/endpoints.json", ".pivot/logs/pool.log", ".pivot/cache/x"]
    if shutil.which("git") is None:
        text = (root / ".pivot" / ".gitignore").read_text()
        assert "/*" in text.splitlines() and "!/stages/" in text.splitlines(), text
        return
    subprocess.run(["git", "init", "-q"], cwd=root, check=True, timeout=10)
    assert [p for p in kept if git_ignored(root, p)] == []
    assert [p for p in ignored if not git_ignored(root, p)] == []


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_init_gitignore_ignores_temp_files_next_to_locks(tmp_path: Path, proc_guard: ProcGuard) -> None:
    root = init_repo(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True, timeout=10)
    assert git_ignored(root, ".pivot/stages/.fit.k2j3h4.tmp")


# --- one engine per project ------------------------------------------------------------


@pytest.mark.timeout(45)
def test_second_engine_in_the_same_project_is_refused(
    make_project: MakeProject, proc_guard: ProcGuard
) -> None:
    root = make_project({"pipeline.py": HELD_PIPELINE})
    first = proc_guard.start(root, "repro", "--json")
    endpoints = root / ".pivot" / "run" / "endpoints.json"
    try:
        wait_for(lambda: endpoints.exists() or first.poll() is not None, 20, "endpoints.json")
        assert first.poll() is None, "the first engine exited early"

        second = run_pivot(root, "repro", "--json")
        assert second.returncode == 2, describe(second)
        assert "a `pivot repro` (pid" in second.stderr, describe(second)
        assert "Traceback" not in second.stderr, describe(second)
        assert endpoints.exists(), "the refused engine removed the running one's endpoints"
    finally:
        release_held_stage(root)
    rc, out, err = wait_exit(first, 30, "the first engine")
    assert rc == 0, describe((rc, out, err))
    events = parse_events(out)
    check_wave_contract(events)
    assert statuses(events) == {"held": "ran", "after": "ran"}
    assert (root / "after.txt").read_text() == "HELD\n"
    assert run_dir_leftovers(root) == []


def test_repro_help(tmp_path: Path, proc_guard: ProcGuard) -> None:
    result = run_pivot(tmp_path, "repro", "--help")
    assert result.returncode == 0, describe(result)
    assert "--keep-going" in result.stdout
    assert "--json" in result.stdout
