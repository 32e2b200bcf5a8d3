"""Damaged or deleted state under a live or a later run (issue 11, storage): detected,
named, healed, never a wrong skip.

- The state database (`.pivot/state.db`, a cache of file hashes) overwritten with
  garbage: the next run says it is corrupt (a `notice` every display shows, not only a
  line in the pool's log), moves it aside, recreates it, and decides as before (nothing runs that was up to date; an edited input still runs its stage).
- The whole cache folder deleted while `pivot up` runs: outputs on disk stay as they
  are; an output deleted by hand afterwards cannot be restored from the cache, so its
  stage runs again and its output is stored anew (`pivot checkout` can restore it).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from procs import LiveRun, describe, finished, parse_events, run_pivot

pytestmark = pytest.mark.timeout(90)

WAIT_S = 30.0
STAGES = {"prepare", "features", "fit", "evaluate"}


def test_a_state_database_full_of_garbage_is_named_moved_aside_and_nothing_is_skipped_wrongly(
    ran_project: Path,
) -> None:
    db = ran_project / ".pivot" / "state.db"
    assert db.exists()
    for extra in (db.with_name("state.db-wal"), db.with_name("state.db-shm")):
        extra.unlink(missing_ok=True)
    garbage = b"not a database at all\n" * 200
    db.write_bytes(garbage)

    result = run_pivot(ran_project, "repro", "--json", timeout=60)
    assert result.returncode == 0, describe(result)
    assert {n: e["status"] for n, e in finished(parse_events(result.stdout)).items()} == dict.fromkeys(
        STAGES, "skipped"
    ), result.stdout
    said = [e["message"] for e in parse_events(result.stdout) if e["event"] == "notice"]
    assert any(f"state cache {db} is corrupt" in m and "recreating it" in m for m in said), result.stdout
    assert db.with_name("state.db.corrupt").read_bytes() == garbage

    raw = ran_project / "data" / "raw.csv"
    raw.write_text(raw.read_text() + "9,9,9\n")
    result = run_pivot(ran_project, "repro", "--json", timeout=60)
    assert result.returncode == 0, describe(result)
    assert finished(parse_events(result.stdout))["prepare"]["status"] == "ran", result.stdout
    assert "corrupt" not in result.stdout, result.stdout  # the recreated one is sound


def test_the_cache_folder_deleted_under_pivot_up_is_refilled_when_a_stage_must_run(
    ran_project: Path, up: Callable[..., LiveRun],
) -> None:
    live = up(ran_project)
    live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "the first wave")
    live.wait_watching(ran_project / "model")
    cache = ran_project / ".pivot" / "cache"
    assert cache.is_dir()
    shutil.rmtree(cache)

    model = ran_project / "model" / "model.json"
    before = model.read_bytes()
    start = live.mark()
    model.unlink()  # a hand deletion: its cached copy is gone too
    done = live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "the wave of the deletion", start)
    outcomes = {e["stage"]: e for e in live.since(start) if e["event"] == "stage_finished"}
    assert outcomes["fit"]["status"] == "ran", outcomes  # nothing to restore it from
    assert outcomes.get("evaluate", {"status": "skipped"})["status"] == "skipped", outcomes
    assert done["failed"] == [], done
    assert model.read_bytes() == before
    live.stop()

    # Stored anew: deleted again, it comes back from the cache.
    model.unlink()
    result = run_pivot(ran_project, "checkout", timeout=30)
    assert result.returncode == 0, describe(result)
    assert model.read_bytes() == before
    status = run_pivot(ran_project, "status", "--json", timeout=30)
    assert status.returncode == 0, describe(status)
