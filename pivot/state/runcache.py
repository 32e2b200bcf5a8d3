"""The run cache: (code fingerprint, params, dep hashes, declared outs) -> output hashes.

If a stage is about to run with inputs it has already run with, its outputs can be
placed from the content cache instead: reverting a param or a code edit is then instant.
One small JSON file per key under `.pivot/runcache/`, written atomically: a hard link to
the lock file its run wrote (which holds the entry's "stage" and "outs") when it can be.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import xxhash

from pivot.pipeline.manifest import StageSpec
from pivot.state.atomic import link_atomic, write_atomic

__all__ = ["RunCache", "run_key"]


def run_key(spec: StageSpec, dep_hashes: dict[str, str]) -> str:
    """What decides a stage's outputs. The stage's name is left out: renaming keeps its runs."""
    blob = json.dumps(
        {
            "code": spec.fingerprint,
            "params": spec.params,
            "deps": sorted(dep_hashes.items()),
            "outs": sorted(spec.outs),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return xxhash.xxh3_128_hexdigest(blob.encode())


class RunCache:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._folder_s = os.fspath(folder)

    def _path(self, key: str) -> str:
        return os.path.join(self._folder_s, key[:2], f"{key[2:]}.json")  # (a string: every stage run)

    def log_path(self, key: str) -> Path:
        """Where the output of the run that recorded `key` is kept (pivot/state/stagelogs.py)."""
        return self.folder.joinpath(key[:2], f"{key[2:]}.log")

    def lookup(self, key: str) -> dict[str, str] | None:
        """The output hashes recorded for `key`, or None (also for an unreadable entry)."""
        try:
            # os.path, not pathlib: every stage about to run asks (most often: no entry).
            with open(os.path.join(self.folder, key[:2], f"{key[2:]}.json"), "rb") as f:
                data = json.loads(f.read())
            outs = data["outs"]
            if isinstance(outs, dict) and all(isinstance(v, str) for v in outs.values()):
                return {str(k): v for k, v in outs.items()}
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def record(self, key: str, stage: str, outs: dict[str, str], lock_file: str | os.PathLike[str] | None = None) -> None:
        """Record `key`'s outputs. With `lock_file` (the lock the run just wrote, which
        holds the same "stage" and "outs"), the entry is a hard link to it rather than a
        file of its own: a new file costs 65-200 us on this machine's ext4 (an inode),
        a link ~7 us. Locks are only ever replaced by a rename, never written in place,
        so the entry keeps the content it was linked with."""
        path = self._path(key)
        if lock_file is not None:
            try:
                link_atomic(lock_file, path)
                return
            except OSError:  # no hard links here (some network file systems): a copy
                pass
        data = json.dumps({"stage": stage, "outs": outs}, sort_keys=True).encode()
        write_atomic(path, data)

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every readable entry: {"stage", "outs"}."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*/*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and isinstance(data.get("outs"), dict):
                yield data

    def clear(self) -> int:
        """Remove every entry; return how many were removed."""
        count = 0
        if self.folder.is_dir():
            for path in self.folder.glob("*/*.json"):
                path.unlink(missing_ok=True)
                count += 1
            for path in self.folder.glob("*/*.log"):  # the runs' output, kept beside them
                path.unlink(missing_ok=True)
        return count
