"""Rough edges a new user hits (issue 12, point 4), each as it was seen."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from procs import (
    LiveRun,
    ProcGuard,
    describe,
    finished,
    of_kind,
    parse_events,
    run_pivot,
    wait_exit,
    wait_for,
)

WAIT_S = 30.0

PIPELINE = '''\
from pathlib import Path

from pivot import stage


def fit(kind: str = "") -> None:
    Path(f"fit_{kind}.txt").write_text(kind)


for kind in ("linear", "quadratic"):
    stage(name=f"fit@{kind}", params={"kind": kind}, outs=[f"fit_{kind}.txt"])(fit)


@stage(outs=["report.txt"])
def report(title: str = "r") -> None:
    Path("report.txt").write_text(title)
'''

TYPO = "fitt:\n  kind: cubic\nreprot:\n  title: x\n"
SAID = [
    "params.yaml: no stage named 'fitt' (did you mean one of 'fit@linear', 'fit@quadratic'?); its params are ignored",
    "params.yaml: no stage named 'reprot' (did you mean 'report'?); its params are ignored",
]


def test_a_typo_in_params_yaml_is_said_by_every_command_with_the_closest_stage(
    make_project: Callable[..., Path], up: Callable[..., LiveRun],
) -> None:
    root = make_project({"pipeline.py": PIPELINE, "params.yaml": TYPO})
    plain = run_pivot(root, "repro", "--display", "plain", timeout=60)
    assert plain.returncode == 0, describe(plain)
    for warning in SAID:
        assert f"pivot: {warning}" in plain.stderr, plain.stderr
    as_json = run_pivot(root, "repro", "--json", timeout=60)
    assert as_json.returncode == 0, describe(as_json)
    assert [e["message"] for e in of_kind(parse_events(as_json.stdout), "notice")] == SAID
    for args in (["repro", "-n"], ["status"]):
        result = run_pivot(root, *args, timeout=60)
        assert result.returncode == 0, describe(result)
        for warning in SAID:
            assert f"warning: {warning}" in result.stderr, describe(result)

    live = up(root)
    live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "the first wave")
    assert [e["message"] for e in of_kind(live.since(0), "notice")] == SAID
    live.stop()


MISSING_INPUT = '''\
from pathlib import Path

from pivot import stage


@stage(deps=["missing.csv"], outs=["a.txt"])
def a() -> None:
    Path("a.txt").write_text(Path("missing.csv").read_text())


@stage(deps=["a.txt"], outs=["a2.txt"])
def a2() -> None:
    Path("a2.txt").write_text("x")


@stage(outs=["b.txt"])
def b() -> None:
    Path("b.txt").write_text("b")
'''


def test_a_missing_input_fails_only_its_stage_and_every_command_still_works(
    make_project: Callable[..., Path],
) -> None:
    """It made `repro` (even of other stages, even with --keep-going), `status`, `list`
    and `dag` exit 2 with a pipeline error; `pivot up` already failed only that stage."""
    root = make_project({"pipeline.py": MISSING_INPUT})
    alone = run_pivot(root, "repro", "b", "--json", timeout=60)
    assert alone.returncode == 0, describe(alone)
    everything = run_pivot(root, "repro", "--keep-going", "--json", timeout=60)
    assert everything.returncode == 1, describe(everything)
    done = {s: (e["status"], e["reason_code"]) for s, e in finished(parse_events(everything.stdout)).items()}
    assert done["a"] == ("failed", "dep_missing"), done
    assert done["a2"][0] == "blocked" and done["b"][0] in ("ran", "skipped"), done
    status = run_pivot(root, "status", "--json", timeout=60)
    assert status.returncode == 0, describe(status)
    reasons = json.loads(status.stdout)["stages"]["a"]["reasons"]
    assert reasons[0]["code"] == "dep_missing" and reasons[0]["details"] == {"paths": ["missing.csv"]}, reasons
    for args in (["list"], ["dag"], ["repro", "-n"]):
        result = run_pivot(root, *args, timeout=60)
        assert result.returncode == 0, describe(result)
    (root / "missing.csv").write_text("here\n")
    fixed = run_pivot(root, "repro", "--json", timeout=60)
    assert fixed.returncode == 0, describe(fixed)
    assert (root / "a2.txt").read_text() == "x"


FOLDER_OUT = '''\
from pathlib import Path

from pivot import stage


@stage(outs=["data/f.csv/"])
def make() -> None:
    Path("data").mkdir(exist_ok=True)
    Path("data/f.csv").write_text("x\\n")
'''


def test_a_folder_output_written_as_a_file_fails_its_stage_saying_so(make_project: Callable[..., Path]) -> None:
    """It was stored as a file, then stale forever ("output missing: data/f.csv/")."""
    root = make_project({"pipeline.py": FOLDER_OUT})
    result = run_pivot(root, "repro", "--json", timeout=60)
    assert result.returncode == 1, describe(result)
    done = finished(parse_events(result.stdout))["make"]
    assert done["status"] == "failed", done
    assert "declared output data/f.csv/ is a folder" in done["reason"], done
    assert "declare 'data/f.csv' without the /" in done["reason"], done
    assert not (root / "data" / "f.csv").exists()
    assert not (root / ".pivot" / "stages" / "make.lock").exists()


SAYS_PARAM = '''\
from pathlib import Path

from pivot import stage


@stage(outs=["out.txt"])
def say(word: str = "one") -> None:
    print(f"said {word}")
    Path("out.txt").write_text(word)
'''


def test_logs_of_a_restored_stage_are_those_of_the_run_that_made_its_outputs(
    make_project: Callable[..., Path],
) -> None:
    """They showed the last run that executed (other params) without a word."""
    root = make_project({"pipeline.py": SAYS_PARAM})
    for word in ("one", "two", "one"):
        (root / "params.yaml").write_text(f"say:\n  word: {word}\n")
        result = run_pivot(root, "repro", "--json", timeout=60)
        assert result.returncode == 0, describe(result)
    assert finished(parse_events(result.stdout))["say"]["status"] == "restored"
    logs = run_pivot(root, "logs", "say")
    assert logs.returncode == 0, describe(logs)
    lines = logs.stdout.splitlines()
    assert lines[0].startswith("# say: restored from the run cache at "), lines
    assert "said one" in lines and "said two" not in lines, lines


HELD_UNTIL_GO = '''\
import time
from pathlib import Path

from pivot import stage


@stage(outs=["slow.txt"])
def slow() -> None:
    Path("slow.started").write_text("")
    deadline = time.monotonic() + 30
    while not Path("go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    Path("slow.txt").write_text("s")


@stage(outs=["quick.txt"])
def quick() -> None:
    Path("quick.txt").write_text("q")
'''


def test_while_a_repro_runs_attach_shows_it_and_a_second_repro_says_why_it_cannot(
    make_project: Callable[..., Path], proc_guard: ProcGuard,
) -> None:
    """The second `repro` was told that `pivot attach` shows the first and `pivot repro`
    asks it for a run: neither worked (`no Pivot engine is running`)."""
    root = make_project({"pipeline.py": HELD_UNTIL_GO})
    first = proc_guard.start(root, "repro", "slow", "--json")
    wait_for(lambda: (root / "slow.started").exists(), WAIT_S, "the first repro's stage to start")
    second = run_pivot(root, "repro", "quick")
    assert second.returncode == 2, describe(second)
    assert "a `pivot repro` (pid" in second.stderr and "taking no other" in second.stderr, describe(second)
    attach = LiveRun(proc_guard.start(root, "attach", "--display", "json"))
    attach.wait_event(lambda e: e["event"] == "wave_started", WAIT_S, "the attach to show the running wave")
    (root / "go").write_text("")
    attach.wait_event(
        lambda e: e["event"] == "wave_finished" and e["ran"] == ["slow"], WAIT_S, "the wave's end in the attach",
    )
    assert attach.wait_exit(15) == 0  # the engine it views stopped after its wave
    rc, out, err = wait_exit(first, 30, "the first repro")
    assert rc == 0, describe((rc, out, err))
    assert run_pivot(root, "repro", "quick").returncode == 0  # and now it runs


def test_init_below_a_project_says_so_and_creates_nothing(make_project: Callable[..., Path]) -> None:
    root = make_project({"pipeline.py": SAYS_PARAM, "data/raw/.keep": ""})
    below = root / "data" / "raw"
    result = run_pivot(below, "init")
    assert result.returncode == 2, describe(result)
    assert f"is inside the Pivot project at {root}" in result.stderr, describe(result)
    assert not (below / ".pivot").exists()
    ok = run_pivot(root, "init")
    assert ok.returncode == 0 and (root / ".pivot" / "stages").is_dir(), describe(ok)


METRICS_PIPELINE = '''\
import json
from pathlib import Path

from pivot import stage


@stage(outs=["model/weights.bin", "data/"], metrics=["metrics.json"])
def train() -> None:
    Path("model").mkdir(exist_ok=True)
    Path("model/weights.bin").write_bytes(b"w" * 1000)
    Path("data").mkdir(exist_ok=True)
    Path("data/part.csv").write_text("x\\n")
    Path("metrics.json").write_text(json.dumps({"loss": 0.1}))
'''


def test_outputs_are_kept_out_of_git_and_metrics_are_not(make_project: Callable[..., Path]) -> None:
    import subprocess

    root = make_project({"pipeline.py": METRICS_PIPELINE, ".gitignore": "*.pyc\n"})
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    result = run_pivot(root, "repro", timeout=60)
    assert result.returncode == 0, describe(result)
    staged = subprocess.run(
        ["git", "add", "-A", "--dry-run"], cwd=root, check=True, capture_output=True, text=True,
    ).stdout
    assert "metrics.json" in staged and "pipeline.py" in staged, staged
    assert "weights.bin" not in staged and "part.csv" not in staged, staged
    assert (root / ".gitignore").read_text().startswith("*.pyc\n")
    assert not (root / "data" / ".gitignore").exists()  # never inside an output folder
