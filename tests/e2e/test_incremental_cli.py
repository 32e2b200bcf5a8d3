"""What `pivot repro` re-runs, restores and keeps, end to end: the real CLI on small
purpose-built projects (and copies of the quickstart).

Every stage of the pipelines below appends its name to `runs.log`, a file it does not
declare as an output: counting its lines tells what really executed, whatever the
events say. Projects that must have run once are copied from a template that ran once
per session (`ran_copy`), so each test starts from an up-to-date project without paying
for the first run.

Sections follow the rules under test: helpers in fingerprints, the run cache, hand
edits, `checkout`, `gc`, the state cache, early cutoff, directories, `status
--explain`, `repro --dry-run`, metrics, failures. Ctrl-C is in
tests/system/test_interrupt_cache.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from procs import (
    HELD_PIPELINE,
    ProcGuard,
    check_wave_contract,
    describe,
    finished,
    held_stage_pid,
    of_kind,
    one,
    parse_events,
    release_held_stage,
    run_dir_leftovers,
    run_pivot,
    wait_exit,
    write_files,
)
from procs import (
    pivot_ok as ok,
)

pytestmark = pytest.mark.timeout(60)

Events = list[dict[str, Any]]
Files = dict[str, str]
RanCopy = Callable[[Files], Path]
MakeProject = Callable[..., Path]

QUICKSTART_OUTPUTS = ["data/clean.csv", "data/features.csv", "model/model.json", "metrics.json"]


# --- running pivot ----------------------------------------------------------------------


def repro(root: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Events]:
    """`pivot repro --json ARGS`: the result and its events, checked against the wave
    contract (every stage of the wave in exactly one list, `restored` included)."""
    result = run_pivot(root, "repro", "--json", *args)
    events = parse_events(result.stdout)
    check_wave_contract(events)
    assert run_dir_leftovers(root) == [], describe(result)
    return result, events


def repro_ok(root: Path, *args: str) -> Events:
    result, events = repro(root, *args)
    assert result.returncode == 0, describe(result)
    return events


def usage_error(cwd: Path, *args: str) -> str:
    """stderr of `pivot ARGS`, which must fail with exit code 2 and an `error:` line."""
    result = run_pivot(cwd, *args)
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    assert any(line.startswith("error:") for line in result.stderr.splitlines()), describe(result)
    return result.stderr


def status_json(root: Path, *args: str) -> dict[str, Any]:
    rows: dict[str, Any] = json.loads(ok(root, "status", "--json", *args))["stages"]
    return rows


def dry_run_json(root: Path, *args: str) -> dict[str, Any]:
    plan: dict[str, Any] = json.loads(ok(root, "repro", "--dry-run", "--json", *args))["stages"]
    return plan


# --- reading events, projects and the cache ---------------------------------------------


def statuses(events: Events) -> dict[str, str]:
    return {name: e["status"] for name, e in finished(events).items()}


def reason_codes(events: Events) -> dict[str, str]:
    return {name: e["reason_code"] for name, e in finished(events).items()}


def started(events: Events) -> list[str]:
    return [e["stage"] for e in of_kind(events, "stage_started")]


def pivot_notes(events: Events) -> list[dict[str, Any]]:
    """Pivot's own log lines (e.g. "saved hand-edited output ...")."""
    return [e for e in of_kind(events, "log") if e["stream"] == "pivot"]


def runs(root: Path) -> Counter[str]:
    """How many times each stage really executed (lines of runs.log)."""
    log = root / "runs.log"
    return Counter(log.read_text().split()) if log.exists() else Counter()


def stale(root: Path) -> list[str]:
    return [name for name, row in status_json(root).items() if row["stale"]]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not in {path} exactly once:\n{text}"
    path.write_text(text.replace(old, new))


def cached_contents(root: Path) -> list[bytes]:
    """The bytes of every file object in the content cache, sorted."""
    files = root / ".pivot" / "cache" / "files"
    return sorted(p.read_bytes() for p in files.rglob("*") if p.is_file() and not p.name.startswith("."))


def cached_object(root: Path, digest: str) -> Path:
    """Where the content cache keeps a file object (layout: pivot/state/cache.py)."""
    return root / ".pivot" / "cache" / "files" / digest[:2] / digest[2:]


def run_cache_entries(root: Path) -> int:
    return len(list((root / ".pivot" / "runcache").glob("*/*.json")))


def tree(root: Path, *, run_dir: bool = True) -> dict[str, tuple[str, int, bytes]]:
    """Every path under root as (kind, mtime_ns, content), except the state cache
    (`.pivot/state.db*`, which reading commands may update), `.pivot/tmp/` (the
    fingerprint parse cache) and the mtime of `.pivot/` itself (the state cache's WAL
    files come and go there). `run_dir=False` leaves out `.pivot/run/` too (commands
    that write take its lock, which records their pid)."""
    skipped = {".pivot/tmp"} if run_dir else {".pivot/tmp", ".pivot/run"}
    snap: dict[str, tuple[str, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if (here / d).relative_to(root).as_posix() not in skipped]
        for name in [*dirnames, *filenames]:
            path = here / name
            rel = path.relative_to(root).as_posix()
            if rel.startswith(".pivot/state.db"):
                continue
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode):
                snap[rel] = ("dir", 0 if rel == ".pivot" else st.st_mtime_ns, b"")
            else:
                snap[rel] = ("file", st.st_mtime_ns, path.read_bytes())
    return snap


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def checkout_command(note: str, path: str) -> tuple[str, list[str]]:
    """The hash and the `pivot checkout --hash HASH PATH` command a note tells the user to run."""
    match = re.search(r"`(pivot checkout --hash (d?[0-9a-f]{32}) (\S+))`", note)
    assert match, f"no checkout command in {note!r}"
    assert match.group(3) == path, note
    assert match.group(2) in note.split("`")[0], f"the hash is not named before the command: {note!r}"
    return match.group(2), shlex.split(match.group(1))[1:]


def stage_src(body: str, imports: str = "") -> str:
    """A pipeline.py whose stages can call `record(name)` to append to runs.log."""
    head = imports + "from pivot import stage\n\n\n" + RECORD
    return head + "\n\n" + textwrap.dedent(body)


RECORD = '''\
def record(name: str) -> None:
    """One line in runs.log (not an output) per real execution."""
    with open("runs.log", "a") as f:
        f.write(name + "\\n")
'''


# --- projects ------------------------------------------------------------------------------

# `scaled` calls helpers.scale (which reads FACTOR), `loud` calls helpers.shout.
HELPERS_PY = '''\
"""Helpers shared by the stages."""

FACTOR = 2


def scale(x: int) -> int:
    return x * FACTOR


def shout(text: str) -> str:
    return text.upper()
'''

HELPER_PROJECT: Files = {
    "helpers.py": HELPERS_PY,
    "pipeline.py": stage_src(
        """\
        @stage(outs=["scaled.txt"])
        def scaled(n: int = 3) -> None:
            record("scaled")
            with open("scaled.txt", "w") as f:
                f.write(f"scaled: {helpers.scale(n)}\\n")


        @stage(outs=["loud.txt"])
        def loud() -> None:
            record("loud")
            with open("loud.txt", "w") as f:
                f.write(helpers.shout("quiet") + "\\n")
        """,
        imports="import helpers\n\n",
    ),
}

# input.txt -> clean (strips trailing blanks; `verbose` only prints) -> shout.
CHAIN_PROJECT: Files = {
    "input.txt": "alpha\nbeta\n",
    "pipeline.py": stage_src(
        """\
        @stage(deps=["input.txt"], outs=["clean.txt"])
        def clean(verbose: bool = False) -> None:
            record("clean")
            with open("input.txt") as f:
                lines = [line.rstrip() for line in f]
            if verbose:
                print(f"{len(lines)} lines")
            with open("clean.txt", "w") as f:
                f.write("\\n".join(lines) + "\\n")


        @stage(deps=["clean.txt"], outs=["shout.txt"])
        def shout() -> None:
            record("shout")
            with open("clean.txt") as src, open("shout.txt", "w") as dst:
                dst.write(src.read().upper())
        """
    ),
}

# raw/ (a directory dep) -> split -> data/parts/ (a directory output); `upper` reads one
# file inside it. a.txt depends on raw/1.txt only, b.txt on the list of raw files.
DIR_PROJECT: Files = {
    "raw/1.txt": "one\n",
    "pipeline.py": stage_src(
        """\
        @stage(deps=["raw/"], outs=["data/parts/"])
        def split() -> None:
            record("split")
            names = sorted(os.listdir("raw"))
            with open("raw/1.txt") as f:
                first = f.read()
            os.makedirs("data/parts/sub", exist_ok=True)
            with open("data/parts/a.txt", "w") as f:
                f.write("a: " + first)
            with open("data/parts/b.txt", "w") as f:
                f.write("b: " + ",".join(names) + "\\n")
            with open("data/parts/sub/c.txt", "w") as f:
                f.write("c\\n")


        @stage(deps=["data/parts/a.txt"], outs=["a_upper.txt"])
        def upper() -> None:
            record("upper")
            with open("data/parts/a.txt") as src, open("a_upper.txt", "w") as dst:
                dst.write(src.read().upper())
        """,
        imports="import os\n\n",
    ),
}


@pytest.fixture(scope="session")
def _ran_templates() -> dict[str, Path]:
    return {}


@pytest.fixture
def ran_copy(
    tmp_path: Path,
    proc_guard: ProcGuard,
    tmp_path_factory: pytest.TempPathFactory,
    _ran_templates: dict[str, Path],
) -> RanCopy:
    """ran_copy(files) -> a copy of the project `files` after one successful run."""

    def make(files: Files) -> Path:
        key = json.dumps(files, sort_keys=True)
        if key not in _ran_templates:
            base = tmp_path_factory.mktemp("ran")
            template = write_files(base / "proj", files)
            guard = ProcGuard()
            guard.watch_dir(base)
            events = repro_ok(template)
            assert set(statuses(events).values()) == {"ran"}, events
            left = guard.check()
            assert not left, [p.show() for p in left]
            _ran_templates[key] = template
        return Path(shutil.copytree(_ran_templates[key], tmp_path / "proj", symlinks=True))

    return make


# --- 1. helpers in fingerprints --------------------------------------------------------


def test_helper_edit_reruns_only_the_stage_calling_it_and_names_the_helper(ran_copy: RanCopy) -> None:
    root = ran_copy(HELPER_PROJECT)
    assert runs(root) == {"scaled": 1, "loud": 1}

    edit(root / "helpers.py", "return x * FACTOR\n", "return x * FACTOR + 1\n")
    events = repro_ok(root)
    assert statuses(events) == {"scaled": "ran", "loud": "skipped"}
    assert reason_codes(events) == {"scaled": "code_changed", "loud": "up_to_date"}
    assert started(events) == ["scaled"]
    for e in [one(events, "stage_started"), finished(events)["scaled"]]:
        assert e["details"] == {"changed": ["helpers.scale"], "added": [], "removed": []}, e
        assert "helpers.scale" in e["reason"], e
    assert (root / "scaled.txt").read_text() == "scaled: 7\n"
    assert runs(root) == {"scaled": 2, "loud": 1}

    # A module-level constant the helper reads is part of the fingerprint, by value.
    edit(root / "helpers.py", "FACTOR = 2\n", "FACTOR = 10\n")
    events = repro_ok(root)
    assert statuses(events) == {"scaled": "ran", "loud": "skipped"}
    scaled = finished(events)["scaled"]
    assert scaled["reason_code"] == "code_changed"
    assert scaled["details"]["changed"] == ["helpers.FACTOR"], scaled
    assert (root / "scaled.txt").read_text() == "scaled: 31\n"
    assert runs(root) == {"scaled": 3, "loud": 1}


def test_comment_docstring_blank_line_and_unreached_code_edits_run_nothing(ran_copy: RanCopy) -> None:
    root = ran_copy(HELPER_PROJECT)
    helpers = root / "helpers.py"
    helpers.write_text(helpers.read_text() + "\n\nUNUSED = [1, 2]\n\n\ndef unused() -> int:\n    return 41\n")
    edit(helpers, '"""Helpers shared by the stages."""\n', '# a comment\n\n"""Reworded docstring."""\n\n')
    edit(
        helpers,
        "def scale(x: int) -> int:\n    return x * FACTOR\n",
        'def scale(x: int) -> int:\n    """Multiply by FACTOR."""\n\n    # no-op comment\n'
        "    return x * FACTOR  # trailing comment\n",
    )
    pipeline = root / "pipeline.py"
    edit(pipeline, "def scaled(n: int = 3) -> None:\n", 'def scaled(n: int = 3) -> None:\n    """Scale n."""\n\n')
    edit(pipeline, "    record(\"loud\")\n", "    # says what ran\n\n    record(\"loud\")\n")
    pipeline.write_text("\n\n" + pipeline.read_text())  # every definition moves down

    events = repro_ok(root)
    assert statuses(events) == {"scaled": "skipped", "loud": "skipped"}
    assert reason_codes(events) == {"scaled": "up_to_date", "loud": "up_to_date"}
    assert started(events) == []
    assert runs(root) == {"scaled": 1, "loud": 1}


# --- 2. the run cache ----------------------------------------------------------------------


def test_reverting_a_param_restores_outputs_without_running(ran_copy: RanCopy) -> None:
    root = ran_copy(HELPER_PROJECT)
    first = (root / "scaled.txt").read_bytes()
    assert first == b"scaled: 6\n"

    (root / "params.yaml").write_text("scaled:\n  n: 5\n")
    events = repro_ok(root)
    assert statuses(events) == {"scaled": "ran", "loud": "skipped"}
    assert reason_codes(events)["scaled"] == "params_changed"
    assert (root / "scaled.txt").read_text() == "scaled: 10\n"
    assert runs(root) == {"scaled": 2, "loud": 1}

    (root / "params.yaml").write_text("scaled:\n  n: 3\n")  # back to the value of the first run
    row = status_json(root)["scaled"]
    assert row["stale"] is True and row["restorable"] is True, row
    assert [r["code"] for r in row["reasons"]] == ["params_changed"], row
    assert row["reasons"][0]["details"] == {"changes": {"n": [5, 3]}}, row

    before = tree(root)
    plan = dry_run_json(root)
    assert {name: entry["action"] for name, entry in plan.items()} == {"scaled": "restore", "loud": "skip"}
    text = ok(root, "repro", "--dry-run")
    assert "scaled: would restore from run cache (params changed: n 5 -> 3)" in text.splitlines(), text
    assert tree(root) == before, "the dry run restored (or wrote) something"

    events = repro_ok(root)
    assert statuses(events) == {"scaled": "restored", "loud": "skipped"}
    assert reason_codes(events)["scaled"] == "restored"
    assert started(events) == []
    wave = one(events, "wave_finished")
    assert (wave["ran"], wave["restored"]) == ([], ["scaled"]), wave
    details = finished(events)["scaled"]["details"]
    assert details["stale"] == "params_changed", details
    assert (root / "scaled.txt").read_bytes() == first
    assert runs(root) == {"scaled": 2, "loud": 1}, "the restored stage executed"

    lock = json.loads((root / ".pivot" / "stages" / "scaled.lock").read_text())
    assert lock["params"] == {"n": 3}
    assert lock["outs"] == details["outs"]
    assert stale(root) == []


def test_a_damaged_run_cache_object_is_never_restored_the_stage_runs_and_repairs_it(ran_copy: RanCopy) -> None:
    root = ran_copy(HELPER_PROJECT)
    first = (root / "scaled.txt").read_bytes()
    first_digest = json.loads((root / ".pivot" / "stages" / "scaled.lock").read_text())["outs"]["scaled.txt"]
    (root / "params.yaml").write_text("scaled:\n  n: 5\n")
    repro_ok(root)
    # The first version's cache object is emptied (a full disk, a crash, a stray edit).
    obj = next((root / ".pivot" / "cache").rglob(first_digest[2:]))
    os.chmod(obj, 0o644)
    obj.write_bytes(b"")
    (root / "params.yaml").write_text("scaled:\n  n: 3\n")  # back to the first version

    events = repro_ok(root)
    assert statuses(events)["scaled"] == "ran", statuses(events)  # not restored from the damaged object
    assert (root / "scaled.txt").read_bytes() == first
    assert runs(root)["scaled"] == 3
    assert obj.read_bytes() == first  # stored anew by the run: repaired
    again = repro_ok(root)
    assert statuses(again)["scaled"] == "skipped"


def test_reverting_a_code_edit_restores_outputs_without_running(ran_copy: RanCopy) -> None:
    root = ran_copy(HELPER_PROJECT)
    first = (root / "scaled.txt").read_bytes()
    pipeline = root / "pipeline.py"
    original = pipeline.read_text()

    edit(pipeline, 'f"scaled: {helpers.scale(n)}\\n"', 'f"scaled = {helpers.scale(n)}\\n"')
    events = repro_ok(root)
    assert statuses(events) == {"scaled": "ran", "loud": "skipped"}
    assert finished(events)["scaled"]["details"]["changed"] == ["pipeline.scaled"]
    assert (root / "scaled.txt").read_text() == "scaled = 6\n"

    pipeline.write_text(original)
    row = status_json(root)["scaled"]
    assert row["restorable"] is True and row["reasons"][0]["code"] == "code_changed", row
    assert dry_run_json(root)["scaled"]["action"] == "restore"

    events = repro_ok(root)
    assert statuses(events) == {"scaled": "restored", "loud": "skipped"}
    assert finished(events)["scaled"]["details"]["stale"] == "code_changed"
    assert started(events) == []
    assert (root / "scaled.txt").read_bytes() == first
    assert runs(root) == {"scaled": 2, "loud": 1}
    assert stale(root) == []


NO_OUTS = stage_src(
    """\
    @stage()
    def announce(level: int = 1) -> None:
        record(f"announce-{level}")
    """
)


def test_a_stage_without_outputs_is_run_again_never_restored(make_project: MakeProject) -> None:
    """Its effect is elsewhere: "restoring" it would silently do nothing."""
    root = make_project({"pipeline.py": NO_OUTS})
    repro_ok(root)
    (root / "params.yaml").write_text("announce:\n  level: 2\n")
    repro_ok(root)
    (root / "params.yaml").unlink()
    assert status_json(root)["announce"]["restorable"] is False
    events = repro_ok(root)
    assert statuses(events) == {"announce": "ran"}
    assert runs(root) == {"announce-1": 2, "announce-2": 1}


# --- 3. a hand-edited output is never lost ------------------------------------------------


@pytest.mark.parametrize("outcome", ["restored", "ran"])
def test_hand_edited_output_is_saved_and_can_be_checked_out(ran_copy: RanCopy, outcome: str) -> None:
    """`restored`: same inputs, the run cache puts the output back. `ran`: a new param
    value too, so the worker replaces the output. Both must save the edit first."""
    root = ran_copy(HELPER_PROJECT)
    out = root / "scaled.txt"
    first = out.read_bytes()
    out.write_text("edited by hand\n")

    row = status_json(root)["scaled"]
    assert row["stale"] is True
    assert [(r["code"], r["details"]) for r in row["reasons"]] == [("out_modified", {"paths": ["scaled.txt"]})]

    expected, executions = first, 1
    if outcome == "ran":
        (root / "params.yaml").write_text("scaled:\n  n: 4\n")
        expected, executions = b"scaled: 8\n", 2
    events = repro_ok(root)
    assert statuses(events)["scaled"] == outcome
    assert out.read_bytes() == expected
    assert runs(root)["scaled"] == executions

    notes = pivot_notes(events)
    assert [n["stage"] for n in notes] == ["scaled"], notes
    digest, command = checkout_command(notes[0]["line"], "scaled.txt")
    assert "hand-edited" in notes[0]["line"]
    assert cached_object(root, digest).read_bytes() == b"edited by hand\n"

    assert command[:2] == ["checkout", "--hash"]
    ok(root, *command)
    assert out.read_bytes() == b"edited by hand\n"
    assert status_json(root)["scaled"]["reasons"][0]["code"] == "out_modified"


def test_deleted_output_is_reported_missing_and_brought_back(ran_copy: RanCopy) -> None:
    root = ran_copy(HELPER_PROJECT)
    first = (root / "scaled.txt").read_bytes()
    (root / "scaled.txt").unlink()

    row = status_json(root)["scaled"]
    assert [(r["code"], r["details"]) for r in row["reasons"]] == [("out_missing", {"paths": ["scaled.txt"]})]

    events = repro_ok(root)
    assert statuses(events)["scaled"] in ("ran", "restored")
    assert statuses(events)["loud"] == "skipped"
    assert (root / "scaled.txt").read_bytes() == first
    assert pivot_notes(events) == [], "nothing was there to save"
    assert stale(root) == []


# --- 4. checkout (and 11. metrics are outputs) ---------------------------------------------


def test_checkout_restores_deleted_outputs_by_stage_by_path_and_all(ran_project: Path) -> None:
    root = ran_project
    saved = {out: (root / out).read_bytes() for out in QUICKSTART_OUTPUTS}
    for out in ("data/clean.csv", "model/model.json", "metrics.json"):
        (root / out).unlink()
    rows = status_json(root)
    assert rows["prepare"]["reasons"][0] == {
        "code": "out_missing", "message": "output missing: data/clean.csv", "details": {"paths": ["data/clean.csv"]},
    }

    out = ok(root, "checkout", "prepare")
    assert "restored data/clean.csv (stage prepare)" in out, out
    assert (root / "data/clean.csv").read_bytes() == saved["data/clean.csv"]
    assert not (root / "model/model.json").exists() and not (root / "metrics.json").exists()

    out = ok(root / "model", "checkout", "model.json")  # a path, relative to the cwd
    assert "restored model/model.json (stage fit)" in out, out
    assert not (root / "metrics.json").exists()
    assert status_json(root)["evaluate"]["reasons"] == [  # a metrics file is an output too
        {"code": "out_missing", "message": "output missing: metrics.json", "details": {"paths": ["metrics.json"]}},
    ]

    out = ok(root, "checkout")
    assert out.strip() == "restored metrics.json (stage evaluate)", out
    assert {o: (root / o).read_bytes() for o in QUICKSTART_OUTPUTS} == saved
    assert stale(root) == []

    shown = json.loads(ok(root, "metrics", "show", "--json"))
    assert shown["stages"] == {"evaluate": {"metrics.json": json.loads(saved["metrics.json"])}}


def test_checkout_saves_a_hand_edit_before_restoring(ran_project: Path) -> None:
    root = ran_project
    features = root / "data" / "features.csv"
    original = features.read_bytes()
    features.write_text("hand,made\n1,2\n")

    out = ok(root, "checkout", "features")
    assert "restored data/features.csv (stage features)" in out, out
    assert features.read_bytes() == original
    note = next(line for line in out.splitlines() if line.startswith("saved"))
    _, command = checkout_command(note, "data/features.csv")
    ok(root, *command)
    assert features.read_text() == "hand,made\n1,2\n"


CHECKOUT_ERRORS = {
    "unknown_target": (["nosuchstage"], ["nosuchstage", "prepare", "features", "fit", "evaluate"]),
    "path_outside": (["../elsewhere.txt"], ["elsewhere.txt", "not inside the project"]),
    "malformed_hash": (["--hash", "not-a-hash", "data/clean.csv"], ["'not-a-hash'", "not a Pivot content hash"]),
    "absent_hash": (["--hash", "0123456789abcdef" * 2, "data/clean.csv"], ["0123456789abcdef" * 2, "no object"]),
    "hash_without_path": (["--hash", "0123456789abcdef" * 2], ["exactly one PATH"]),
    # (any hash: the place is refused before the cache is asked)
    "hash_onto_pipeline_py": (["--hash", "0123456789abcdef" * 2, "pipeline.py"], ["pipeline.py", "not a place"]),
    "hash_into_pivot": (["--hash", "0123456789abcdef" * 2, ".pivot/x"], [".pivot/x", "not a place"]),
}


@pytest.mark.parametrize("case", list(CHECKOUT_ERRORS))
def test_checkout_usage_errors_change_nothing(ran_project: Path, case: str) -> None:
    args, expected = CHECKOUT_ERRORS[case]
    (ran_project / "metrics.json").unlink()  # something checkout could restore
    before = tree(ran_project, run_dir=False)
    err = usage_error(ran_project, "checkout", *args)
    for text in expected:
        assert text in err, f"{text!r} not in stderr:\n{err}"
    assert tree(ran_project, run_dir=False) == before


def test_checkout_of_outputs_gone_from_the_cache_names_them(ran_project: Path) -> None:
    shutil.rmtree(ran_project / ".pivot" / "cache")
    (ran_project / "metrics.json").unlink()
    err = usage_error(ran_project, "checkout")
    assert "metrics.json (stage evaluate)" in err, err
    assert "data/clean.csv" not in err, "an output still in place was reported missing"
    assert not (ran_project / "metrics.json").exists()


def test_checkout_of_a_damaged_cache_object_names_it_and_restores_the_rest(ran_project: Path) -> None:
    digest = json.loads((ran_project / ".pivot" / "stages" / "evaluate.lock").read_text())["outs"]["metrics.json"]
    obj = ran_project / ".pivot" / "cache" / "files" / digest[:2] / digest[2:]
    obj.chmod(0o644)
    with obj.open("a") as f:
        f.write("damage\n")
    (ran_project / "metrics.json").unlink()
    (ran_project / "data" / "clean.csv").unlink()
    err = usage_error(ran_project, "checkout")  # (it was exit 1, saying the stage "runs again")
    assert "metrics.json (stage evaluate; its cache object was damaged, now removed)" in err, err
    assert not obj.exists() and not (ran_project / "metrics.json").exists()
    assert (ran_project / "data" / "clean.csv").is_file(), "the outputs after it were not restored"
    warnings = [line for line in err.splitlines() if not line.startswith("error:")]
    assert warnings and all(line.startswith("warning: ") for line in warnings), err


def test_checkout_in_a_project_that_never_ran(project: Path) -> None:
    before = {p for p in tree(project) if not p.startswith(".pivot")}
    out = ok(project, "checkout")
    assert "nothing to check out" in out, out
    assert {p for p in tree(project) if not p.startswith(".pivot")} == before


RENAMED_BEFORE = stage_src(
    """\
    @stage(outs=["report.txt"])
    def zz_report() -> None:
        with open("report.txt", "w") as f:
            f.write("old report\\n")
    """
)
RENAMED_AFTER = RENAMED_BEFORE.replace("def zz_report", "def report").replace("old report", "new report")


def test_checkout_leaves_an_up_to_date_project_alone_after_a_stage_rename(make_project: MakeProject) -> None:
    """The lock of the old name still names report.txt: it must not win over the new one."""
    root = make_project({"pipeline.py": RENAMED_BEFORE})
    repro_ok(root)
    (root / "pipeline.py").write_text(RENAMED_AFTER)
    assert statuses(repro_ok(root)) == {"report": "ran"}
    assert (root / "report.txt").read_text() == "new report\n"
    assert stale(root) == []

    out = ok(root, "checkout")
    assert (root / "report.txt").read_text() == "new report\n", out
    assert stale(root) == []


@pytest.mark.parametrize("command", [["checkout"], ["gc"]])
def test_commands_on_a_never_run_project_leave_no_unignored_pivot_files(
    make_project: MakeProject, command: list[str]
) -> None:
    """Their engine lock (.pivot/run/lock) must not show up in `git status`."""
    root = make_project(HELPER_PROJECT)
    ok(root, *command)
    pivot = root / ".pivot"
    assert not pivot.exists() or (pivot / ".gitignore").is_file(), sorted(tree(root))


# --- 5. gc ---------------------------------------------------------------------------------


def test_gc_keeps_what_locks_and_the_run_cache_name(ran_copy: RanCopy) -> None:
    root = ran_copy(HELPER_PROJECT)
    first = {name: (root / name).read_bytes() for name in ("scaled.txt", "loud.txt")}
    for n in (5, 7):
        (root / "params.yaml").write_text(f"scaled:\n  n: {n}\n")
        assert statuses(repro_ok(root))["scaled"] == "ran"
    every = sorted([b"scaled: 6\n", b"scaled: 10\n", b"scaled: 14\n", b"QUIET\n"])
    assert cached_contents(root) == every
    assert run_cache_entries(root) == 4

    # The older results are named by the run cache only: a plain gc keeps them.
    assert "would remove 0 cache objects" in ok(root, "gc")
    out = ok(root, "gc", "--run-cache")
    assert "would remove 2 cache objects" in out and "run cache (4 entries)" in out, out
    assert cached_contents(root) == every and run_cache_entries(root) == 4, "a dry run deleted"

    out = ok(root, "gc", "--run-cache", "--force")
    assert "removed 2 cache objects" in out and "emptied the run cache (4 entries)" in out, out
    assert cached_contents(root) == sorted([b"scaled: 14\n", b"QUIET\n"])
    assert run_cache_entries(root) == 0

    # Reverting now really runs: nothing is left to restore n=3 from.
    (root / "params.yaml").unlink()
    assert status_json(root)["scaled"]["restorable"] is False
    assert dry_run_json(root)["scaled"]["action"] == "run"
    events = repro_ok(root)
    assert statuses(events)["scaled"] == "ran"
    assert reason_codes(events)["scaled"] == "params_changed"
    assert runs(root)["scaled"] == 4
    assert (root / "scaled.txt").read_bytes() == first["scaled.txt"]

    # "scaled: 14" is named by nothing now; removing it leaves every current output.
    assert "would remove 1 cache objects" in ok(root, "gc")
    assert "removed 1 cache objects" in ok(root, "gc", "--force")
    assert cached_contents(root) == sorted([b"scaled: 6\n", b"QUIET\n"])
    for name in first:
        (root / name).unlink()
    ok(root, "checkout")
    assert {name: (root / name).read_bytes() for name in first} == first
    assert stale(root) == []


def test_gc_refuses_while_a_lock_cannot_be_read(ran_copy: RanCopy) -> None:
    """A lock with a merge conflict's markers read as no lock: every object both sides
    named counted as unused, and `gc --run-cache --force` removed them all, saying
    nothing (found by a new-user hunt)."""
    root = ran_copy(HELPER_PROJECT)
    before = cached_contents(root)
    lock = root / ".pivot" / "stages" / "scaled.lock"
    text = lock.read_text()
    lock.write_text(f"<<<<<<< HEAD\n{text}=======\n{text}>>>>>>> b2\n")
    for args in (("gc",), ("gc", "--force"), ("gc", "--run-cache", "--force")):
        result = run_pivot(root, *args)
        assert result.returncode == 2, describe(result)
        assert "cannot read 1 lock file(s): .pivot/stages/scaled.lock (not JSON" in result.stderr, describe(result)
        assert "Traceback" not in result.stderr
    assert cached_contents(root) == before and run_cache_entries(root) > 0
    lock.write_text(text)
    assert "would remove 0 cache objects" in ok(root, "gc")


def test_gc_and_checkout_refuse_while_an_engine_runs(make_project: MakeProject, proc_guard: ProcGuard) -> None:
    """gc must not delete objects a running stage is about to name; checkout must not
    race the engine writing outputs."""
    root = make_project({"pipeline.py": HELD_PIPELINE})
    cli = proc_guard.start(root, "repro", "--json")
    try:
        held_stage_pid(root)
        for args in (["gc", "--force"], ["checkout"]):
            err = usage_error(root, *args)
            assert "while a Pivot engine" in err, err
    finally:
        release_held_stage(root)
    rc, out, err = wait_exit(cli, 30, "the engine")
    assert rc == 0, describe((rc, out, err))
    assert statuses(parse_events(out)) == {"held": "ran", "after": "ran"}


# --- 6. the state cache: touch is not a change -------------------------------------------


def test_touch_runs_nothing_but_a_same_size_rewrite_runs(ran_copy: RanCopy) -> None:
    root = ran_copy(CHAIN_PROJECT)
    assert stale(root) == []  # also hashes every file of this copy into the state cache

    for name in ("input.txt", "clean.txt", "shout.txt", "pipeline.py"):
        path = root / name
        before = path.stat().st_mtime_ns
        os.utime(path)  # `touch`: same content, new mtime
        assert path.stat().st_mtime_ns != before
    events = repro_ok(root)
    assert set(statuses(events).values()) == {"skipped"}, events
    assert started(events) == []
    assert runs(root) == {"clean": 1, "shout": 1}

    old = (root / "input.txt").read_bytes()
    (root / "input.txt").write_text("omega\nzeta\n")
    assert (root / "input.txt").stat().st_size == len(old)
    events = repro_ok(root)
    assert statuses(events) == {"clean": "ran", "shout": "ran"}
    assert finished(events)["clean"]["details"] == {"paths": ["input.txt"]}
    assert reason_codes(events) == {"clean": "deps_changed", "shout": "upstream_changed"}
    assert (root / "shout.txt").read_text() == "OMEGA\nZETA\n"


# --- 7. early cutoff -----------------------------------------------------------------------


def test_upstream_rerun_with_identical_bytes_skips_downstream(ran_copy: RanCopy) -> None:
    root = ran_copy(CHAIN_PROJECT)
    shout_before = (root / "shout.txt").read_bytes()

    # A param that does not change the output.
    (root / "params.yaml").write_text("clean:\n  verbose: true\n")
    events = repro_ok(root)
    assert statuses(events) == {"clean": "ran", "shout": "skipped"}
    assert reason_codes(events) == {"clean": "params_changed", "shout": "up_to_date"}
    assert ("clean", "stdout", "2 lines") in [(e["stage"], e["stream"], e["line"]) for e in of_kind(events, "log")]

    # A dep edit the stage normalises away.
    (root / "input.txt").write_text("alpha   \nbeta\t\n")
    rows = status_json(root)
    assert rows["shout"]["reasons"][0]["code"] == "upstream_stale"  # decided at run time
    events = repro_ok(root)
    assert statuses(events) == {"clean": "ran", "shout": "skipped"}
    assert reason_codes(events) == {"clean": "deps_changed", "shout": "up_to_date"}
    assert started(events) == ["clean"]
    assert runs(root) == {"clean": 3, "shout": 1}
    assert (root / "shout.txt").read_bytes() == shout_before


# --- 8. directories ------------------------------------------------------------------------


def test_hand_edit_inside_a_directory_output(ran_copy: RanCopy) -> None:
    root = ran_copy(DIR_PROJECT)
    dag = json.loads(ok(root, "dag", "--format", "json"))
    assert dag["edges"] == [["split", "upper"]]
    assert dag["edge_paths"] == [{"from": "split", "to": "upper", "paths": ["data/parts/a.txt"]}]

    parts = root / "data" / "parts"
    original = files_under(parts)
    assert sorted(original) == ["a.txt", "b.txt", "sub/c.txt"]
    (parts / "b.txt").write_text("b: by hand\n")
    edited = files_under(parts)

    rows = status_json(root)
    assert rows["split"]["reasons"] == [
        {"code": "out_modified", "message": "output modified: data/parts/", "details": {"paths": ["data/parts/"]}},
    ]
    assert rows["upper"]["reasons"][0]["code"] == "upstream_stale"

    events = repro_ok(root)
    assert statuses(events) == {"split": "restored", "upper": "skipped"}
    assert files_under(parts) == original
    notes = pivot_notes(events)
    assert len(notes) == 1, notes
    digest, command = checkout_command(notes[0]["line"], "data/parts/")
    assert digest.startswith("d") and len(digest) == 33, digest

    ok(root, *command)
    assert files_under(parts) == edited
    assert runs(root) == {"split": 1, "upper": 1}


def test_directory_dep_reruns_on_a_new_file_and_cuts_off_on_unchanged_files(ran_copy: RanCopy) -> None:
    root = ran_copy(DIR_PROJECT)
    (root / "raw" / "2.txt").write_text("two\n")
    row = status_json(root)["split"]
    assert [(r["code"], r["details"]) for r in row["reasons"]] == [("deps_changed", {"paths": ["raw/"]})]

    events = repro_ok(root)
    # b.txt changed, a.txt (all that `upper` reads) did not.
    assert statuses(events) == {"split": "ran", "upper": "skipped"}
    assert reason_codes(events) == {"split": "deps_changed", "upper": "up_to_date"}
    assert (root / "data/parts/b.txt").read_text() == "b: 1.txt,2.txt\n"

    (root / "raw" / "1.txt").write_text("uno\n")
    events = repro_ok(root)
    assert statuses(events) == {"split": "ran", "upper": "ran"}
    assert finished(events)["upper"]["reason_code"] == "upstream_changed"
    assert finished(events)["upper"]["details"] == {"paths": ["data/parts/a.txt"], "stages": ["split"]}
    assert (root / "a_upper.txt").read_text() == "A: UNO\n"
    assert runs(root) == {"split": 3, "upper": 2}


def test_directory_output_is_restored_by_checkout_after_gc(ran_copy: RanCopy) -> None:
    root = ran_copy(DIR_PROJECT)
    parts = root / "data" / "parts"
    original = files_under(parts)
    ok(root, "gc", "--run-cache", "--force")  # only the lock files keep objects now

    shutil.rmtree(parts)
    assert "restored data/parts/ (stage split)" in ok(root, "checkout", "data/parts")
    assert files_under(parts) == original

    (parts / "sub" / "c.txt").unlink()
    (parts / "stray.txt").write_text("not from the stage\n")
    out = ok(root, "checkout", "split")
    assert "saved" in out and "restored data/parts/ (stage split)" in out, out
    assert files_under(parts) == original
    assert stale(root) == []


# --- 9. status, --explain, STAGES ----------------------------------------------------------


def explained(text: str) -> dict[str, list[str]]:
    """stage -> the codes of its `  - CODE: message` lines in `status --explain` text."""
    result: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if m := re.match(r"(\S+): (stale|up to date)", line):
            current = m.group(1)
            result[current] = []
        elif m := re.match(r"  - (\w+): \S", line):
            assert current is not None, text
            result[current].append(m.group(1))
    return result


def test_status_explain_lists_every_reason(ran_copy: RanCopy) -> None:
    root = ran_copy(CHAIN_PROJECT)
    edit(root / "pipeline.py", 'f.write("\\n".join(lines) + "\\n")', 'f.write("\\n".join(lines) + "\\n\\n")')
    (root / "params.yaml").write_text("clean:\n  verbose: true\n")
    (root / "input.txt").write_text("alpha\nbeta\ngamma\n")
    (root / "clean.txt").write_text("by hand\n")
    every = ["code_changed", "params_changed", "deps_changed", "out_modified"]

    text = ok(root, "status", "--explain")
    # shout reads clean.txt, which the hand edit changed, and clean is stale.
    shout = ["upstream_changed", "upstream_stale"]
    assert explained(text) == {"clean": every, "shout": shout}, text
    assert "      verbose: False -> True" in text.splitlines(), text
    assert "2 of 2 stages stale" in text

    rows = status_json(root, "--explain")
    reasons = rows["clean"]["reasons"]
    assert [r["code"] for r in reasons] == every
    assert all(set(r) == {"code", "message", "details"} for r in reasons), reasons
    assert [r["details"] for r in reasons] == [
        {"changed": ["pipeline.clean"], "added": [], "removed": []},
        {"changes": {"verbose": [False, True]}},
        {"paths": ["input.txt"]},
        {"paths": ["clean.txt"]},
    ]
    assert [r["code"] for r in rows["shout"]["reasons"]] == shout
    assert rows["shout"]["reasons"][0]["details"] == {"paths": ["clean.txt"], "stages": ["clean"]}
    assert rows["shout"]["reasons"][1] == {
        "code": "upstream_stale", "message": "upstream stale: clean", "details": {"stages": ["clean"]},
    }

    # Without --explain: the first reason only.
    assert [r["code"] for r in status_json(root)["clean"]["reasons"]] == ["code_changed"]
    lines = ok(root, "status").splitlines()
    assert "clean: stale (code changed: pipeline.clean)" in lines, lines
    assert "shout: stale (upstream changed: clean.txt (from clean))" in lines, lines


def test_status_of_stages_is_them_and_their_upstream(ran_copy: RanCopy) -> None:
    root = ran_copy(CHAIN_PROJECT)
    assert list(status_json(root, "clean")) == ["clean"]
    assert list(status_json(root, "shout")) == ["clean", "shout"]
    assert ok(root, "status", "clean").splitlines() == ["clean: up to date", "everything is up to date"]
    err = usage_error(root, "status", "shuot")
    assert "shuot" in err and "clean, shout" in err, err


# --- 10. repro --dry-run -------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_changes_nothing(ran_copy: RanCopy) -> None:
    root = ran_copy(CHAIN_PROJECT)
    assert ok(root, "repro", "--dry-run").splitlines() == [
        "clean: skip (up to date)", "shout: skip (up to date)", "nothing to do",
    ]
    forced = dry_run_json(root, "--force", "shout")
    assert {name: (e["action"], e["reasons"][0]["code"]) for name, e in forced.items()} == {
        "clean": ("run", "forced"), "shout": ("run", "forced"),
    }
    (root / "input.txt").write_text("alpha\nbeta\ngamma\n")
    before = tree(root)

    lines = ok(root, "repro", "--dry-run").splitlines()
    assert lines == [
        "clean: would run (dep changed: input.txt)",
        "shout: would run (upstream stale: clean)",
        "2 of 2 stages would run or be restored",
    ], lines
    plan = dry_run_json(root)
    assert {name: entry["action"] for name, entry in plan.items()} == {"clean": "run", "shout": "run"}
    assert plan["clean"]["reasons"] == [
        {"code": "deps_changed", "message": "dep changed: input.txt", "details": {"paths": ["input.txt"]}},
    ]
    assert plan["clean"]["stale"] is True and plan["clean"]["restorable"] is False
    assert tree(root) == before
    assert runs(root) == {"clean": 1, "shout": 1}
    assert "shuot" in usage_error(root, "repro", "--dry-run", "shuot")


def test_dry_run_of_a_project_that_never_ran_writes_no_output(make_project: MakeProject) -> None:
    root = make_project(CHAIN_PROJECT)
    before = tree(root)
    plan = dry_run_json(root)
    assert {name: entry["action"] for name, entry in plan.items()} == {"clean": "run", "shout": "run"}
    assert plan["clean"]["reasons"][0]["code"] == "never_ran"
    assert "2 of 2 stages would run or be restored" in ok(root, "repro", "-n")
    after = tree(root)
    # Only `.pivot/` itself may appear (where the state cache lives): no output, lock or cache.
    assert {p: v for p, v in after.items() if not p.startswith(".pivot")} == before
    assert not [p for p in after if p.startswith((".pivot/stages/", ".pivot/cache/", ".pivot/runcache/"))]


# --- 12. failures: blocked stages name the failed upstream ----------------------------------

FAILING_CHAIN = stage_src(
    """\
    def write(path: str) -> None:
        with open(path, "w") as f:
            f.write(path + "\\n")


    @stage(outs=["top.txt"])
    def top() -> None:
        write("top.txt")


    @stage(deps=["top.txt"], outs=["mid.txt"])
    def mid() -> None:
        raise RuntimeError("mid is broken")


    @stage(deps=["mid.txt"], outs=["leaf.txt"])
    def leaf() -> None:
        write("leaf.txt")


    @stage(deps=["leaf.txt"], outs=["tail.txt"])
    def tail() -> None:
        write("tail.txt")


    @stage(deps=["top.txt"], outs=["side.txt"])
    def side() -> None:
        write("side.txt")
    """
)


def test_blocked_stages_name_the_failed_upstream(make_project: MakeProject) -> None:
    root = make_project({"pipeline.py": FAILING_CHAIN})
    result, events = repro(root, "--keep-going")
    assert result.returncode == 1, describe(result)
    assert statuses(events) == {
        "top": "ran", "mid": "failed", "leaf": "blocked", "tail": "blocked", "side": "ran",
    }
    for name in ("leaf", "tail"):
        done = finished(events)[name]
        assert done["reason_code"] == "blocked", done
        assert "'mid'" in done["reason"], done
        assert name not in started(events)
    assert sorted(one(events, "wave_finished")["blocked"]) == ["leaf", "tail"]
    assert not (root / "leaf.txt").exists()


UNCACHEABLE = stage_src(
    """\
    import os


    @stage(outs=["pipe"])
    def fifo() -> None:
        os.mkfifo("pipe")  # an output the cache cannot hold


    @stage(deps=["pipe"], outs=["after.txt"])
    def after() -> None:
        record("after")
    """
)


def test_an_output_the_cache_cannot_store_fails_its_stage_with_a_message(make_project: MakeProject) -> None:
    root = make_project({"pipeline.py": UNCACHEABLE})
    result, events = repro(root)
    assert result.returncode == 1, describe(result)
    assert statuses(events) == {"fifo": "failed", "after": "blocked"}
    done = finished(events)["fifo"]
    assert done["reason_code"] == "failed", done
    assert "could not store its outputs in the cache" in done["reason"] and "pipe" in done["reason"], done
    assert "Traceback" not in result.stderr, describe(result)
    assert not (root / ".pivot" / "stages" / "fifo.lock").exists()


def test_a_lock_deleted_by_hand_makes_its_stage_stale_and_is_written_again(ran_copy: RanCopy) -> None:
    # No lock: nothing says what its outputs were made from. Never taken as up to date
    # (a no-op settled in the command reads every lock: pivot/cli/settled.py).
    root = ran_copy(HELPER_PROJECT)
    lock = root / ".pivot" / "stages" / "scaled.lock"
    lock.unlink()
    row = status_json(root)["scaled"]
    assert row["stale"] is True and row["reasons"][0]["code"] == "never_ran", row
    done = finished(repro_ok(root))["scaled"]
    assert done["status"] == "restored", done  # its inputs as before: the run cache has its outputs
    assert json.loads(lock.read_text())["stage"] == "scaled"
    assert statuses(repro_ok(root))["scaled"] == "skipped"


def test_a_corrupt_lock_file_is_named_and_the_stage_runs_again(ran_copy: RanCopy) -> None:
    root = ran_copy(HELPER_PROJECT)
    lock = root / ".pivot" / "stages" / "scaled.lock"
    lock.write_text('{"stage": "scaled", "code": ')  # truncated by a crash or a bad merge
    row = status_json(root)["scaled"]
    assert row["stale"] is True and row["reasons"][0]["code"] == "lock_corrupt", row
    assert ".pivot/stages/scaled.lock" in row["reasons"][0]["message"], row
    events = repro_ok(root)
    done = finished(events)["scaled"]
    # Its inputs did not change: the run cache brings its outputs back (and a new lock).
    assert (done["status"], done["details"].get("stale")) == ("restored", "lock_corrupt"), done
    assert json.loads(lock.read_text())["stage"] == "scaled"  # written anew
    assert statuses(repro_ok(root))["scaled"] == "skipped"
