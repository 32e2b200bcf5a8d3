"""The state cache shared by several processes at once (real interpreters, one sqlite db)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pivot.state import hashing
from pivot.state.statecache import StateCache

OLD = 1_600_000_000_000_000_000  # an mtime far in the past: entries are trusted at once


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, ns=(OLD, OLD))
    return root


_CHILD = """
import sys
from pathlib import Path
from pivot.state.statecache import StateCache
cache = StateCache(Path(sys.argv[1]))
digests = {cache.hash_path(Path(sys.argv[2])) for _ in range(20)}
print(*digests, cache.reads)
"""


def test_processes_share_one_db(tmp_path: Path) -> None:
    db = tmp_path / ".pivot" / "state.db"
    d = make_tree(tmp_path / "d", {f"f{i}": bytes([i % 256]) * i for i in range(300)})
    expected = hashing.hash_path(d)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(db), str(d)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [child.communicate(timeout=60) for child in children]
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
        digest, reads = out.split()
        assert digest == expected
        assert int(reads) <= 300  # each file read at most once per process
    late = StateCache(db)
    assert late.hash_path(d) == expected
    assert late.reads == 0
