"""The disk fills while a stage writes (a small tmpfs holding the project): the stage
fails saying the disk is full and where, what it wrote is removed (so the disk is not
left full), the last good output stays restorable, and the next run just works."""

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


@stage(deps=["size.txt"], outs=["big.bin"])
def big() -> None:
    megabytes = int(open("size.txt").read())
    with open("big.bin", "wb") as f:
        for _ in range(megabytes):
            f.write(b"x" * (1 << 20))
'''


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs mounted for the test (root), unmounted after."""
    require(os.geteuid() == 0 and shutil.which("mount") is not None, "mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_the_stage_clearly_removes_what_it_wrote_and_the_next_run_works(
    small_disk: Path, proc_guard: object,
) -> None:
    root = write_files(small_disk / "proj", {"pipeline.py": PIPELINE, "size.txt": "2"})
    first = run_pivot(root, "repro", "--json")
    assert first.returncode == 0, describe(first)
    good = (root / "big.bin").read_bytes()

    (root / "size.txt").write_text("40")  # more than the disk holds
    full = run_pivot(root, "repro", "--json")
    assert full.returncode == 1, describe(full)
    done = finished(parse_events(full.stdout))["big"]
    assert done["status"] == "failed", done
    assert "disk is full" in done["reason"] and str(root) in done["reason"], done
    assert not (root / "big.bin").exists(), "the failed run's partial output is still there"
    assert "Traceback" not in full.stderr

    (root / "size.txt").write_text("2")  # as the first run: restored from the cache
    again = run_pivot(root, "repro", "--json")
    assert again.returncode == 0, describe(again)
    assert finished(parse_events(again.stdout))["big"]["status"] in ("restored", "ran")
    assert (root / "big.bin").read_bytes() == good
    checkout = run_pivot(root, "checkout")
    assert checkout.returncode == 0, describe(checkout)
