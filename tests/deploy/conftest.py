"""Fixtures of the compose tier: a private Docker engine with the stack's image (one per
session), and a compose project of docker-compose.yml on a fresh copy of the quickstart.

Without root, dockerd, the compose v2 plugin or what .ci/setup-deploy caches, the tier
is skipped (and fails in CI). The engine is stopped by its pid file and its folder (the
image store) removed when the session ends, however it ends.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dockerstack import (
    REPO,
    STACK_UID,
    STALE_ENDPOINTS,
    TIMINGS,
    Engine,
    Stack,
    build_image,
    missing_tools,
)
from procs import ProcGuard
from requires import require

QUICKSTART = REPO / "examples" / "quickstart"


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """A private dockerd holding the stack's image built from this checkout."""
    why = missing_tools()
    require(not why, why)
    started = time.monotonic()
    docker = Engine.start()
    try:
        require(docker.answers(), f"the private dockerd does not answer `docker info` ({docker.folder})")
        TIMINGS["engine start"] = time.monotonic() - started
        started = time.monotonic()
        build_image(docker)
        TIMINGS["image import + build"] = time.monotonic() - started
        yield docker
    finally:
        started = time.monotonic()
        docker.stop()
        TIMINGS["engine stop"] = time.monotonic() - started


def copy_project(dest: Path, uid: int) -> Path:
    """A copy of the quickstart that never ran, owned by `uid` (the stack's user)."""
    shutil.copytree(QUICKSTART, dest, ignore=shutil.ignore_patterns(
        ".pivot", "__pycache__", "clean.csv", "features.csv", "model", "metrics.json"))
    for folder, dirs, files in os.walk(dest):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            os.chown(name, uid, uid)
    return dest


@pytest.fixture
def stack(engine: Engine, tmp_path: Path, proc_guard: ProcGuard) -> Iterator[Stack]:
    """A compose project (not started) on a copy of the quickstart; on the way out it is
    brought down with its volumes, and nothing of it may be left on the engine."""
    project = copy_project(tmp_path / "quickstart", STACK_UID)
    made = Stack(engine, project, keys=tmp_path / "keys", uid=STACK_UID)
    try:
        yield made
    finally:
        made.remove_outside()
        made.down()
        left = [x for x in made.leftovers() if x.split()[-1] not in STALE_ENDPOINTS]
        assert not left, f"compose project {made.name} left {left}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.write_line(
            "compose tier: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()))
    for network in STALE_ENDPOINTS:
        terminalreporter.write_line(
            f"compose tier: dockerd kept network {network} for an endpoint of no container "
            "(moby/moby#42119); it went with the private engine")
