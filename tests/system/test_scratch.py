"""What a killed pool or loader leaves in the temp folder is removed by the next pool;
a role's log over its bound is rotated when its process starts."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from procs import describe, run_pivot

from pivot.launch.scratch import LOG_ROTATE_BYTES

PIPELINE = '''\
from pivot import stage


@stage(outs=["a.txt"])
def a() -> None:
    open("a.txt", "w").write("a\\n")
'''


def test_a_pool_removes_what_dead_pools_and_loaders_left_and_keeps_its_log_bounded(
    make_project: Callable[..., Path],
) -> None:
    root = make_project({"pipeline.py": PIPELINE})
    dead = subprocess.Popen(["true"])  # a pid that no longer runs
    dead.wait()
    tmp = Path(tempfile.gettempdir())
    left_dir = tmp / f"pivot-workers-{dead.pid}-test"
    left_dir.mkdir()
    (left_dir / "b1w1-1").write_text("4242")
    left_file = tmp / f"pivot-manifest-{dead.pid}-test.msgpack"
    left_file.write_bytes(b"")
    log = root / ".pivot" / "logs" / "pool.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"x" * (LOG_ROTATE_BYTES + 1))
    try:
        result = run_pivot(root, "repro", "--json")
        assert result.returncode == 0, describe(result)
        assert not left_dir.exists() and not left_file.exists()
        assert log.with_name("pool.log.1").stat().st_size == LOG_ROTATE_BYTES + 1
        assert log.stat().st_size < LOG_ROTATE_BYTES
    finally:
        shutil.rmtree(left_dir, ignore_errors=True)
        left_file.unlink(missing_ok=True)
