"""Chaos (issue 11): a 100-stage pipeline under `pivot up` while loky workers are killed
at random (exponential delays from a fixed seed, printed on failure), the pool and the
watcher too (within the supervisor's crash limit), and data files are edited. Then one
`pivot repro` makes every output byte-identical to an undisturbed run's, and a no-op
after it runs nothing.

PIVOT_CHAOS_S sets how long the chaos lasts (default 20 s, for CI; a longer run by hand:
`PIVOT_CHAOS_S=300 python -m pytest tests/system/test_chaos.py`), PIVOT_CHAOS_SEED the
seed (default: a new one, printed).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from procs import (
    LiveRun,
    all_processes,
    describe,
    engine_children,
    finished,
    is_live,
    parse_events,
    run_pivot,
    write_files,
)

CHAOS_S = float(os.environ.get("PIVOT_CHAOS_S", "20"))
pytestmark = pytest.mark.timeout(CHAOS_S + 120)

INPUTS = 10
STAGES = 100
LAYER = 10
MAX_ROLE_KILLS = 2  # pool and watcher each: under the supervisor's limit (5 a minute)


def pipeline() -> str:
    """Ten layers of ten stages; each reads one or two files of the layer before (or the
    inputs) and writes a digest of what it read, after a short pause."""
    rng = random.Random(7)  # the pipeline is the same every run; the chaos is not
    lines = ["import hashlib", "import time", "", "from pivot import stage", ""]
    for i in range(STAGES):
        layer = i // LAYER
        pool = [f"data/in{j}.txt" for j in range(INPUTS)] if layer == 0 else [
            f"out/s{k}.txt" for k in range((layer - 1) * LAYER, layer * LAYER)
        ]
        deps = sorted(rng.sample(pool, rng.choice((1, 2))))
        lines += [
            f"@stage(deps={deps!r}, outs=['out/s{i}.txt'])",
            f"def s{i}() -> None:",
            "    time.sleep(0.02)",
            f"    data = b''.join(open(p, 'rb').read() for p in {deps!r})",
            f"    open('out/s{i}.txt', 'w').write(hashlib.sha256(data + b'{i}').hexdigest() + '\\n')",
            "",
        ]
    return "\n".join(lines)


def project(root: Path) -> Path:
    files = {"pipeline.py": pipeline(), **{f"data/in{j}.txt": f"input {j}\n" for j in range(INPUTS)}}
    root = write_files(root, files)
    (root / "out").mkdir()
    return root


def outputs(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "out").glob("*.txt"))}


def workers_of(pool_pid: int) -> list[int]:
    """The loky workers under a pool: the forkserver's children (not the forkserver)."""
    everything = [p for p in all_processes() if is_live(p)]
    children = {p.pid for p in everything if p.ppid == pool_pid}
    return [p.pid for p in everything if p.ppid in children]


def test_chaos_then_one_run_makes_every_output_as_an_undisturbed_run(
    tmp_path: Path, up: Callable[..., LiveRun],
) -> None:
    seed = int(os.environ.get("PIVOT_CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    root = project(tmp_path / "chaos")
    live = up(root)
    live.wait_event(lambda e: e["event"] == "wave_finished", 60, "the first wave")
    live.wait_watching(root, root / "data")

    kills = {"worker": 0, "pool": 0, "watcher": 0}
    edits = 0
    stop_at = time.monotonic() + CHAOS_S
    while time.monotonic() < stop_at:
        time.sleep(rng.expovariate(1 / 0.4))  # chaos pacing, not a wait for anything
        children = engine_children(live.proc.pid)
        pools = [p.pid for p in children if "-m workers" in " ".join(p.cmdline)]
        watchers = [p.pid for p in children if "pivot.watch" in " ".join(p.cmdline)]
        roll = rng.random()
        victim = 0
        if roll < 0.45:
            edits += 1
            j = rng.randrange(INPUTS)
            (root / "data" / f"in{j}.txt").write_text(f"input {j} edit {edits}\n")
            continue
        if roll < 0.9 and pools:
            found = workers_of(pools[0])
            victim, role = (rng.choice(found), "worker") if found else (0, "worker")
        elif roll < 0.95 and pools and kills["pool"] < MAX_ROLE_KILLS:
            victim, role = pools[0], "pool"
        elif watchers and kills["watcher"] < MAX_ROLE_KILLS:
            victim, role = watchers[0], "watcher"
        if victim:
            try:
                os.kill(victim, signal.SIGKILL)
                kills[role] += 1
            except ProcessLookupError:
                pass
    stderr = live.stop(60)
    info = f"seed {seed}, kills {kills}, edits {edits}"
    assert "gave up" not in stderr, info + "\n" + stderr

    settled = run_pivot(root, "repro", "--json", timeout=120)
    assert settled.returncode == 0, info + "\n" + describe(settled)
    reference = project(tmp_path / "reference")
    for j in range(INPUTS):  # the inputs as the chaos left them
        shutil.copyfile(root / "data" / f"in{j}.txt", reference / "data" / f"in{j}.txt")
    clean = run_pivot(reference, "repro", "--json", timeout=120)
    assert clean.returncode == 0, describe(clean)
    assert outputs(root) == outputs(reference), info
    noop = run_pivot(root, "repro", "--json", timeout=60)
    assert noop.returncode == 0, describe(noop)
    ran = [s for s, e in finished(parse_events(noop.stdout)).items() if e["status"] != "skipped"]
    assert ran == [], info + f": a no-op after the chaos ran {ran}"
    print(f"chaos: {info}, {CHAOS_S:.0f} s")
