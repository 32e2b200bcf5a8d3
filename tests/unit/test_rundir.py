"""The run directory: lock against a second engine, short-path fallback, cleanup."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pivot.errors import StackRunning
from pivot.transport.rundir import IPC_PATH_LIMIT, RunDir, read_endpoints


def test_endpoints_live_in_the_project_run_dir_with_mode_0700(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path)
    endpoints = rundir.acquire()
    try:
        run = tmp_path / ".pivot" / "run"
        assert stat.S_IMODE(os.stat(run).st_mode) == 0o700
        assert endpoints.control == f"ipc://{run / 'control.sock'}"
        assert read_endpoints(tmp_path) == endpoints
    finally:
        rundir.release()
    assert read_endpoints(tmp_path) is None


def test_a_second_engine_on_the_same_project_is_refused(tmp_path: Path) -> None:
    first = RunDir(tmp_path)
    first.acquire()
    try:
        with pytest.raises(StackRunning, match=f"pid {os.getpid()}"):
            RunDir(tmp_path).acquire()
    finally:
        first.release()
    again = RunDir(tmp_path)
    again.acquire()  # free once the first released it
    again.release()


def test_a_long_project_path_gets_a_short_socket_dir_and_a_pointer(tmp_path: Path) -> None:
    root = tmp_path / ("deep-" * 20) / "project"
    root.mkdir(parents=True)
    assert len(str(root / ".pivot" / "run" / "control.sock")) > IPC_PATH_LIMIT
    rundir = RunDir(root)
    endpoints = rundir.acquire()
    socket_dir = Path(endpoints.control.removeprefix("ipc://")).parent
    try:
        assert len(endpoints.control.removeprefix("ipc://")) <= IPC_PATH_LIMIT
        assert stat.S_IMODE(os.stat(socket_dir).st_mode) == 0o700
        assert read_endpoints(root) == endpoints  # endpoints.json is the pointer
    finally:
        rundir.release()
    assert not socket_dir.exists()
