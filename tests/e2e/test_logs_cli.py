"""`pivot logs`: a stage's captured output from its last run, and process logs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from procs import describe, run_pivot
from procs import pivot_ok as ok

pytestmark = pytest.mark.timeout(60)

PIPELINE = '''\
import sys

from pivot import stage


@stage(outs=["a.txt"])
def talk(fail: bool = False) -> None:
    print("hello from talk")
    print("a warning", file=sys.stderr)
    if fail:
        raise ValueError("talk broke")
    open("a.txt", "w").write("a\\n")
'''


def test_logs_show_the_last_run_of_a_stage(make_project: Callable[..., Path]) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    assert run_pivot(root, "repro", "--json").returncode == 0
    text = ok(root, "logs", "talk")
    assert text.splitlines()[0].startswith("# talk: ran (never ran) at ")
    assert text.splitlines()[1:] == ["hello from talk", "! a warning"]

    (root / "params.yaml").write_text("talk:\n  fail: true\n")
    failed = run_pivot(root, "repro", "--json")
    assert failed.returncode == 1, describe(failed)
    text = ok(root, "logs", "talk")
    assert text.startswith("# talk: failed (ValueError: talk broke)")
    assert "hello from talk" in text and "# traceback:" in text and "ValueError: talk broke" in text


QUIET_PIPELINE = '''\
from pivot import stage


@stage(outs=["q.txt"])
def quiet(say: bool = True) -> None:
    if say:
        print("chatty run")
    open("q.txt", "w").write(f"{say}\\n")
'''


def test_a_run_that_printed_nothing_has_its_own_log_then_and_when_restored(
    make_project: Callable[..., Path],
) -> None:
    # A silent run's log is written by its worker, not its pool: it must still replace
    # the last run's, and be kept with its run-cache entry.
    root = make_project({"pipeline.py": QUIET_PIPELINE})
    assert run_pivot(root, "repro", "--json").returncode == 0
    assert ok(root, "logs", "quiet").splitlines()[1:] == ["chatty run"]

    (root / "params.yaml").write_text("quiet:\n  say: false\n")
    assert run_pivot(root, "repro", "--json").returncode == 0
    lines = ok(root, "logs", "quiet").splitlines()
    assert len(lines) == 1 and lines[0].startswith("# quiet: ran (params changed"), lines

    (root / "params.yaml").write_text("quiet:\n  say: true\n")
    assert run_pivot(root, "repro", "--json").returncode == 0
    lines = ok(root, "logs", "quiet").splitlines()
    assert "restored from the run cache" in lines[0] and lines[-1] == "chatty run", lines

    (root / "params.yaml").write_text("quiet:\n  say: false\n")
    assert run_pivot(root, "repro", "--json").returncode == 0
    lines = ok(root, "logs", "quiet").splitlines()
    assert "restored from the run cache" in lines[0], lines
    assert lines[1].startswith("# quiet: ran (params changed") and len(lines) == 2, lines
    assert not list((root / ".pivot" / "logs" / "stages").glob("*.part*"))


def test_logs_of_an_unknown_or_never_run_stage_is_a_usage_error(make_project: Callable[..., Path]) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    for args in (["logs", "talk"], ["logs"], ["logs", "talk", "--role", "pool"], ["logs", "talk", "-f"]):
        result = run_pivot(root, *args)
        assert result.returncode == 2, describe(result)
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, describe(result)


def test_process_records_show_waves_and_stages(make_project: Callable[..., Path]) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    assert run_pivot(root, "repro", "--json").returncode == 0
    engine = ok(root, "logs", "--role", "engine")
    assert "wave_started wave=1" in engine and "wave_finished wave=1" in engine, engine
    pool = ok(root, "logs", "--role", "pool")
    assert "stage talk ran: never ran" in pool and "[wave=1 stage=talk]" in pool, pool
    result = run_pivot(root, "logs", "--role", "watcher")  # no `pivot up` ran here
    assert result.returncode == 2 and "has not run" in result.stderr, describe(result)
