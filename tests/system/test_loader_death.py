"""The loader (the process that imports pipeline.py for a pool) killed outright
(issue 11): SIGKILL while it imports, as the kernel's OOM killer would; and a pipeline
error too large to send.

`pivot repro` says so as a pipeline error (exit 2) naming the signal, no traceback.
Under `pivot up` the engine shows the broken pipeline, keeps its pool and watcher, and
runs the pipeline once the next edit loads cleanly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from procs import LiveRun, describe, run_pivot

pytestmark = pytest.mark.timeout(60)

WAIT_S = 30.0

PIPELINE = '''\
import os
import signal
from pathlib import Path

from pivot import stage

if Path("die.flag").exists():  # the loader (and any worker importing this) dies here
    os.kill(os.getpid(), signal.SIGKILL)


@stage(deps=["in.txt"], outs=["out.txt"])
def copy() -> None:
    Path("out.txt").write_text(Path("in.txt").read_text() + "{tag}")
'''

KILLED = "pipeline loader (the process that imports pipeline.py) was killed by SIGKILL"


def test_repro_says_the_loader_was_killed(make_project: Callable[..., Path]) -> None:
    root = make_project({"pipeline.py": PIPELINE.format(tag="v1"), "in.txt": "x\n", "die.flag": ""})
    result = run_pivot(root, "repro", timeout=30)
    assert result.returncode == 2, describe(result)
    assert KILLED in result.stderr, describe(result)
    assert "Traceback" not in result.stderr


def test_under_up_a_killed_loader_is_a_broken_pipeline_until_the_next_edit(
    make_project: Callable[..., Path], up: Callable[..., LiveRun],
) -> None:
    root = make_project({"pipeline.py": PIPELINE.format(tag="v1"), "in.txt": "x\n"})
    live = up(root)
    live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "the first wave")
    live.wait_watching(root)
    assert (root / "out.txt").read_text() == "x\nv1"

    (root / "die.flag").write_text("")
    start = live.mark()
    (root / "pipeline.py").write_text(PIPELINE.format(tag="v2"))
    invalid = live.wait_event(lambda e: e["event"] == "pipeline_invalid", WAIT_S, "the broken reload", start)
    assert KILLED in invalid["message"], invalid

    (root / "die.flag").unlink()
    start = live.mark()
    (root / "pipeline.py").write_text(PIPELINE.format(tag="v3"))
    live.wait_event(
        lambda e: e["event"] == "stage_finished" and e["stage"] == "copy" and e["status"] == "ran",
        WAIT_S, "the stage on the fixed pipeline", start,
    )
    assert (root / "out.txt").read_text() == "x\nv3"
    assert [e for e in live.since(0) if e["event"] == "pool_lost"] == [], live.since(0)
    live.stop()


def test_a_pipeline_error_megabytes_long_is_clipped_not_a_hang(make_project: Callable[..., Path]) -> None:
    """An import error whose message is 20 MB: the pipeline error carrying it was over
    the transport's limit, dropped, and `pivot repro` waited forever."""
    root = make_project({"pipeline.py": 'raise ValueError("x" * 20_000_000)\n'})
    result = run_pivot(root, "repro", timeout=30)
    assert result.returncode == 2, describe(result)
    assert "ValueError: xxxx" in result.stderr
    assert "more characters not kept]" in result.stderr
    assert len(result.stderr) < 200_000
