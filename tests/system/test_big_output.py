"""Stages that print a lot: 20 MB in lines, 20 MB without a newline. Both finish `ran`
(a result message over the transport's 16 MiB limit used to be dropped, and the stage
looked lost), and what is kept of their output is bounded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from procs import describe, finished, of_kind, parse_events, run_pivot

from pivot.runtime.worker import MAX_LINE_CHARS, MAX_LOG_CHARS

pytestmark = pytest.mark.timeout(90)

PIPELINE = '''\
import sys

from pivot import stage


@stage(outs=["lines.txt"])
def lines() -> None:
    row = "y" * 999
    for _ in range(20_000):
        print(row)
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
    kept = {s: sum(len(e["line"]) for e in logs if e["stage"] == s) for s in ("lines", "flat")}
    assert 0 < kept["lines"] <= MAX_LOG_CHARS + 100, kept
    assert MAX_LINE_CHARS <= kept["flat"] <= MAX_LINE_CHARS + 100, kept
    assert any("more lines not kept" in e["line"] for e in logs if e["stage"] == "lines")
