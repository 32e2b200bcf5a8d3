"""What a killed pool or loader leaves in the temp folder is removed by the next pool;
a role's log over its bound is rotated when its process starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from procs import describe, pivot_cmd, run_pivot

from pivot.launch import scratch
from pivot.launch.scratch import LOG_ROTATE_BYTES, attempts_temp

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
    # ... and where attempts' files go now (in memory), when that is elsewhere
    left_attempts = Path(attempts_temp()) / f"pivot-workers-{dead.pid}-attempts"
    left_attempts.mkdir()
    left_file = tmp / f"pivot-manifest-{dead.pid}-test.msgpack"
    left_file.write_bytes(b"")
    log = root / ".pivot" / "logs" / "pool.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"x" * (LOG_ROTATE_BYTES + 1))
    try:
        result = run_pivot(root, "repro", "--json")
        assert result.returncode == 0, describe(result)
        assert not left_dir.exists() and not left_file.exists() and not left_attempts.exists()
        assert log.with_name("pool.log.1").stat().st_size == LOG_ROTATE_BYTES + 1
        assert log.stat().st_size < LOG_ROTATE_BYTES
    finally:
        shutil.rmtree(left_dir, ignore_errors=True)
        shutil.rmtree(left_attempts, ignore_errors=True)
        left_file.unlink(missing_ok=True)


WHERE_PRINTED = '''\
import os

from pivot import stage


@stage(outs=["where.txt"])
def where() -> None:
    # Its standard output is its attempt's file, in its pool's scratch folder.
    open("where.txt", "w").write(os.readlink("/proc/self/fd/1"))
'''

NO_TEMP_VARIABLES = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "TEMP", "TMP")}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("tmpdir", [False, True], ids=["memory", "TMPDIR"])
def test_a_pools_attempt_files_are_in_memory_unless_tmpdir_says_where(
    make_project: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmpdir: bool
) -> None:
    root = make_project({"pipeline.py": WHERE_PRINTED})
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**NO_TEMP_VARIABLES, "TMPDIR": str(temp)} if tmpdir else NO_TEMP_VARIABLES
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.delenv(name, raising=False)
    expected = str(temp) if tmpdir else attempts_temp()
    result = subprocess.run(
        [*pivot_cmd(), "repro", "--json"], cwd=root, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL, env=env,
    )
    assert result.returncode == 0, describe(result)
    printed_to = Path((root / "where.txt").read_text())
    assert printed_to.parent.name.startswith("pivot-workers-"), printed_to
    assert str(printed_to.parent.parent) == expected
    assert not printed_to.parent.exists()  # removed by its pool as it ended


def test_attempts_go_to_a_roomy_memory_folder_and_elsewhere_to_the_temp_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(scratch, "SHARED_MEMORY", str(tmp_path))
    assert attempts_temp() == str(tmp_path)
    monkeypatch.setattr(scratch, "SHARED_MEMORY", str(tmp_path / "absent"))  # not Linux
    assert attempts_temp() == tempfile.gettempdir()
    monkeypatch.setattr(scratch, "SHARED_MEMORY", str(tmp_path))
    monkeypatch.setattr(scratch, "MIN_MEMORY_FREE", 1 << 60)  # a container's small one
    assert attempts_temp() == tempfile.gettempdir()
    monkeypatch.setattr(scratch, "MIN_MEMORY_FREE", 0)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "chosen"))
    assert attempts_temp() == tempfile.gettempdir()
