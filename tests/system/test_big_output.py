"""Stages that print a lot: 20 MB in lines, 20 MB without a newline. Both finish `ran`,
the displays get the last lines (and a note of how many were not shown live), and the
stage's log on disk has every byte."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from procs import describe, finished, of_kind, parse_events, run_pivot

from pivot.state.stagelogs import stage_log_path
from workers.streams import MAX_LINE_CHARS

pytestmark = pytest.mark.timeout(90)

PIPELINE = '''\
import sys

from pivot import stage


@stage(outs=["lines.txt"])
def lines() -> None:
    row = "y" * 993
    for i in range(20_000):
        print(f"{i:05d} {row}")
    open("lines.txt", "w").write("done\\n")


@stage(outs=["flat.txt"])
def flat() -> None:
    chunk = "z" * 1000
    for _ in range(20_000):
        sys.stdout.write(chunk)
    open("flat.txt", "w").write("done\\n")
'''


def test_stages_printing_megabytes_finish_and_their_kept_output_is_bounded(
    make_project: Callable[..., Path],
) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    result = run_pivot(root, "repro", "--json", timeout=80)
    assert result.returncode == 0, describe(result)
    events = parse_events(result.stdout)
    assert {s: e["status"] for s, e in finished(events).items()} == {"lines": "ran", "flat": "ran"}
    logs = of_kind(events, "log")
    shown = [e["line"] for e in logs if e["stage"] == "lines" and e["stream"] == "stdout" and not e["partial"]]
    assert shown[-1] == f"19999 {'y' * 993}" and len(shown) < 20_000
    notes = [e["line"] for e in logs if e["stage"] == "lines" and e["stream"] == "pivot"]
    missed = sum(int(n.split()[0]) for n in notes if "not shown live" in n)
    assert missed + len(shown) == 20_000, notes
    assert [len(e["line"]) for e in logs if e["stage"] == "flat" and not e["partial"]] == [MAX_LINE_CHARS]
    log = stage_log_path(root, "lines").read_text().splitlines()
    assert log[1:] == [f"{i:05d} {'y' * 993}" for i in range(20_000)]
    assert stage_log_path(root, "flat").stat().st_size > 20_000_000
