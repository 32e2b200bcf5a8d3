"""A real pool process with this test as its broker: loads of the pipeline that overlap.
A load that read the files before a save can finish after the load asked for that save;
the pool answers only the last load it was asked for (docs/protocol.md, `load`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq

from pivot.pipeline.manifest import Manifest
from pivot.protocol.messages import (
    LoadManifest,
    ManifestLoaded,
    ResultAck,
    RunStage,
    StageResult,
    StageRunning,
)
from tests.procs import ProcGuard, wait_for, write_files
from tests.system.test_pool_behind import WAIT_S, FakeBroker

pytestmark = pytest.mark.timeout(90)

# Each import of the pipeline is numbered (imports.log); the import numbered N waits while
# hold-N exists (imported.log: those that ended). Stage c exists once the file v2 does, as
# a save adding it would make it.
PIPELINE = '''\
import os
import time
from pathlib import Path

from pivot import stage

log = Path("imports.log")
n = len(log.read_text().splitlines()) + 1 if log.exists() else 1
with log.open("a") as f:
    f.write(f"import {n}\\n")
v2 = os.path.exists("v2")
deadline = time.monotonic() + 30
while os.path.exists(f"hold-{n}") and time.monotonic() < deadline:
    time.sleep(0.01)


@stage(outs=["a.txt"])
def a() -> None:
    Path("a.txt").write_text("a\\n")


if v2:
    @stage(outs=["c.txt"])
    def c() -> None:
        Path("c.txt").write_text("c\\n")

with open("imported.log", "a") as f:
    f.write(f"{n}\\n")
'''


def imports(root: Path) -> int:
    log = root / "imports.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_an_answer_to_an_earlier_load_is_dropped_for_the_last_one(
    tmp_path: Path, proc_guard: ProcGuard, zctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    root = proc_guard.watch_dir(write_files(tmp_path / "proj", {"pipeline.py": PIPELINE}))
    broker = FakeBroker(zctx, root, proc_guard)  # its first load: import 1
    try:
        (root / "hold-2").touch()
        broker.send(LoadManifest(False, 1))
        wait_for(lambda: imports(root) == 2, WAIT_S, "load 1 to import the pipeline")
        (root / "v2").touch()  # the save load 2 is asked for, after load 1 read its files
        broker.send(LoadManifest(False, 2))
        answer = broker.next_of(ManifestLoaded)
        assert isinstance(answer, ManifestLoaded) and answer.load == 2, answer
        assert "c" in Manifest.from_wire(answer.manifest).by_name
        (root / "hold-2").unlink()  # load 1 ends now, without c
        wait_for(lambda: "2" in (root / "imported.log").read_text().split(), WAIT_S, "load 1's import to end")
        broker.send(LoadManifest(False, 3))
        answer = broker.next_of(ManifestLoaded)  # not load 1's
        assert isinstance(answer, ManifestLoaded) and answer.load == 3, answer
        # The pool's own manifest is the last load's: it runs c.
        broker.send(RunStage(1, "c", "w1-1", False))
        said = broker.next()
        assert isinstance(said, StageRunning), said
        result = broker.next_of(StageResult)
        assert isinstance(result, StageResult) and result.status == "ran", result
        broker.send(ResultAck("w1-1"))
    finally:
        broker.proc.terminate()
        broker.proc.wait(WAIT_S)
        broker.sock.close(linger=0)
        broker.stderr.close()
