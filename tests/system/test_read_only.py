"""An output folder on a read-only mount (as root, chmod does not stop writes: a real
read-only bind mount): the stage fails with a clear error naming the file, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import describe, finished, parse_events, run_pivot, write_files
from requires import require

pytestmark = pytest.mark.timeout(60)

PIPELINE = '''\
from pivot import stage


@stage(outs=["out/result.txt"])
def make() -> None:
    open("out/result.txt", "w").write("result\\n")
'''


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    require(os.geteuid() == 0 and shutil.which("mount") is not None, "a read-only bind mount needs root")
    root = write_files(tmp_path / "proj", {"pipeline.py": PIPELINE})
    (root / "out").mkdir()
    subprocess.run(["mount", "--bind", str(root / "out"), str(root / "out")], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(root / "out")], check=True)
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root / "out")], check=False)


def test_an_output_on_a_read_only_mount_fails_its_stage_with_a_clear_error(project: Path) -> None:
    result = run_pivot(project, "repro", "--json")
    assert result.returncode == 1, describe(result)
    done = finished(parse_events(result.stdout))["make"]
    assert done["status"] == "failed", done
    assert "read-only file system" in done["reason"] and "out/result.txt" in done["reason"], done
    assert "Traceback" not in result.stderr
