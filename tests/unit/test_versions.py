"""The on-disk cache of third-party distribution versions used by code fingerprints."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import msgpack
import pytest

from pivot.state.versions import VersionCache


@pytest.fixture
def site_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An extra directory on sys.path standing in for site-packages."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])
    return site


def _plant(cache_file: Path, top: str, answer: str) -> None:
    """Overwrite one saved answer, so a test can see whether the file was used."""
    data = msgpack.unpackb(cache_file.read_bytes(), raw=False)
    data["versions"][top] = answer
    cache_file.write_bytes(msgpack.packb(data, use_bin_type=True))


def test_a_third_party_module_is_named_by_distribution_and_version(site_dir: Path) -> None:
    import msgpack as mp

    answer = VersionCache(None).version("yaml")
    assert answer.startswith("PyYAML==")
    assert VersionCache(None).version("msgpack") == f"msgpack=={'.'.join(map(str, mp.version))}"


def test_unknown_modules_say_so(site_dir: Path) -> None:
    assert VersionCache(None).version("no_such_module_xyz") == "no_such_module_xyz (not installed)"


def test_answers_are_reused_from_disk_while_nothing_was_installed(tmp_path: Path, site_dir: Path) -> None:
    cache_file = tmp_path / "versions"
    first = VersionCache(cache_file)
    real = first.version("yaml")
    first.save()
    _plant(cache_file, "yaml", "planted==1")
    assert VersionCache(cache_file).version("yaml") == "planted==1"
    assert real != "planted==1"


def test_an_install_on_sys_path_invalidates_the_answers(tmp_path: Path, site_dir: Path) -> None:
    cache_file = tmp_path / "versions"
    first = VersionCache(cache_file)
    real = first.version("yaml")
    first.save()
    _plant(cache_file, "yaml", "planted==1")
    (site_dir / "newpkg-1.0.dist-info").mkdir()  # what an install does to site-packages
    st = site_dir.stat()
    os.utime(site_dir, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert VersionCache(cache_file).version("yaml") == real


def test_files_made_in_the_project_folder_keep_the_answers(tmp_path: Path, site_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # The project is on sys.path; a stage's output or an editor's swap file written
    # there changes its mtime, and no package is installed there.
    project = tmp_path / "proj"
    project.mkdir()
    monkeypatch.syspath_prepend(str(project))
    cache_file = tmp_path / "versions"
    first = VersionCache(cache_file, project)
    first.version("yaml")
    first.save()
    _plant(cache_file, "yaml", "planted==1")
    (project / "out.txt").write_text("x")
    st = project.stat()
    os.utime(project, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert VersionCache(cache_file, project).version("yaml") == "planted==1"
    assert VersionCache(cache_file).version("yaml") != "planted==1"  # without the project known


@pytest.mark.parametrize("garbage", [b"", b"\xc1\xc1", msgpack.packb({"stamp": 999})])
def test_an_unreadable_cache_file_is_ignored(tmp_path: Path, site_dir: Path, garbage: bytes) -> None:
    cache_file = tmp_path / "versions"
    cache_file.write_bytes(garbage)
    cache = VersionCache(cache_file)
    assert cache.version("yaml").startswith("PyYAML==")
    cache.save()
    assert msgpack.unpackb(cache_file.read_bytes(), raw=False)["versions"]["yaml"].startswith("PyYAML==")
