"""What a test tier needs from the machine (a Docker engine, root for network
namespaces, Dask's `distributed`), and what happens without it.

On a laptop without it, the test is skipped with the reason. In CI (`CI=true`) as root,
where `.ci/run` installs all of it, a missing requirement fails the test instead: a
skipped compose, namespace or Dask test must never pass a run unnoticed.
"""

from __future__ import annotations

import os

import pytest

__all__ = ["ci_must_run", "require"]


def ci_must_run() -> bool:
    """Whether missing requirements fail rather than skip: CI, as root."""
    return os.environ.get("CI", "").lower() == "true" and os.geteuid() == 0


def require(ok: bool, reason: str) -> None:
    """Skip (or in CI, fail) the calling test unless `ok`."""
    if ok:
        return
    if ci_must_run():
        pytest.fail(f"required in CI (CI=true, root): {reason}", pytrace=False)
    pytest.skip(reason)
