"""The project as it was at a git revision, for `pivot metrics diff` and `pivot params
diff --rev`: lock files read from git, a metrics file from git if it was committed, else
from `.pivot/cache` by the hash that revision's lock records for it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pivot.errors import UserError
from pivot.state.lock import StageLock, parse_lock, stage_file

__all__ = ["Revision"]


class Revision:
    def __init__(self, root: Path, rev: str) -> None:
        self.root, self.rev = root, rev
        # Outputs this revision's locks record whose cached objects are gone (`pivot gc`):
        # read as absent, and said, never taken for "no such output then".
        self.lost: list[str] = []
        found = self._git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        if found is None:
            raise UserError(f"{rev!r} is not a revision of the git repository at {root}")
        self.commit = found.decode().strip()

    def _git(self, *args: str) -> bytes | None:
        try:
            done = subprocess.run(["git", *args], cwd=self.root, capture_output=True, timeout=30)
        except FileNotFoundError:
            raise UserError("--rev needs git, which is not installed") from None
        except subprocess.TimeoutExpired:
            raise UserError(f"git did not answer within 30 s in {self.root}") from None
        if done.returncode != 0:
            if b"not a git repository" in done.stderr:
                raise UserError(f"{self.root} is not in a git repository: --rev compares with a git revision")
            return None
        return done.stdout

    def read(self, path: str) -> bytes | None:
        """`path` (relative to the project root) as committed at this revision, or None."""
        return self._git("show", f"{self.commit}:./{path}")

    def lock(self, stage: str) -> StageLock | None:
        raw = self.read(f".pivot/stages/{stage_file(stage)}.lock")
        return parse_lock(raw) if raw is not None else None

    def output(self, stage: str, path: str) -> bytes | None:
        """An output as it was at this revision: committed to git, else the cached object
        of the hash this revision's lock recorded; None when neither has it."""
        committed = self.read(path)
        if committed is not None:
            return committed
        lock = self.lock(stage)
        digest = lock.outs.get(path) if lock is not None else None
        if digest is None:
            return None
        from pivot.state.cache import ContentCache

        try:
            return ContentCache(self.root / ".pivot" / "cache").object_path(digest).read_bytes()
        except (OSError, ValueError):
            self.lost.append(path)
            return None
