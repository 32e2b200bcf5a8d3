"""`pivot up` end to end: a real engine (CLI, broker thread, pool, loader, loky workers,
watcher) on small purpose-built projects, edited while it runs.

Every test reads the JSON lines of `pivot up --display json` as they come (`LiveRun`,
tests/procs.py) and synchronises on events, never on sleeps. Edits are made only once
the watcher's inotify watches cover the folders edited (`wait_watching`): the engine
publishes no event saying it watches (its first wave waits for the watch, but some tests
edit before that wave ends, and folders made later are watched later).

Stages append their name to `runs.log` and "name pid" to `pids.log` (neither is an
output) on every real execution: what really ran, and in which worker process. Both are
in `.pivotignore`: a wave's `paths` list every changed path checked with the edit, and
the test's own bookkeeping would otherwise show up there.

A negative ("this save starts no wave") is proven without sleeping: after the save,
edit `probe.txt` (the only dep of the `probe` stage) and check that the next wave is
the probe's (trigger "files", stages ["probe"]) and the only one since the save.
Changes reach the broker in the order they were made and are checked in that order, so
a wave the save wrongly caused would come first, or be merged into the probe's: more
stages, or the saved path in its `paths`. The same check after a wave proves that the
outputs it wrote start nothing.

Several tests pin bugs these tests found and that were fixed since; their docstrings
or comments say what used to go wrong.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from procs import (
    HELD_PIPELINE,
    LiveRun,
    ProcGuard,
    alive,
    check_wave_contract,
    describe,
    finished,
    held_stage_pid,
    inotify_inodes,
    of_kind,
    parse_events,
    pivot_ok,
    proc_info,
    release_held_stage,
    run_dir_leftovers,
    run_pivot,
    start_pivot,
    wait_exit,
    wait_for,
)

from pivot.state.hashing import hash_file
from pivot.state.statecache import StateCache

pytestmark = pytest.mark.timeout(60)

Events = list[dict[str, Any]]
MakeProject = Callable[..., Path]

WAIT_S = 20.0  # generous: a wave here takes well under a second
STOP_WITHIN_S = 10.0
QUICK_STOP_S = 2.5  # below the engine's 3 s grace before it kills a stuck process


# --- projects ------------------------------------------------------------------------

PRELUDE = '''\
import os
import time

import helpers
from pivot import stage


def record(name: str) -> None:
    """runs.log: one line per real execution; pids.log: the process that ran it."""
    with open("runs.log", "a") as f:
        f.write(name + "\\n")
    with open("pids.log", "a") as f:
        f.write(f"{name} {os.getpid()}\\n")


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def wait_for_go() -> None:
    """Until the test writes `go` (polling, with a deadline of its own)."""
    deadline = time.monotonic() + 30
    while not os.path.exists("go"):
        if time.monotonic() > deadline:
            raise TimeoutError("go never appeared")
        time.sleep(0.02)


@stage(deps=["probe.txt"], outs=["probe.out"])
def probe() -> None:
    record("probe")
    write("probe.out", read("probe.txt"))
'''


def pipeline(body: str) -> str:
    """pipeline.py: the prelude (`record`, `read`, `write`, the `probe` stage) + `body`."""
    return PRELUDE + "\n\n" + textwrap.dedent(body)


HELPERS_PY = '''\
"""Helpers the stages use."""


def tag(text: str) -> str:
    return "v1:" + text.strip()
'''

# a.txt -> upper -> a.out -> double -> a2.out;  c.txt -> tagged (helpers.tag, param n).
BASE_BODY = """\
@stage(deps=["a.txt"], outs=["a.out"])
def upper() -> None:
    record("upper")
    write("a.out", read("a.txt").upper())


@stage(deps=["a.out"], outs=["a2.out"])
def double() -> None:
    record("double")
    write("a2.out", read("a.out") * 2)


@stage(deps=["c.txt"], outs=["c.out"])
def tagged(n: int = 1) -> None:
    record("tagged")
    write("c.out", f"{helpers.tag(read('c.txt'))} n={n}\\n")
"""

BOOKKEEPING = {".pivotignore": "runs.log\npids.log\n"}

BASE: dict[str, str] = {
    **BOOKKEEPING,
    "pipeline.py": pipeline(BASE_BODY),
    "helpers.py": HELPERS_PY,
    "a.txt": "alpha\n",
    "c.txt": "gamma\n",
    "probe.txt": "probe 0\n",
    "notes.txt": "not a dep of anything\n",
    "tests/test_x.py": "def test_nothing() -> None:\n    pass\n",
}
BASE_STAGES = {"probe", "upper", "double", "tagged"}

# `slow` waits for a file `go` (`wait_for_go`); `fast` reads its output
# and calls helpers.tag.
SLOW_STAGE = """\
@stage(outs=["slow.out"])
def slow() -> None:
    record("slow")
    wait_for_go()
    write("slow.out", "slow\\n")
"""

LONG_BODY = SLOW_STAGE + """

@stage(deps=["slow.out"], outs=["fast.out"])
def fast() -> None:
    record("fast-" + helpers.tag(""))
    write("fast.out", helpers.tag(read("slow.out")) + "\\n")
"""


# --- reading runs --------------------------------------------------------------------


def runs(root: Path) -> Counter[str]:
    """How many times each stage really executed (lines of runs.log)."""
    log = root / "runs.log"
    return Counter(log.read_text().split()) if log.exists() else Counter()


def pids(root: Path, stage: str) -> list[int]:
    """The processes that ran `stage`, one per execution, oldest first."""
    lines = (root / "pids.log").read_text().splitlines()
    return [int(pid) for name, pid in (line.split() for line in lines) if name == stage]


def all_pids(root: Path) -> set[int]:
    return {int(line.split()[1]) for line in (root / "pids.log").read_text().splitlines()}


def statuses(events: Events) -> dict[str, str]:
    return {name: e["status"] for name, e in finished(events).items()}


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not in {path} exactly once:\n{text}"
    path.write_text(text.replace(old, new))


# --- following the engine ------------------------------------------------------------

StartUp = Callable[..., LiveRun]


def is_wave_start(e: dict[str, Any]) -> bool:
    return e["event"] == "wave_started"


def next_wave(live: LiveRun, start: int, what: str) -> Events:
    """The events of the first wave started at or after index `start`, from its
    `wave_started` to its `wave_finished` (checked against the wave contract)."""
    began = live.wait_event(is_wave_start, WAIT_S, f"a wave ({what})", start)
    number = began["wave"]
    live.wait_event(
        lambda e: e["event"] == "wave_finished" and e["wave"] == number,
        WAIT_S, f"wave {number} ({what}) to finish", start,
    )
    events = live.since(start)
    first = next(i for i, e in enumerate(events) if e is began)
    last = next(
        i for i, e in enumerate(events) if e["event"] == "wave_finished" and e["wave"] == number
    )
    wave = events[first : last + 1]
    check_wave_contract(wave)
    return wave


def first_wave(live: LiveRun, root: Path, *folders: Path) -> Events:
    """The first wave (checked to be the `run` one); then waits for the watcher to watch
    the project root and `folders`, so that every later edit is seen."""
    wave = next_wave(live, 0, "the first run")
    assert wave[0]["wave"] == 1 and wave[0]["trigger"] == "run" and wave[0]["paths"] == [], wave[0]
    live.wait_watching(root, *folders)
    return wave


def probe(live: LiveRun, root: Path, start: int, quiet: tuple[str, ...] = ()) -> Events:
    """Edit probe.txt and return the probe's wave, which must be the next wave after
    `start` and the only one started since: nothing done since `start` started a wave.

    Paths checked together with the probe's edit are named in its `paths` too, but
    none of `quiet` (saves that changed nothing) and not probe.out (its own output)."""
    (root / "probe.txt").write_text(f"probe {uuid.uuid4().hex}\n")
    wave = next_wave(live, start, "the edit of probe.txt")
    head = wave[0]
    assert (head["trigger"], head["stages"]) == ("files", ["probe"]), (
        f"the next wave is not the probe's: something before it started a wave: {head}"
    )
    assert "probe.txt" in head["paths"], head
    assert not {"probe.out", *quiet} & set(head["paths"]), f"an unchanged file named: {head}"
    done = finished(wave)["probe"]
    assert done["status"] == "ran", f"the probe did not run: {done['reason']}\n{done['error']}"
    started = [e for e in live.since(start) if is_wave_start(e)]
    assert started == [head], f"more than one wave since {start}: {started}"
    return wave


def waves_since(live: LiveRun, start: int) -> list[int]:
    """The numbers of the waves started since event `start` (`probe` sees only those
    after its own mark: a wave of nothing begun before it would go unseen)."""
    return [e["wave"] for e in live.since(start) if is_wave_start(e)]


def stop(live: LiveRun, root: Path) -> str:
    """SIGTERM; `pivot up` must exit 0 and leave no socket or endpoints file behind."""
    err = live.stop(STOP_WITHIN_S)
    assert run_dir_leftovers(root) == [], run_dir_leftovers(root)
    assert "Traceback" not in err, err
    return err


# --- 1, 10. the first wave, then idle; outputs never start a wave ---------------------


def test_first_wave_runs_every_stage_then_only_real_edits_start_waves(
    make_project: MakeProject, up: StartUp
) -> None:
    root = make_project(BASE)
    live = up(root)
    wave = first_wave(live, root)
    loaded = live.wait_event(lambda e: e["event"] == "pipeline_loaded", what="pipeline_loaded")
    assert set(loaded["added"]) == BASE_STAGES and loaded["removed"] == loaded["changed"] == []
    assert set(wave[0]["stages"]) == BASE_STAGES
    assert statuses(wave) == dict.fromkeys(BASE_STAGES, "ran")
    assert runs(root) == dict.fromkeys(BASE_STAGES, 1)

    # Idle: the outputs the first wave wrote, and a file nothing declares, start nothing.
    start = live.mark()
    (root / "notes.txt").write_text("edited, still not a dep\n")
    probe(live, root, start)
    assert runs(root) == {**dict.fromkeys(BASE_STAGES, 1), "probe": 2}
    stop(live, root)


# --- 2. a data edit ------------------------------------------------------------------


def test_a_data_edit_runs_its_consumers_and_their_downstream_only(
    make_project: MakeProject, up: StartUp
) -> None:
    root = make_project(BASE)
    live = up(root)
    first_wave(live, root)

    start = live.mark()
    (root / "a.txt").write_text("beta\n")
    wave = next_wave(live, start, "the edit of a.txt")
    head = wave[0]
    assert (head["trigger"], head["paths"], head["stages"]) == ("files", ["a.txt"], ["upper", "double"])
    assert statuses(wave) == {"upper": "ran", "double": "ran"}
    assert finished(wave)["upper"]["reason_code"] == "deps_changed"
    assert (root / "a2.out").read_text() == "BETA\nBETA\n"
    assert runs(root) == {"probe": 1, "upper": 2, "double": 2, "tagged": 1}

    # a.out and a2.out, just rewritten by the wave, start nothing.
    probe(live, root, live.mark())
    stop(live, root)


def test_up_with_poll_sees_edits_without_os_notifications(make_project: MakeProject, up: StartUp) -> None:
    """The first wave waits for the watcher's ready, which in poll mode comes after its
    first scan: an edit made after that wave is seen, even within the same second as
    the file's creation (the poller re-hashes recent changes)."""
    root = make_project(BASE)
    live = up(root, "--poll")
    next_wave(live, 0, "the first run")
    start = live.mark()
    (root / "c.txt").write_text("delta\n")  # same size as before
    wave = next_wave(live, start, "the edit of c.txt")
    assert wave[0]["stages"] == ["tagged"] and statuses(wave) == {"tagged": "ran"}
    assert (root / "c.out").read_text() == "v1:delta n=1\n"
    stop(live, root)


def test_repro_watch_is_pivot_up(make_project: MakeProject, proc_guard: ProcGuard) -> None:
    root = make_project(BASE)
    live = LiveRun(proc_guard.start(root, "repro", "--watch", "--debounce", "20", "--display", "json"))
    first_wave(live, root)
    start = live.mark()
    (root / "c.txt").write_text("delta\n")
    wave = next_wave(live, start, "the edit of c.txt")
    assert statuses(wave) == {"tagged": "ran"}
    assert (root / "c.out").read_text() == "v1:delta n=1\n"
    stop(live, root)


def test_an_up_interrupted_as_it_starts_leaves_no_process_and_ignores_another_ctrl_c(
    make_project: MakeProject, proc_guard: ProcGuard,
) -> None:
    """A Ctrl-C after `pivot up` started its pool and watcher, before its broker (which
    would adopt them): they were left running, the watcher for good (it took its new
    parent for the one to follow), and the next `pivot up` said an engine was running.
    A second Ctrl-C while it ends (PIVOT_FAULT `interrupted`: a SIGINT to itself then)
    is ignored: it was a KeyboardInterrupt traceback, or a death by SIGINT."""
    root = make_project(BASE)
    for fault in ("starting:interrupt", "starting:interrupt,interrupted:interrupt"):
        proc = proc_guard.track(start_pivot(root, "up", "--display", "plain", env={**os.environ, "PIVOT_FAULT": fault}))
        code, out, err = wait_exit(proc, STOP_WITHIN_S, f"pivot up with {fault}")
        assert code == 130 and "interrupted" in err and "Traceback" not in err, (fault, code, out, err)
        wait_for(lambda: not proc_guard.leftovers(), STOP_WITHIN_S, f"no process left after {fault}")
    live = LiveRun(proc_guard.start(root, "up", "--debounce", "20", "--display", "json"))
    first_wave(live, root)  # (no engine in its way)
    stop(live, root)


def test_repro_while_up_runs_asks_its_engine_for_the_wave(make_project: MakeProject, up: StartUp) -> None:
    root = make_project(BASE)
    live = up(root)
    first_wave(live, root)
    start = live.mark()
    result = run_pivot(root, "repro", "tagged", "--force", "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr, describe(result)
    mine = parse_events(result.stdout)
    [began] = of_kind(mine, "wave_started")
    assert began["stages"] == ["tagged"] and began["wave"] == 2, began
    assert statuses(mine) == {"tagged": "ran"}
    # The same wave, run by the engine of `pivot up` (no second engine started).
    theirs = next_wave(live, start, "the wave repro asked for")
    assert theirs[0]["wave"] == 2 and statuses(theirs) == {"tagged": "ran"}
    assert runs(root)["tagged"] == 2
    stop(live, root)


def test_repro_while_up_has_a_broken_pipeline_shows_the_error_not_the_last_wave(
    make_project: MakeProject, up: StartUp,
) -> None:
    """It showed the engine's last wave, as if it had just run (`"resynced": true`
    lines: a CI script would take them for its own run), before the error."""
    root = make_project(BASE)
    live = up(root)
    first_wave(live, root)
    start = live.mark()
    edit(root / "pipeline.py", *BROKEN_TAGGED)
    live.wait_event(lambda e: e["event"] == "pipeline_invalid", WAIT_S, "pipeline_invalid", start)
    result = run_pivot(root, "repro", "--json")
    assert result.returncode == 2 and "Traceback" not in result.stderr, describe(result)
    assert [e["event"] for e in parse_events(result.stdout)] == ["pipeline_invalid"], result.stdout
    result = run_pivot(root, "repro")
    assert result.returncode == 2, describe(result)
    assert "wave" not in result.stdout and "tagged" not in result.stdout.replace("pipeline.py", ""), result.stdout
    stop(live, root)


def test_a_missing_dep_fails_its_stage_and_creating_it_runs_the_stage(
    make_project: MakeProject, up: StartUp
) -> None:
    files = {**BASE, "pipeline.py": pipeline(BASE_BODY + '''

@stage(deps=["later/input.txt"], outs=["later.out"])
def later() -> None:
    record("later")
    write("later.out", read("later/input.txt"))
''')}
    root = make_project(files)
    live = up(root, "--keep-going")
    wave = next_wave(live, 0, "the first run")
    done = finished(wave)["later"]
    assert (done["status"], done["reason_code"]) == ("failed", "dep_missing"), done
    live.wait_watching(root)
    start = live.mark()
    (root / "later").mkdir()  # a new folder, then the file in it
    (root / "later" / "input.txt").write_text("here now\n")
    wave = next_wave(live, start, "the creation of later/input.txt")
    assert wave[0]["stages"] == ["later"] and statuses(wave) == {"later": "ran"}, wave[0]
    assert (root / "later.out").read_text() == "here now\n"
    stop(live, root)


def test_a_failed_stage_starts_no_wave_by_itself(make_project: MakeProject, up: StartUp) -> None:
    """The worker deletes a stage's outputs before running it; when the stage then
    failed, that deletion used to be seen as a hand edit of the output and started one
    more wave running the failed stage again. A stage that writes its output and then
    fails must not start waves either (it would, again and again)."""
    files = {**BASE, "f.txt": "good\n", "pipeline.py": pipeline(BASE_BODY + '''

@stage(deps=["f.txt"], outs=["f.out"])
def flaky() -> None:
    record("flaky")
    text = read("f.txt")
    if text.strip() == "bad":
        raise ValueError("f.txt says bad")
    if text.strip() == "half":
        write("f.out", "partial")
        raise ValueError("f.txt says half")
    write("f.out", text)
''')}
    root = make_project(files)
    live = up(root, "--keep-going")
    first_wave(live, root)
    assert (root / "f.out").exists()
    start = live.mark()
    (root / "f.txt").write_text("bad\n")
    wave = next_wave(live, start, "the edit of f.txt")
    assert statuses(wave) == {"flaky": "failed"}, wave
    assert not (root / "f.out").exists()  # deleted before the run, never re-written
    probe(live, root, live.mark())
    assert runs(root)["flaky"] == 2
    start = live.mark()
    (root / "f.txt").write_text("half\n")
    wave = next_wave(live, start, "the edit of f.txt to half")
    assert statuses(wave) == {"flaky": "failed"}, wave
    assert not (root / "f.out").exists()  # what the failed run wrote is removed
    probe(live, root, live.mark())
    assert runs(root)["flaky"] == 3
    stop(live, root)


def test_a_stage_that_writes_what_it_reads_is_stopped_after_a_few_runs_not_run_forever(
    make_project: MakeProject, up: StartUp
) -> None:
    files = {**BASE, "log.txt": "", "pipeline.py": pipeline(BASE_BODY + '''

@stage(deps=["log.txt"], outs=["count.out"])
def appender() -> None:
    record("appender")
    lines = read("log.txt").splitlines()
    write("count.out", str(len(lines)))
    with open("log.txt", "a") as f:  # its own dependency, while it runs
        f.write("ran\\n")
''')}
    root = make_project(files)
    live = up(root)
    first_wave(live, root)
    notice = live.wait_event(
        lambda e: e["event"] == "notice" and "stage appender changed what it reads" in e["message"],
        WAIT_S, "the notice that appender is stopped",
    )
    assert "log.txt" in notice["message"], notice
    runs_then = runs(root)["appender"]
    assert 2 <= runs_then <= 4, runs(root)  # the first run, then at most the limit
    probe(live, root, live.mark())  # nothing else runs meanwhile: it is stopped
    assert runs(root)["appender"] == runs_then
    start = live.mark()
    (root / "log.txt").write_text("a hand edit\n")  # a change made while it does not run
    wave = next_wave(live, start, "the hand edit of log.txt")
    assert statuses(wave).get("appender") == "ran", wave
    stop(live, root)


# --- 3. saves that change nothing ----------------------------------------------------


def test_saving_identical_bytes_or_touching_a_dep_starts_no_wave(
    make_project: MakeProject, up: StartUp
) -> None:
    root = make_project(BASE)
    live = up(root)
    first_wave(live, root)

    start = live.mark()
    a = root / "a.txt"
    before = a.stat().st_mtime_ns
    a.write_bytes(a.read_bytes())  # an editor's save without a change
    os.utime(root / "c.txt")  # `touch`
    assert a.stat().st_mtime_ns != before
    probe(live, root, start, quiet=("a.txt", "c.txt"))
    assert runs(root) == {**dict.fromkeys(BASE_STAGES, 1), "probe": 2}
    stop(live, root)


# A save held back while a wave runs is checked once it ends, against the readers' locks:
# the state cache is every process's, and one that hashed the new content first (a
# `pivot status`, the pool deciding another reader) must not hide it (broker/changes.py).
HELD_BACK_BODY = SLOW_STAGE + """

@stage(deps=["a.txt"], outs=["a.out"])
def upper() -> None:
    record("upper")
    write("a.out", read("a.txt").upper())
"""


def test_a_save_held_back_by_a_wave_runs_its_stage_though_pivot_status_hashed_it_first(
    make_project: MakeProject, up: StartUp
) -> None:
    root = make_project({**BOOKKEEPING, "pipeline.py": pipeline(HELD_BACK_BODY), "helpers.py": HELPERS_PY,
                         "a.txt": "alpha\n", "probe.txt": "probe 0\n"})
    live = up(root)
    wait_for(lambda: runs(root)["upper"] == 1 and runs(root)["slow"] == 1, WAIT_S, "upper done, slow running")
    live.wait_watching(root)
    (root / "a.txt").write_text("beta\n")  # held back: the first wave is still running
    status = run_pivot(root, "status", "--json")  # hashes a.txt, recording its new digest
    assert json.loads(status.stdout)["stages"]["upper"]["stale"] is True, describe(status)
    start = live.mark()
    (root / "go").write_text("")
    wave = next_wave(live, start, "the held-back save of a.txt")
    assert (wave[0]["trigger"], wave[0]["stages"], wave[0]["paths"]) == ("files", ["upper"], ["a.txt"]), wave[0]
    assert statuses(wave) == {"upper": "ran"}
    assert (root / "a.out").read_text() == "BETA\n"
    stop(live, root)


# `t` and `s` read big.csv; the pool decides `s` (hashing big.csv) after the save, `t`
# ran before it.
READ_TWICE_BODY = """@stage(deps=["big.csv"], outs=["t.out"])
def t() -> None:
    record("t")
    write("t.out", read("big.csv")[:2])


@stage(deps=["t.out"], outs=["mid.out"])
def mid() -> None:
    record("mid")
    wait_for_go()
    write("mid.out", read("t.out"))


@stage(deps=["mid.out", "big.csv"], outs=["s.out"])
def s() -> None:
    record("s")
    write("s.out", read("mid.out") + read("big.csv")[:2])
"""


def test_a_dep_saved_between_two_readers_runs_the_one_that_read_it_before(
    make_project: MakeProject, up: StartUp
) -> None:
    big = "v1" + "x" * 300_000 + "\n"  # (large: the pool hashes it for `s` as it decides)
    root = make_project({**BOOKKEEPING, "pipeline.py": pipeline(READ_TWICE_BODY), "helpers.py": HELPERS_PY,
                         "big.csv": big, "probe.txt": "probe 0\n"})
    live = up(root)
    wait_for(lambda: runs(root)["mid"] == 1, WAIT_S, "mid running (t ran on v1)")
    live.wait_watching(root)
    (root / "big.csv").write_text("v2" + big[2:])
    start = live.mark()
    (root / "go").write_text("")
    wave = next_wave(live, start, "the save of big.csv")
    assert (wave[0]["trigger"], wave[0]["paths"]) == ("files", ["big.csv"]), wave[0]
    assert statuses(wave)["t"] == "ran", statuses(wave)
    assert (root / "t.out").read_text() == "v2"
    assert (root / "s.out").read_text() == "v2v2"
    stop(live, root)


# --- 4, 7. helper edits restart workers; params edits do not -------------------------


def test_a_helper_edit_reloads_and_reruns_only_its_stage_in_a_new_worker(
    make_project: MakeProject, up: StartUp
) -> None:
    root = make_project(BASE)
    live = up(root)
    first_wave(live, root)
    workers_before = all_pids(root)

    start = live.mark()
    edit(root / "helpers.py", 'return "v1:" + text.strip()', 'return "v2:" + text.strip()')
    loaded = live.wait_event(lambda e: e["event"] == "pipeline_loaded", WAIT_S, "the reload", start)
    assert (loaded["added"], loaded["removed"], loaded["changed"]) == ([], [], ["tagged"])
    wave = next_wave(live, start, "the helper edit")
    head = wave[0]
    assert (head["trigger"], head["paths"], head["stages"]) == ("code", ["helpers.py"], ["tagged"])
    assert statuses(wave) == {"tagged": "ran"}
    done = finished(wave)["tagged"]
    assert done["reason_code"] == "code_changed" and done["details"]["changed"] == ["helpers.tag"], done
    assert (root / "c.out").read_text() == "v2:gamma n=1\n"
    new_pid = pids(root, "tagged")[-1]
    assert new_pid not in workers_before, f"ran in an old worker {new_pid}: {workers_before}"
    assert runs(root) == {"probe": 1, "upper": 1, "double": 1, "tagged": 2}

    probe(live, root, live.mark())
    stop(live, root)


# `fakelib` stands for an installed package (numpy, torch): it lives in a folder named
# site-packages, outside the project, and logs the pid of every process importing it.
FAKELIB = '''\
import os

VERSION = "1"
with open(os.environ["FAKELIB_LOG"], "a") as f:
    f.write(f"{os.getpid()}\\n")
'''

PRELOAD_BODY = """\
import sys

with open("imports.log", "a") as _log:  # every process that imports the user's code
    _log.write(f"{os.getpid()}\\n")


@stage(deps=["c.txt"], outs=["lib.out"])
def uses_lib() -> None:
    record("uses_lib")
    warm = "fakelib" in sys.modules  # before the stage imports it
    import fakelib

    write("lib.out", f"{fakelib.VERSION} warm={warm} {helpers.tag('')}\\n")
"""


def test_workers_fork_from_a_server_with_third_party_imports_done_and_no_user_code(
    make_project: MakeProject, up: StartUp
) -> None:
    root = make_project({**BOOKKEEPING, ".pivotignore": "runs.log\npids.log\nimports.log\n",
                         "pipeline.py": pipeline(PRELOAD_BODY), "helpers.py": HELPERS_PY,
                         "c.txt": "gamma\n", "probe.txt": "probe 0\n"})
    site = root.parent / "site-packages"
    (site / "fakelib").mkdir(parents=True)
    (site / "fakelib" / "__init__.py").write_text(FAKELIB)
    fakelib_log = root.parent / "fakelib.log"
    env = {**os.environ, "PYTHONPATH": str(site), "FAKELIB_LOG": str(fakelib_log)}
    live = up(root, env=env)
    first_wave(live, root)
    assert (root / "lib.out").read_text() == "1 warm=True v1:\n"
    [server] = [int(pid) for pid in fakelib_log.read_text().split()]
    worker = pids(root, "uses_lib")[-1]
    assert worker != server and proc_info_ppid(worker) == server
    user_importers = {int(pid) for pid in (root / "imports.log").read_text().split()}
    assert server not in user_importers and worker in user_importers

    # An upgraded package (its file changed) and a code change: the workers are
    # replaced, and forked from a new server that imported the new version.
    (site / "fakelib" / "__init__.py").write_text(FAKELIB.replace('"1"', '"22"'))
    start = live.mark()
    edit(root / "helpers.py", 'return "v1:" + text.strip()', 'return "v2:" + text.strip()')
    wave = next_wave(live, start, "the helper edit")
    assert statuses(wave) == {"uses_lib": "ran"}
    assert (root / "lib.out").read_text() == "22 warm=True v2:\n"
    servers = [int(pid) for pid in fakelib_log.read_text().split()]
    assert len(servers) == 2 and not alive(server), servers
    assert servers[1] not in {int(pid) for pid in (root / "imports.log").read_text().split()}
    stop(live, root)


def test_an_upgraded_package_with_a_code_edit_beside_a_long_stage_leaves_it_running(
    make_project: MakeProject, up: StartUp
) -> None:
    # `slow` runs on (its code did not change) in a worker of the first server while the
    # new workers fork from a second one, which imported the new version: the first
    # server, which exits only once its last worker has, must not hold up the pool.
    root = make_project({**BOOKKEEPING, ".pivotignore": "runs.log\npids.log\nimports.log\n",
                         "pipeline.py": pipeline(PRELOAD_BODY + "\n\n" + SLOW_STAGE), "helpers.py": HELPERS_PY,
                         "c.txt": "gamma\n", "probe.txt": "probe 0\n"})
    site = root.parent / "site-packages"
    (site / "fakelib").mkdir(parents=True)
    (site / "fakelib" / "__init__.py").write_text(FAKELIB)
    env = {**os.environ, "PYTHONPATH": str(site), "FAKELIB_LOG": str(root.parent / "fakelib.log")}
    live = up(root, "--jobs", "2", env=env)
    # Its event, not its output: the first run's stage_finished, coming after the output is
    # written, once came after the mark below and passed for the edit's run.
    live.wait_event(lambda e: e["event"] == "stage_finished" and e["stage"] == "uses_lib", WAIT_S, "uses_lib's first run")
    wait_for(lambda: runs(root)["slow"] == 1, WAIT_S, "slow running")
    live.wait_watching(root)
    assert (root / "lib.out").read_text() == "1 warm=True v1:\n"
    slow = pids(root, "slow")[-1]

    (site / "fakelib" / "__init__.py").write_text(FAKELIB.replace('"1"', '"22"'))
    start = live.mark()
    edit(root / "helpers.py", 'return "v1:" + text.strip()', 'return "v2:" + text.strip()')
    done = live.wait_event(lambda e: e["event"] == "stage_finished" and e["stage"] == "uses_lib", WAIT_S,
                           "uses_lib on the new code and version", start)
    assert done["status"] == "ran", done
    assert (root / "lib.out").read_text() == "22 warm=True v2:\n"
    assert alive(slow) and runs(root)["slow"] == 1  # still its first run
    (root / "go").write_text("")
    finished_slow = live.wait_event(lambda e: e["event"] == "stage_finished" and e["stage"] == "slow", WAIT_S,
                                    "slow", start)
    assert finished_slow["status"] == "ran", finished_slow
    assert runs(root)["slow"] == 1
    stop(live, root)


PARAMS_LIB_BODY = """\
@stage(deps=["c.txt"], outs=["lib.out"])
def uses_lib(n: int = 1) -> None:
    record("uses_lib")
    import fakelib

    write("lib.out", f"{fakelib.VERSION} n={n}\\n")
"""


def _install_fakelib(site: Path, version: str) -> None:
    """fakelib as pip leaves it: the package and its dist-info folder (which names the
    version a fingerprint counts, and whose replacement changes the folder's mtime)."""
    (site / "fakelib").mkdir(parents=True, exist_ok=True)
    (site / "fakelib" / "__init__.py").write_text(f'VERSION = "{version}"\n')
    for old in site.glob("fakelib-*.dist-info"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    info = site / f"fakelib-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fakelib\nVersion: {version}\n")
    (info / "top_level.txt").write_text("fakelib\n")


def _fakelib_up(make_project: MakeProject, up: StartUp, folder: str, *args: str) -> tuple[Path, Path, LiveRun]:
    """`pivot up` on a project whose stage imports fakelib 1.0, found in `folder` (on
    PYTHONPATH), once its first wave ran."""
    root = make_project({**BOOKKEEPING, "pipeline.py": pipeline(PARAMS_LIB_BODY), "helpers.py": HELPERS_PY,
                         "c.txt": "gamma\n", "probe.txt": "probe 0\n"})
    site = root.parent / folder
    _install_fakelib(site, "1.0")
    live = up(root, *args, env={**os.environ, "PYTHONPATH": str(site)})
    first_wave(live, root)
    assert (root / "lib.out").read_text() == "1.0 n=1\n"
    return root, site, live


def test_an_upgraded_package_runs_on_new_workers_after_an_edit_of_params_only(
    make_project: MakeProject, up: StartUp
) -> None:
    # A params edit keeps the workers; but after `pip install -U` the stages whose
    # fingerprint names the new version must not run in one that imported the old. (A
    # folder on sys.path that is no site-packages: its pool does not watch it, so the
    # params edit's reload is the one that finds the new version.)
    root, site, live = _fakelib_up(make_project, up, "extlib", "--jobs", "1")
    [worker] = set(pids(root, "uses_lib"))

    _install_fakelib(site, "2.0")
    start = live.mark()
    (root / "params.yaml").write_text("uses_lib:\n  n: 2\n")
    wave = next_wave(live, start, "the params edit")
    assert statuses(wave) == {"uses_lib": "ran"}
    assert (root / "lib.out").read_text() == "2.0 n=2\n"
    assert pids(root, "uses_lib")[-1] != worker
    stop(live, root)


def test_a_package_upgraded_beside_an_idle_engine_runs_the_stages_that_use_it(
    make_project: MakeProject, up: StartUp
) -> None:
    # No project file edited: the pool sees its site-packages change (a dist-info folder
    # replaced), and the pipeline is loaded again as for a code edit.
    root, site, live = _fakelib_up(make_project, up, "site-packages")

    start = live.mark()
    _install_fakelib(site, "2.0")
    wave = next_wave(live, start, "the upgrade")
    assert (wave[0]["trigger"], wave[0]["paths"], wave[0]["stages"]) == (
        "code", ["(installed packages)"], ["uses_lib"]), wave[0]
    assert statuses(wave) == {"uses_lib": "ran"}
    assert (root / "lib.out").read_text() == "2.0 n=1\n"
    probe(live, root, live.mark())  # and nothing else starts a wave
    stop(live, root)


def proc_info_ppid(pid: int) -> int:
    info = proc_info(pid)
    assert info is not None, f"process {pid} is gone"
    return info.ppid


def test_a_params_edit_reruns_its_stage_in_the_same_worker(
    make_project: MakeProject, up: StartUp
) -> None:
    root = make_project(BASE)
    live = up(root, "--jobs", "1")  # one worker: "the same" is one pid
    first_wave(live, root)
    [worker] = all_pids(root)

    start = live.mark()
    (root / "params.yaml").write_text("tagged:\n  n: 2\n")
    loaded = live.wait_event(lambda e: e["event"] == "pipeline_loaded", WAIT_S, "the reload", start)
    assert loaded["changed"] == ["tagged"], loaded
    wave = next_wave(live, start, "the params edit")
    head = wave[0]
    assert (head["trigger"], head["paths"], head["stages"]) == ("params", ["params.yaml"], ["tagged"])
    done = finished(wave)["tagged"]
    assert (done["status"], done["reason_code"]) == ("ran", "params_changed"), done
    assert done["details"] == {"changes": {"n": [1, 2]}}, done
    assert (root / "c.out").read_text() == "v1:gamma n=2\n"
    assert pids(root, "tagged") == [worker, worker], "a params-only change restarted the worker"

    probe(live, root, live.mark())
    assert pids(root, "probe") == [worker, worker]
    stop(live, root)


# --- 5. edits that change no code ----------------------------------------------------


def test_comment_only_helper_edits_and_unrelated_python_files_start_no_wave(
    make_project: MakeProject, up: StartUp
) -> None:
    root = make_project(BASE)
    live = up(root)
    first_wave(live, root, root / "tests")

    start = live.mark()
    edit(
        root / "helpers.py",
        'def tag(text: str) -> str:\n    return "v1:" + text.strip()\n',
        'def tag(text: str) -> str:\n    """Prefix the version."""\n    # a comment\n'
        '    return "v1:" + text.strip()  # same code\n',
    )
    probe(live, root, start)
    # A reload may report it, but nothing changed.
    for loaded in of_kind(live.since(start), "pipeline_loaded"):
        assert loaded["added"] == loaded["removed"] == loaded["changed"] == [], loaded

    start = live.mark()
    (root / "tests" / "test_x.py").write_text("def test_something() -> None:\n    assert True\n")
    probe(live, root, start)
    assert of_kind(live.since(start), "pipeline_loaded") == [], "a file the pipeline never imports reloaded it"
    assert runs(root) == {**dict.fromkeys(BASE_STAGES, 1), "probe": 3}
    stop(live, root)


# --- 6. a broken pipeline.py ---------------------------------------------------------

BROKEN_TAGGED = ('write("c.out", f"{helpers.tag(read(\'c.txt\'))} n={n}\\n")',
                 'write("c.out", f"fixed {helpers.tag(read(\'c.txt\'))} n={n}\\n"')
FIXED_TAGGED = ('write("c.out", f"{helpers.tag(read(\'c.txt\'))} n={n}\\n")',
                'write("c.out", f"fixed {helpers.tag(read(\'c.txt\'))} n={n}\\n")')


def test_a_syntax_error_is_reported_the_engine_waits_and_the_fix_runs(
    make_project: MakeProject, up: StartUp
) -> None:
    root = make_project(BASE)
    live = up(root)
    first_wave(live, root)
    pipeline_py = root / "pipeline.py"
    good = pipeline_py.read_text()

    start = live.mark()
    edit(pipeline_py, *BROKEN_TAGGED)  # a missing closing parenthesis
    invalid = live.wait_event(
        lambda e: e["event"] == "pipeline_invalid", WAIT_S, "pipeline_invalid", start
    )
    assert "pipeline.py" in invalid["message"] + invalid["detail"], invalid
    assert "SyntaxError" in invalid["message"] + invalid["detail"], invalid
    assert live.proc.poll() is None, "pivot up exited on a broken pipeline"

    start = live.mark()
    pipeline_py.write_text(good.replace(*FIXED_TAGGED))
    loaded = live.wait_event(lambda e: e["event"] == "pipeline_loaded", WAIT_S, "the reload", start)
    assert loaded["changed"] == ["tagged"], loaded
    wave = next_wave(live, start, "the fix")
    head = wave[0]
    assert (head["trigger"], head["paths"], head["stages"]) == ("code", ["pipeline.py"], ["tagged"]), head
    assert statuses(wave) == {"tagged": "ran"}
    assert (root / "c.out").read_text() == "fixed v1:gamma n=1\n"
    stop(live, root)


def test_a_reload_the_broker_rejects_keeps_the_workers(make_project: MakeProject, up: StartUp) -> None:
    """A pipeline that imports but whose graph is invalid (two producers of one path) is
    rejected by the broker; the pool's workers are replaced only for an accepted one
    (they used to be replaced as soon as the pool had loaded it)."""
    root = make_project(BASE)
    live = up(root)
    first_wave(live, root)
    workers = all_pids(root)
    assert all(alive(pid) for pid in workers), workers
    pipeline_py = root / "pipeline.py"
    good = pipeline_py.read_text()
    clash = good + '''

@stage(deps=["c.txt"], outs=["a.out"])
def clash() -> None:
    write("a.out", "clash")
'''
    start = live.mark()
    pipeline_py.write_text(clash)
    invalid = live.wait_event(lambda e: e["event"] == "pipeline_invalid", WAIT_S, "the rejection", start)
    assert "a.out" in invalid["message"], invalid
    # A second rejected reload: by its answer the pool handled the first long ago (a
    # whole loader run), so workers it had stopped then would be gone by now.
    start = live.mark()
    pipeline_py.write_text(clash.replace('write("a.out", "clash")', 'write("a.out", "clash 2")'))
    live.wait_event(lambda e: e["event"] == "pipeline_invalid", WAIT_S, "the second rejection", start)
    assert all(alive(pid) for pid in workers), f"workers replaced for a rejected pipeline: {workers}"

    start = live.mark()
    pipeline_py.write_text(good)  # the good pipeline again
    live.wait_event(lambda e: e["event"] == "pipeline_loaded", WAIT_S, "the good reload", start)
    probe(live, root, live.mark())
    assert pids(root, "probe")[-1] not in workers, "the accepted reload did not replace the workers"
    stop(live, root)


def test_up_on_a_broken_pipeline_reports_it_and_runs_the_first_wave_once_fixed(
    make_project: MakeProject, up: StartUp
) -> None:
    good = BASE["pipeline.py"].replace(*FIXED_TAGGED)
    root = make_project({**BASE, "pipeline.py": BASE["pipeline.py"].replace(*BROKEN_TAGGED)})
    live = up(root)
    invalid = live.wait_event(lambda e: e["event"] == "pipeline_invalid", WAIT_S, "pipeline_invalid")
    assert "SyntaxError" in invalid["message"] + invalid["detail"], invalid
    live.wait_watching(root)
    assert live.proc.poll() is None, "pivot up exited on a broken pipeline"

    start = live.mark()
    (root / "pipeline.py").write_text(good)
    loaded = live.wait_event(lambda e: e["event"] == "pipeline_loaded", WAIT_S, "the fix", start)
    assert set(loaded["added"]) == BASE_STAGES, loaded
    wave = next_wave(live, start, "the first run")
    assert (wave[0]["wave"], wave[0]["trigger"]) == (1, "run"), wave[0]
    assert statuses(wave) == dict.fromkeys(BASE_STAGES, "ran")
    assert of_kind(live.since(0), "wave_started") == [wave[0]], "a wave before the fix"
    assert (root / "c.out").read_text() == "fixed v1:gamma n=1\n"
    probe(live, root, live.mark())
    stop(live, root)


def checked(root: Path, rel: str) -> bool:
    """Whether the broker's change check has recorded `rel` as it is now on disk: the
    checker stores every path it hashes in the state cache, and while pipeline.py is
    broken nothing else does. (No event says "checked, nothing to run".)"""
    with StateCache(root / ".pivot" / "state.db") as cache:
        return cache.recorded(root / rel) == hash_file(root / rel)


def test_while_pipeline_py_is_broken_changes_wait_and_the_fix_runs_them(
    make_project: MakeProject, up: StartUp
) -> None:
    """A fresh worker would import the broken file and fail every stage (one once did),
    so nothing runs until the fix; then the waiting changes run with what it changed."""
    root = make_project(BASE)
    live = up(root)
    first_wave(live, root)
    pipeline_py = root / "pipeline.py"
    good = pipeline_py.read_text()

    start = live.mark()
    edit(pipeline_py, *BROKEN_TAGGED)
    live.wait_event(lambda e: e["event"] == "pipeline_invalid", WAIT_S, "pipeline_invalid", start)
    (root / "a.txt").write_text("waited\n")
    wait_for(lambda: checked(root, "a.txt"), WAIT_S, "the broker to check a.txt")

    pipeline_py.write_text(good.replace(*FIXED_TAGGED))
    loaded = live.wait_event(lambda e: e["event"] == "pipeline_loaded", WAIT_S, "the fix", start)
    assert loaded["changed"] == ["tagged"], loaded
    wave = next_wave(live, start, "the fix")
    assert {"a.txt", "pipeline.py"} <= set(wave[0]["paths"]), wave[0]
    assert statuses(wave) == {"upper": "ran", "double": "ran", "tagged": "ran"}, wave
    started = [e for e in live.since(start) if is_wave_start(e)]
    assert started == [wave[0]], f"a wave ran while pipeline.py was broken: {started}"
    assert (root / "a2.out").read_text() == "WAITED\nWAITED\n"
    assert (root / "c.out").read_text() == "fixed v1:gamma n=1\n"
    probe(live, root, live.mark())
    stop(live, root)


# --- 8. a code edit while a wave runs ------------------------------------------------


def test_a_code_edit_during_a_long_stage_leaves_it_running_when_its_code_did_not_change(
    make_project: MakeProject, up: StartUp
) -> None:
    """`slow` does not call helpers.tag: an edit of it stops `fast` only. `slow` runs on,
    in the worker of the old code, once; the next wave takes it over and runs `fast`,
    on the new code, after it."""
    root = make_project(
        {**BOOKKEEPING, "pipeline.py": pipeline(LONG_BODY), "helpers.py": HELPERS_PY, "probe.txt": "p\n"}
    )
    live = up(root)
    live.wait_event(
        lambda e: e["event"] == "stage_started" and e["stage"] == "slow", WAIT_S, "slow to start"
    )
    wait_for(lambda: runs(root)["slow"] == 1, WAIT_S, "slow to run in its worker")
    [slow_pid] = pids(root, "slow")
    live.wait_watching(root)

    start = live.mark()
    edit(root / "helpers.py", 'return "v1:" + text.strip()', 'return "v2:" + text.strip()')
    end = live.wait_event(
        lambda e: e["event"] == "wave_finished" and e["wave"] == 1, WAIT_S, "wave 1 to end", start
    )
    assert "fast" in end["cancelled"] and end["moved"] == ["slow"], end
    events = live.since(0)
    wave1 = events[: next(i for i, e in enumerate(events) if e is end) + 1]
    check_wave_contract(wave1)
    assert "slow" not in statuses(wave1), wave1
    loaded = live.wait_event(lambda e: e["event"] == "pipeline_loaded", WAIT_S, "the reload", start)
    assert loaded["changed"] == ["fast"], loaded
    began = live.wait_event(is_wave_start, WAIT_S, "the wave after the reload", start)
    assert (began["trigger"], began["paths"]) == ("code", ["helpers.py"]), began
    assert {"slow", "fast"} <= set(began["stages"]), began
    assert alive(slow_pid), "the worker running slow was stopped"
    (root / "go").write_text("")
    wave = next_wave(live, start, "the code change")
    assert wave[0] is began
    assert statuses(wave)["slow"] == "ran" and statuses(wave)["fast"] == "ran", wave
    assert (root / "fast.out").read_text() == "v2:slow\n"
    assert runs(root)["fast-v2:"] == 1 and runs(root)["fast-v1:"] == 0, runs(root)
    assert runs(root)["slow"] == 1 and pids(root, "slow") == [slow_pid]
    assert pids(root, "fast-v2:") != [slow_pid]  # (not on the old code's worker)
    wait_for(lambda: not alive(slow_pid), WAIT_S, f"the old code's worker ({slow_pid}) to go once slow ended")
    stop(live, root)


def test_two_code_edits_during_a_long_stage_leave_it_running_and_its_downstream_runs_once_on_the_last(
    make_project: MakeProject, up: StartUp
) -> None:
    root = make_project(
        {**BOOKKEEPING, "pipeline.py": pipeline(LONG_BODY), "helpers.py": HELPERS_PY, "probe.txt": "p\n"}
    )
    live = up(root)
    wait_for(lambda: runs(root)["slow"] == 1, WAIT_S, "slow to run in its worker")
    [slow_pid] = pids(root, "slow")
    live.wait_watching(root)
    for old, new, wave in (("v1", "v2", 2), ("v2", "v3", 3)):
        start = live.mark()
        edit(root / "helpers.py", f'return "{old}:" + text.strip()', f'return "{new}:" + text.strip()')
        end = live.wait_event(
            lambda e, w=wave - 1: e["event"] == "wave_finished" and e["wave"] == w, WAIT_S, f"wave {wave - 1} to end",
            start,
        )
        assert end["moved"] == ["slow"] and end["cancelled"] == ["fast"], end
        began = live.wait_event(is_wave_start, WAIT_S, f"wave {wave}", start)
        assert began["wave"] == wave and set(began["stages"]) == {"slow", "fast"}, began
    assert alive(slow_pid)
    start = live.mark()
    (root / "go").write_text("")
    done = live.wait_event(lambda e: e["event"] == "wave_finished" and e["wave"] == 3, WAIT_S, "wave 3 to end")
    assert done["ran"] == ["slow", "fast"], done
    check_wave_contract(live.since(0))
    assert (root / "fast.out").read_text() == "v3:slow\n"
    assert runs(root) == {"probe": 1, "slow": 1, "fast-v3:": 1}, runs(root)
    wait_for(lambda: not alive(slow_pid), WAIT_S, f"the first code's worker ({slow_pid}) to go once slow ended")
    stop(live, root)


# `slow` calls helpers.tag too: an edit of it changes both.
LONG_TAGGED_BODY = LONG_BODY.replace('    record("slow")\n', '    record("slow-" + helpers.tag(""))\n')


def test_a_code_edit_of_a_running_stage_cancels_it_and_runs_it_again_on_the_new_code(
    make_project: MakeProject, up: StartUp
) -> None:
    assert LONG_TAGGED_BODY != LONG_BODY
    root = make_project(
        {**BOOKKEEPING, "pipeline.py": pipeline(LONG_TAGGED_BODY), "helpers.py": HELPERS_PY, "probe.txt": "p\n"}
    )
    live = up(root)
    wait_for(lambda: runs(root)["slow-v1:"] == 1, WAIT_S, "slow to run in its worker")
    live.wait_watching(root)

    start = live.mark()
    edit(root / "helpers.py", 'return "v1:" + text.strip()', 'return "v2:" + text.strip()')
    end = live.wait_event(
        lambda e: e["event"] == "wave_finished" and e["wave"] == 1, WAIT_S, "wave 1 to end", start
    )
    assert {"slow", "fast"} <= set(end["cancelled"]) and end["moved"] == [], end
    events = live.since(0)
    wave1 = events[: next(i for i, e in enumerate(events) if e is end) + 1]
    check_wave_contract(wave1)
    assert statuses(wave1)["slow"] == statuses(wave1)["fast"] == "cancelled", wave1
    wait_for(lambda: runs(root)["slow-v2:"] == 1, WAIT_S, "slow to run again on the new code")
    (root / "go").write_text("")
    wave = next_wave(live, start, "the code change")
    assert statuses(wave)["slow"] == "ran" and statuses(wave)["fast"] == "ran", wave
    assert (root / "fast.out").read_text() == "v2:slow\n"
    assert runs(root)["fast-v1:"] == 0 and runs(root)["slow-v1:"] == 1, runs(root)
    stop(live, root)


# -j 1: `slow` runs; the pool, the engine's one, takes the two others beyond its slot
# (its `queue`: 4 a job), held decided until its worker frees.
QUEUE_BODY = SLOW_STAGE + """

@stage(outs=["qa.out"])
def qa() -> None:
    record("qa-" + helpers.tag(""))
    write("qa.out", "qa\\n")


@stage(outs=["qb.out"])
def qb() -> None:
    record("qb-" + helpers.tag(""))
    write("qb.out", "qb\\n")
"""


def pool_queue(root: Path) -> int:
    """Stages the engine's pools hold beyond their slots (`pivot ps`)."""
    ps = run_pivot(root, "ps", "--json", timeout=WAIT_S)
    assert ps.returncode == 0, describe(ps)
    return sum(int(p.get("queued", 0)) for p in json.loads(ps.stdout)["processes"] if p["role"] == "pool")


def most_running_at_once(events: Events) -> int:
    running: set[str] = set()
    most = 0
    for e in events:
        if e["event"] == "stage_started":
            running.add(e["stage"])
            most = max(most, len(running))
        elif e["event"] == "stage_finished":
            running.discard(e["stage"])
    return most


def test_a_stage_queued_in_its_pool_starts_only_on_a_free_worker_and_a_cancel_ends_it_unrun(
    make_project: MakeProject, up: StartUp
) -> None:
    root = make_project({**BOOKKEEPING, "pipeline.py": pipeline(QUEUE_BODY), "helpers.py": HELPERS_PY,
                         "probe.txt": "p\n"})
    live = up(root, "-j", "1")
    wait_for(lambda: runs(root)["slow"] == 1, WAIT_S, "slow to run in its worker")

    wait_for(lambda: pool_queue(root) == 2, WAIT_S, "the pool to hold qa and qb beyond its slot")
    live.wait_watching(root)
    start = live.mark()
    edit(root / "helpers.py", 'return "v1:" + text.strip()', 'return "v2:" + text.strip()')
    end = live.wait_event(
        lambda e: e["event"] == "wave_finished" and e["wave"] == 1, WAIT_S, "wave 1 to end", start
    )
    events = live.since(0)
    wave1 = events[: next(i for i, e in enumerate(events) if e is end) + 1]
    check_wave_contract(wave1)
    # slow does not call helpers.tag: it runs on, taken over by the next wave.
    assert statuses(wave1) == {"probe": "ran", "qa": "cancelled", "qb": "cancelled"}, wave1
    assert end["moved"] == ["slow"], end
    assert [e["stage"] for e in wave1 if e["event"] == "stage_started"] == ["probe", "slow"], wave1
    (root / "go").write_text("")
    wave = next_wave(live, start, "the code change")
    assert statuses(wave) == {"slow": "ran", "qa": "ran", "qb": "ran"}, wave
    assert most_running_at_once(live.since(0)) == 1
    assert runs(root)["qa-v2:"] == runs(root)["qb-v2:"] == 1, runs(root)
    assert runs(root)["qa-v1:"] == runs(root)["qb-v1:"] == 0, runs(root)
    stop(live, root)


def test_a_graceful_stop_cancels_a_queued_stage_at_once_and_lets_the_running_one_finish(
    make_project: MakeProject, up: StartUp
) -> None:
    root = make_project({**BOOKKEEPING, "pipeline.py": pipeline(QUEUE_BODY), "helpers.py": HELPERS_PY,
                         "probe.txt": "p\n"})
    live = up(root, "-j", "1", "--grace", "30")
    wait_for(lambda: runs(root)["slow"] == 1, WAIT_S, "slow to run in its worker")
    wait_for(lambda: pool_queue(root) == 2, WAIT_S, "the pool to hold qa and qb beyond its slot")
    start = live.mark()
    live.terminate()
    # Its pool ends the queued stages while its only worker still runs slow.
    for stage in ("qa", "qb"):
        done = live.wait_event(lambda e, s=stage: e["event"] == "stage_finished" and e["stage"] == s,
                               WAIT_S, f"{stage} to be cancelled", start)
        assert (done["status"], done["reason"]) == ("cancelled", "not started: Pivot is stopping"), done
    (root / "go").write_text("")
    assert live.wait_exit(STOP_WITHIN_S) == 0
    assert statuses(live.since(0))["slow"] == "ran"
    assert runs(root)["qa-v1:"] == runs(root)["qb-v1:"] == 0, runs(root)


# `x` declares `feed`, a FIFO, as a dep: checking whether x is up to date hashes its
# deps, which blocks in open() until the test opens the write end, and in read() until
# it closes it. So the test holds x "being checked" by the pool for as long as it likes.
FIFO_BODY = """\
@stage(outs=["w.out"])
def w() -> None:
    record("w")
    write("w.out", "w\\n")


@stage(deps=["w.out", "feed"], outs=["x.out"])
def x() -> None:
    record("x")
    write("x.out", "x\\n")


@stage(deps=["x.out"], outs=["y.out"])
def y() -> None:
    record("y-" + helpers.tag(""))
    write("y.out", helpers.tag(read("x.out")) + "\\n")
"""


def fifo_writer(path: Path) -> int | None:
    """A write end of the FIFO `path` once a process has it open for reading, else None."""
    try:
        return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return None
        raise


def give_eof(path: Path) -> None:
    """Let whoever waits to read the FIFO `path` read an empty file."""
    fd = fifo_writer(path)
    if fd is not None:
        os.close(fd)


def test_a_stage_cancelled_while_being_checked_runs_again_on_the_new_code(
    make_project: MakeProject, up: StartUp
) -> None:
    """A code change while the pool is still checking x (hashing its deps): the reload
    answers first, x's cancellation after it. x must still run in the next wave."""
    root = make_project(
        {**BOOKKEEPING, "pipeline.py": pipeline(FIFO_BODY), "helpers.py": HELPERS_PY, "probe.txt": "p\n"}
    )
    feed = root / "feed"
    os.mkfifo(feed)
    live = up(root)
    live.wait_event(lambda e: e["event"] == "stage_finished" and e["stage"] == "w", WAIT_S, "w to run")
    held: list[int] = []

    def writer_open() -> bool:  # succeeds once x's check is in open(), blocking it in read()
        fd = fifo_writer(feed)
        if fd is not None:
            held.append(fd)
        return fd is not None

    wait_for(writer_open, WAIT_S, "the check of x to open feed")
    [hold] = held
    try:
        live.wait_watching(root)
        start = live.mark()
        edit(root / "helpers.py", 'return "v1:" + text.strip()', 'return "v2:" + text.strip()')
        loaded = live.wait_event(lambda e: e["event"] == "pipeline_loaded", WAIT_S, "the reload", start)
        assert loaded["changed"] == ["y"], loaded
    finally:
        os.close(hold)  # x's check reads EOF, and then learns it was cancelled
    end = live.wait_event(
        lambda e: e["event"] == "wave_finished" and e["wave"] == 1, WAIT_S, "wave 1 to end", start
    )
    assert {"x", "y"} <= set(end["cancelled"]), end
    began = live.wait_event(is_wave_start, WAIT_S, "the wave after the reload", start)
    assert began["trigger"] == "code", began
    # x's cancellation came after the reload answered: it runs again all the same (it
    # once did not, and y then failed with "dependency missing: x.out").
    assert {"x", "y"} <= set(began["stages"]), began

    def wave_over() -> bool:
        give_eof(feed)  # x is checked again (by the plan, then when dispatched)
        return any(e["event"] == "wave_finished" and e["wave"] == began["wave"] for e in live.since(start))

    wait_for(wave_over, WAIT_S, f"wave {began['wave']} to end")
    wave = next_wave(live, start, "the code change")
    assert statuses(wave)["x"] == statuses(wave)["y"] == "ran", wave
    assert (root / "y.out").read_text() == "v2:x\n"
    assert runs(root)["y-v2:"] == 1 and runs(root)["y-v1:"] == 0, runs(root)
    stop(live, root)


# --- the first wave waits for the watch -------------------------------------------

# Imported by every Python process of the engine (PYTHONPATH): holds the watcher, known
# by its --changes argument, before it even imports watchfiles, until a file exists.
WATCHER_GATE = """\
import os
import sys
import time

_gate = os.environ.get("PIVOT_TEST_WATCHER_GATE")
if _gate and "--changes" in sys.argv:
    _deadline = time.monotonic() + 30
    while not os.path.exists(_gate) and time.monotonic() < _deadline:
        time.sleep(0.01)
"""


def test_no_wave_starts_before_the_watch_exists_so_an_early_edit_is_in_the_first_wave(
    make_project: MakeProject, up: StartUp, tmp_path: Path
) -> None:
    """An edit made after a stage read its file but before the watch existed would be
    lost for good (it once was): the first wave waits for the watcher instead."""
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "sitecustomize.py").write_text(WATCHER_GATE)
    release = tmp_path / "watcher.release"
    path = os.pathsep.join(p for p in (str(gate), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PIVOT_TEST_WATCHER_GATE": str(release)}
    root = make_project(BASE)
    live = up(root, env=env)

    live.wait_event(lambda e: e["event"] == "pipeline_loaded", WAIT_S, "pipeline_loaded")
    (root / "a.txt").write_text("edited early\n")  # no watch yet: never reported
    watcher = live.watcher()
    assert watcher is None or root.stat().st_ino not in inotify_inodes(watcher.pid)
    assert of_kind(live.since(0), "wave_started") == [], "a wave started before the watch"
    release.write_text("")

    wave = first_wave(live, root)
    assert statuses(wave) == dict.fromkeys(BASE_STAGES, "ran")
    assert (root / "a.out").read_text() == "EDITED EARLY\n"
    probe(live, root, live.mark())
    assert runs(root) == {**dict.fromkeys(BASE_STAGES, 1), "probe": 2}
    stop(live, root)


# --- 9. how editors save -------------------------------------------------------------

COUNT_BODY = BASE_BODY + """

@stage(deps=["inputs/"], outs=["count.out"])
def count() -> None:
    record("count")
    names = sorted(os.listdir("inputs"))
    write("count.out", "".join(read(f"inputs/{n}") for n in names))
"""
INPUTS = {f"inputs/{i:03}.txt": f"{i}\n" for i in range(100)}


def test_editor_saves_and_a_hundred_files_at_once_start_one_wave_each(
    make_project: MakeProject, up: StartUp
) -> None:
    """A long quiet window (200 ms) pins "at once": each burst below is one change."""
    root = make_project({**BASE, "pipeline.py": pipeline(COUNT_BODY), **INPUTS})
    live = up(root, debounce_ms=200)
    first_wave(live, root, root / "inputs")

    # Write a temp file, then rename it over the dep (an atomic save).
    start = live.mark()
    tmp = root / "a.txt.tmp"
    tmp.write_text("renamed\n")
    os.replace(tmp, root / "a.txt")
    wave = next_wave(live, start, "the atomic save of a.txt")
    head = wave[0]
    # The temp file, gone after the rename and never recorded, is no change (it once
    # was named in `paths` too).
    assert (head["trigger"], head["paths"], head["stages"]) == ("files", ["a.txt"], ["upper", "double"]), head
    assert (root / "a.out").read_text() == "RENAMED\n"

    # Delete the dep, then create it again.
    start = live.mark()
    (root / "c.txt").unlink()
    (root / "c.txt").write_text("recreated\n")
    wave = next_wave(live, start, "the delete and create of c.txt")
    head = wave[0]
    assert (head["trigger"], head["paths"], head["stages"]) == ("files", ["c.txt"], ["tagged"]), head
    assert statuses(wave) == {"tagged": "ran"}
    assert (root / "c.out").read_text() == "v1:recreated n=1\n"

    # A hundred files of a folder dep at once.
    start = live.mark()
    for name in INPUTS:
        (root / name).write_text(f"new {name}\n")
    wave = next_wave(live, start, "the edit of 100 files")
    head = wave[0]
    assert (head["trigger"], head["stages"]) == ("files", ["count"]), head
    assert sorted(head["paths"]) == sorted(INPUTS), head["paths"]
    assert statuses(wave) == {"count": "ran"}
    probe(live, root, live.mark())
    started = [e for e in live.since(start) if is_wave_start(e)]
    assert len(started) == 2, started  # the 100 files' wave, then the probe's
    assert runs(root) == {"probe": 2, "upper": 2, "double": 2, "tagged": 2, "count": 2}
    stop(live, root)


@pytest.mark.parametrize("how", ["write", "rename"])
def test_a_lone_completed_save_skips_the_quiet_window(make_project: MakeProject, up: StartUp, how: str) -> None:
    """A save (written and closed, or renamed into place) goes through the engine as a
    settled report: its wave alone, with the right paths, whatever the quiet window
    (here a minute, capped at the longest wait, 5 s). One save per engine: a second one
    within the window is a burst. That it skips the window is proven where time is an
    argument: test_broker_state.py (the queue) and test_watcher.py (the settled flag)."""
    root = make_project(BASE)
    live = up(root, debounce_ms=60_000)
    first_wave(live, root)
    start = live.mark()
    if how == "write":
        (root / "a.txt").write_text("saved\n")
    else:
        (root / "a.txt.tmp").write_text("renamed\n")
        os.replace(root / "a.txt.tmp", root / "a.txt")
    wave = next_wave(live, start, f"the save of a.txt ({how})")
    assert (wave[0]["paths"], wave[0]["stages"]) == (["a.txt"], ["upper", "double"]), wave[0]
    assert statuses(wave) == {"upper": "ran", "double": "ran"}
    assert (root / "a.out").read_text() == ("SAVED\n" if how == "write" else "RENAMED\n")
    stop(live, root)


def test_a_file_still_being_written_is_read_once_closed_and_its_stage_runs_once(
    make_project: MakeProject, up: StartUp
) -> None:
    """A slow writer pausing far longer than the quiet window: the half-written file is
    never checked, a save elsewhere meanwhile runs its own wave, and the stage reading
    the file runs once, on all of it, when the writer closes it."""
    root = make_project(BASE)
    live = up(root)
    first_wave(live, root)

    with open(root / "a.txt", "w") as writer:
        writer.write("first half ")
        writer.flush()
        # probe.txt is saved after the half write: its wave comes first, alone.
        probe(live, root, live.mark())
        start = live.mark()
        writer.write("second half\n")
    wave = next_wave(live, start, "the close of a.txt")
    assert (wave[0]["paths"], wave[0]["stages"]) == (["a.txt"], ["upper", "double"]), wave[0]
    assert (root / "a.out").read_text() == "FIRST HALF SECOND HALF\n"
    assert runs(root) == {"probe": 2, "upper": 2, "double": 2, "tagged": 1}
    probe(live, root, live.mark())
    stop(live, root)


# --- 10. outputs never retrigger -----------------------------------------------------

# A folder output (new files in a new folder) read by another stage.
PARTS_BODY = """\
@stage(deps=["a.txt"], outs=["parts/"])
def split() -> None:
    record("split")
    os.makedirs("parts/sub", exist_ok=True)
    for i, word in enumerate(read("a.txt").split()):
        write(f"parts/{i}.txt", word + "\\n")
    write("parts/sub/all.txt", read("a.txt"))


@stage(deps=["parts/"], outs=["joined.txt"])
def join() -> None:
    record("join")
    write("joined.txt", "".join(sorted(os.listdir("parts"))))
"""


@pytest.mark.parametrize(("before", "after", "parts"), [
    ("x y\n", "x y z\n", ["0.txt", "1.txt", "2.txt", "sub"]),
    # Fewer parts than the last run: those it does not write again were removed with the
    # folder before it ran; their state-cache rows of the last run made their removal
    # look like a hand edit, and started a wave of nothing.
    ("x y z\n", "x\n", ["0.txt", "sub"]),
], ids=["grows", "shrinks"])
def test_outputs_written_by_waves_start_no_wave(
    make_project: MakeProject, up: StartUp, before: str, after: str, parts: list[str],
) -> None:
    root = make_project(
        {**BOOKKEEPING, "pipeline.py": pipeline(PARTS_BODY), "helpers.py": HELPERS_PY, "a.txt": before,
         "probe.txt": "p\n"}
    )
    live = up(root)
    first_wave(live, root)
    probe(live, root, live.mark())  # after the first wave: parts/ appeared as a new folder
    live.wait_watching(root / "parts", root / "parts" / "sub")  # its rewrites are seen

    start = live.mark()
    (root / "a.txt").write_text(after)
    wave = next_wave(live, start, "the edit of a.txt")
    assert statuses(wave) == {"split": "ran", "join": "ran"}
    assert sorted(p.name for p in (root / "parts").iterdir()) == parts
    probed = probe(live, root, live.mark())  # after a files wave that rewrote parts/ and joined.txt
    assert waves_since(live, start) == [wave[0]["wave"], probed[0]["wave"]]
    assert runs(root) == {"split": 2, "join": 2, "probe": 3}
    stop(live, root)


# `split` as a command stage whose folder is not cached (dvc.yaml's `cache: false`).
UNCACHED_PARTS = {
    "pipeline.py": textwrap.dedent("""\
        from pivot import stage

        stage(name="split", cmd="python split.py", deps=["a.txt", "split.py"], outs=["parts/"],
              uncached=["parts/"])
        """),
    "split.py": textwrap.dedent("""\
        import os

        os.makedirs("parts/sub", exist_ok=True)
        for i, word in enumerate(open("a.txt").read().split()):
            with open(f"parts/{i}.txt", "w") as f:
                f.write(word + "\\n")
        with open("parts/sub/all.txt", "w") as f:
            f.write(open("a.txt").read())
        """),
}


@pytest.mark.parametrize("cached", [True, False])
def test_the_change_check_takes_no_file_a_folder_output_no_longer_holds_for_an_edit(
    make_project: MakeProject, cached: bool,
) -> None:
    """The check the engine makes of the paths its watcher reports (broker/changes.py),
    after the same two runs, one-shot: the test above depends on the watcher's timing."""
    from broker.changes import confirm

    files = {**BOOKKEEPING, "pipeline.py": pipeline(PARTS_BODY), "helpers.py": HELPERS_PY} if cached else UNCACHED_PARTS
    root = make_project({**files, "a.txt": "x y z\n", "probe.txt": "p\n"})
    assert run_pivot(root, "repro").returncode == 0
    (root / "a.txt").write_text("x\n")
    assert run_pivot(root, "repro").returncode == 0
    assert sorted(p.name for p in (root / "parts").iterdir()) == ["0.txt", "sub"]
    with StateCache(root / ".pivot" / "state.db") as cache:
        assert confirm(root, cache, ("parts/1.txt", "parts/2.txt")) == []
    (root / "parts" / "0.txt").unlink()  # (one it holds: a change)
    with StateCache(root / ".pivot" / "state.db") as cache:
        assert confirm(root, cache, ("parts/0.txt",)) == ["parts/0.txt"]


# --- 11. a hand edit of an output ----------------------------------------------------


def test_a_hand_edited_output_while_idle_is_saved_and_replaced(
    make_project: MakeProject, up: StartUp
) -> None:
    root = make_project(BASE)
    live = up(root)
    first_wave(live, root)
    original = (root / "a.out").read_bytes()

    start = live.mark()
    (root / "a.out").write_text("edited by hand\n")
    wave = next_wave(live, start, "the hand edit of a.out")
    head = wave[0]
    assert (head["trigger"], head["paths"]) == ("files", ["a.out"]), head
    assert "upper" in head["stages"] and "tagged" not in head["stages"], head
    assert statuses(wave)["upper"] in ("ran", "restored"), wave
    notes = [e for e in wave if e["event"] == "log" and e["stream"] == "pivot"]
    assert len(notes) == 1 and notes[0]["stage"] == "upper", notes
    match = re.search(r"`pivot checkout --hash (\w+) a\.out`", notes[0]["line"])
    assert match and "hand-edited" in notes[0]["line"], notes[0]
    assert (root / "a.out").read_bytes() == original
    cached = root / ".pivot" / "cache" / "files" / match.group(1)[:2] / match.group(1)[2:]
    assert cached.read_bytes() == b"edited by hand\n"

    probe(live, root, live.mark())  # the restored a.out starts nothing
    stop(live, root)


# `gen` writes a file into data/, a folder `listing` reads as a whole.
FOLDER_DEP_BODY = """\
@stage(outs=["data/gen.txt"])
def gen() -> None:
    record("gen")
    write("data/gen.txt", "generated\\n")


@stage(deps=["data/"], outs=["listing.txt"])
def listing() -> None:
    record("listing")
    write("listing.txt", ",".join(sorted(os.listdir("data"))) + "\\n")
"""


def test_restoring_an_output_inside_a_folder_dep_starts_no_second_wave(
    make_project: MakeProject, up: StartUp
) -> None:
    """A restore swaps the output in through a `.pivot-tmp-` file beside it
    (state/cache.py `_swap_in`); the watcher reports it. Inside a folder another stage
    reads, it once started a second wave."""
    root = make_project(
        {**BOOKKEEPING, "pipeline.py": pipeline(FOLDER_DEP_BODY), "helpers.py": HELPERS_PY,
         "data/raw.txt": "raw\n", "probe.txt": "p\n"}
    )
    live = up(root)
    first_wave(live, root, root / "data")
    original = (root / "data" / "gen.txt").read_bytes()

    start = live.mark()
    (root / "data" / "gen.txt").write_text("by hand\n")
    wave = next_wave(live, start, "the hand edit of data/gen.txt")
    assert statuses(wave) == {"gen": "restored", "listing": "skipped"}, wave
    assert (root / "data" / "gen.txt").read_bytes() == original
    probe(live, root, live.mark())
    stop(live, root)


# --- 12. stopping, and one engine per project ----------------------------------------


def test_sigterm_mid_stage_exits_0_and_a_second_up_is_refused(
    make_project: MakeProject, up: StartUp, proc_guard: ProcGuard
) -> None:
    root = make_project({"pipeline.py": HELD_PIPELINE})
    live = up(root, "--grace", "0")
    held = held_stage_pid(root)

    second = run_pivot(root, "up", "--display", "json")
    assert second.returncode == 2, describe(second)
    assert "already running" in second.stderr and "Traceback" not in second.stderr, describe(second)
    assert second.stdout == "", describe(second)

    began = time.monotonic()
    stop(live, root)
    took = time.monotonic() - began
    assert took < QUICK_STOP_S, f"pivot up took {took:.1f} s to stop"
    # With --grace 0 the held stage is cancelled at once: the pool, its workers and the
    # watcher are gone when pivot up has exited.
    assert proc_guard.leftovers() == [], [p.show() for p in proc_guard.leftovers()]
    assert not alive(held), "the worker running the held stage outlived pivot up"
    assert not (root / "held.txt").exists()
    release_held_stage(root)  # nothing is waiting for it any more


def test_when_pivot_up_is_killed_every_process_it_started_stops(
    make_project: MakeProject, up: StartUp, proc_guard: ProcGuard
) -> None:
    """The broker lives in the `pivot up` process: SIGKILL is the broker dying. The pool
    (silent broker), its loky workers, their forkserver and the watcher (orphaned) all
    stop on their own; a new `pivot up` then starts normally."""
    root = make_project(BASE)
    live = up(root)
    first_wave(live, root)
    started = {p.pid for p in proc_guard.leftovers()} - {live.proc.pid}
    assert len(started) >= 3, [p.show() for p in proc_guard.leftovers()]  # pool, watcher, workers
    os.kill(live.proc.pid, signal.SIGKILL)
    live.wait_exit(STOP_WITHIN_S)

    def gone() -> bool:
        return not started & {p.pid for p in proc_guard.leftovers()}

    wait_for(gone, STOP_WITHIN_S, "the processes of the killed pivot up to stop")
    again = up(root)
    first_wave(again, root)
    stop(again, root)


def test_on_sigterm_a_running_stage_may_finish_within_the_grace_period(
    make_project: MakeProject, up: StartUp, proc_guard: ProcGuard
) -> None:
    root = make_project({"pipeline.py": HELD_PIPELINE})
    live = up(root, "--grace", "30")
    held_stage_pid(root)
    start = live.mark()
    live.terminate()
    wait_for(lambda: "running stages get up to 30 s" in live.stderr, WAIT_S, "the grace notice")
    assert live.proc.poll() is None
    release_held_stage(root)
    assert live.wait_exit(STOP_WITHIN_S) == 0, live.stderr
    assert "Traceback" not in live.stderr, live.stderr
    done = statuses(live.since(start))
    # held finished and was committed; after had not started: nothing new starts.
    assert done == {"held": "ran", "after": "cancelled"}, live.since(start)
    assert (root / "held.txt").read_text() == "held\n"
    assert "held: up to date" in pivot_ok(root, "status")
    assert proc_guard.leftovers() == [] and run_dir_leftovers(root) == []


# --- 10. --restart: a stage whose inputs change while it runs -----------------------

# `held` reads in.txt, says so in held.started ("pid content"), then waits for
# held.release and writes what it read.
FED_HELD = PRELUDE + '''

@stage(deps=["in.txt"], outs=["held.txt"])
def held() -> None:
    record("held")
    data = read("in.txt").strip()
    write("held.started.tmp", f"{os.getpid()} {data}")
    os.replace("held.started.tmp", "held.started")
    deadline = time.monotonic() + 30
    while not os.path.exists("held.release"):
        if time.monotonic() > deadline:
            raise TimeoutError("held.release never appeared")
        time.sleep(0.02)
    write("held.txt", data + "\\n")
'''


def held_reading(root: Path, data: str) -> int:
    """Wait until the held stage runs having read `data`; the pid of its worker."""
    marker = root / "held.started"

    def started() -> int:
        text = marker.read_text() if marker.exists() else ""
        pid, _, seen = text.partition(" ")
        return int(pid) if seen == data else 0

    return wait_for(started, WAIT_S, f"the held stage to run on {data!r}")


def fed_project(make_project: MakeProject) -> Path:
    return make_project({**BOOKKEEPING, "pipeline.py": FED_HELD, "helpers.py": HELPERS_PY,
                         "in.txt": "v1\n", "probe.txt": "probe 0\n"})


def test_restart_cancels_a_stage_whose_input_changed_and_runs_it_again_at_once(
    make_project: MakeProject, up: StartUp
) -> None:
    root = fed_project(make_project)
    live = up(root, "--restart", "-j", "1")
    first = held_reading(root, "v1")
    live.wait_watching(root)
    (root / "in.txt").write_text("v2\n")
    second = held_reading(root, "v2")
    # Cancelled inside its worker, which lives on and runs it again.
    assert second == first and alive(first)
    release_held_stage(root)
    wave = next_wave(live, 0, "the first run")
    assert statuses(wave)["held"] == "ran"
    starts = [e for e in wave if e["event"] == "stage_started" and e["stage"] == "held"]
    assert len(starts) == 2, wave
    assert (root / "held.txt").read_text() == "v2\n"
    assert runs(root)["held"] == 2
    probe(live, root, live.mark())  # the edit of in.txt started no second wave
    stop(live, root)


def test_restart_kills_the_worker_of_a_stage_that_cannot_see_its_cancel(
    make_project: MakeProject, up: StartUp
) -> None:
    """A stage stuck in native code never runs the cancel's signal handler (here: it
    blocks the signal). Its worker is killed after 3 s and the stage runs again, once,
    on the new input."""
    root = fed_project(make_project)
    blocking = FED_HELD.replace(
        '    record("held")\n',
        '    record("held")\n    import signal\n    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n',
    )
    assert blocking != FED_HELD
    (root / "pipeline.py").write_text(blocking)
    live = up(root, "--restart", "-j", "1")
    first = held_reading(root, "v1")
    live.wait_watching(root)
    (root / "in.txt").write_text("v2\n")
    second = held_reading(root, "v2")
    assert second != first and not alive(first), (first, second)
    release_held_stage(root)
    wave = next_wave(live, 0, "the first run")
    assert statuses(wave)["held"] == "ran" and (root / "held.txt").read_text() == "v2\n"
    assert runs(root)["held"] == 2
    # The pool itself lived on: it replaced its workers, it did not crash.
    assert of_kind(live.since(0), "pool_lost") == [] and "exited" not in live.stderr, live.stderr
    stop(live, root)


def test_without_restart_a_stage_whose_input_changed_finishes_then_runs_again(
    make_project: MakeProject, up: StartUp
) -> None:
    root = fed_project(make_project)
    live = up(root)
    held_reading(root, "v1")
    live.wait_watching(root)
    (root / "in.txt").write_text("v2\n")
    release_held_stage(root)
    wave = next_wave(live, 0, "the first run")
    assert statuses(wave)["held"] == "ran"
    again = next_wave(live, live.events.index(wave[-1]) + 1, "the edit of in.txt")
    assert (again[0]["trigger"], again[0]["stages"], again[0]["paths"]) == ("files", ["held"], ["in.txt"])
    assert statuses(again) == {"held": "ran"}
    assert (root / "held.txt").read_text() == "v2\n"
    stop(live, root)


REMOVABLE = """\
import os
import time

from pivot import stage


@stage(deps=["in.txt"], outs=["a.txt"])
def a() -> None:
    with open("a.txt", "w") as f:
        f.write(open("in.txt").read())


@stage(deps=["in.txt"], outs=["held.txt"])
def held() -> None:
    open("held.started", "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists("held.release"):
        if time.monotonic() > deadline:
            raise TimeoutError("held.release never appeared")
        time.sleep(0.02)
    with open("held.txt", "w") as f:
        f.write("held\\n")
"""


def test_a_stage_removed_from_the_pipeline_while_it_runs_leaves_the_engine_running(
    make_project: MakeProject, up: StartUp
) -> None:
    """Its result came in for a stage the new pipeline has not: the broker died of a
    KeyError (found by a new user's hunt; renaming it did the same)."""
    root = make_project({"pipeline.py": REMOVABLE, "in.txt": "1\n", "held.release": ""})
    live = up(root)
    first_wave(live, root)
    (root / "held.release").unlink()
    (root / "held.started").unlink()
    start = live.mark()
    (root / "in.txt").write_text("2\n")
    wait_for((root / "held.started").exists, WAIT_S, "held to run again")
    text = (root / "pipeline.py").read_text()
    (root / "pipeline.py").write_text(text[: text.index('@stage(deps=["in.txt"], outs=["held.txt"])')])
    live.wait_event(lambda e: e["event"] == "pipeline_loaded" and e["removed"] == ["held"], WAIT_S,
                    "the pipeline without held", start)
    (root / "held.release").write_text("")
    wave = next_wave(live, start, "the edit of in.txt")
    assert statuses(wave) == {"a": "ran", "held": "ran"}, wave
    again = live.mark()
    (root / "in.txt").write_text("3\n")
    assert statuses(next_wave(live, again, "the next edit")) == {"a": "ran"}
    assert (root / "a.txt").read_text() == "3\n"
    stop(live, root)
