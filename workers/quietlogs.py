"""What a pool's workers leave it to store: the head lines of the runs that printed
nothing (their logs: pivot/state/stagelogs.py) and the state-cache rows of the outputs
they hashed, many stages' in one transaction. A transaction a stage, in each worker, was
a tenth of a small stage's cost (a cold 1000-stage run: 0.86 -> 0.77 ms a stage without
them), and the workers waited on each other's write lock.

A live engine's pool keeps them before it sends the results of the turn of its loop
that handled them: its broker judges an output its watcher saw change by its row (one
the pipeline just wrote is no change). A one-shot run's pool (`pivot repro`: no watcher)
holds them for up to HOLD_S, and keeps them sooner when it has nothing left to run or
exits, so that `pivot logs` shows a stage's earlier log for at most that long after the
stage ran. Either way a stage's held line is kept before the pool handles its next result
(whose log may be a file), and before a decision that may restore from the run cache
(which reads the head line kept for its run). A pool killed outright loses what it held:
a few runs' head lines (`pivot logs` then shows the line kept before, if any) and rows
(hashed again); the locks, run-cache entries and cached outputs are its workers', written
before their results.
"""

from __future__ import annotations

from pathlib import Path

from pivot.state.stagelogs import QuietRun, keep_quiet
from pivot.state.statecache import StateCache

__all__ = ["HOLD_S", "QuietLogs"]

HOLD_S = 0.05

Row = tuple[str, int, int, int, str, int]


class QuietLogs:
    def __init__(self, hashes: StateCache, root: Path, *, one_shot: bool = False) -> None:
        self.hashes = hashes
        self.root = root
        self.one_shot = one_shot
        self.runs: list[QuietRun] = []
        self.rows: list[Row] = []
        self.stages: set[str] = set()
        self.due: float | None = None  # (one-shot) when what is held is kept at the latest

    def hold(self, run: QuietRun | None, rows: list[Row], now: float) -> None:
        if run is not None:
            self.runs.append(run)
            self.stages.add(run.stage)
        self.rows += rows
        if self.due is None and (self.runs or self.rows):
            self.due = now + HOLD_S

    def before_result(self, stage: str) -> None:
        """The pool is about to handle a result of `stage`: its held line goes first."""
        if stage in self.stages:
            self.keep()

    def sending(self, now: float, idle: bool) -> None:
        """The pool sends what a turn of its loop made (results among it, maybe)."""
        if not self.one_shot or idle or (self.due is not None and now >= self.due):
            self.keep()

    def keep(self) -> None:
        if self.due is None:
            return
        runs, rows = self.runs, self.rows
        self.runs, self.rows, self.stages, self.due = [], [], set(), None
        keep_quiet(self.hashes, self.root, runs, rows)
