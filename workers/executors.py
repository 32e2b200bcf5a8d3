"""Where a pool's stages run: the executor interface. Implementations: the pool's own
worker processes (`workers/processes.py`) and a Dask cluster (`workers/dask_pool.py`).

The pool decides; an executor only runs `StageJob`s and hands back futures of
`StageOutcome`s. `replace()` stops every worker at once (new code must not run on
workers that imported the old one); the next `submit` starts fresh ones, and
`generation` tells futures of the old workers from those of the new. `cancel` and
`kill` stop one attempt, named by its pid file (the worker writes its pid there).

A worker that dies in a stage's code (the pool's hard kill, the OOM killer, a segfault)
cannot remove what the stage half wrote, as it does when a stage fails or is cancelled:
`discard_if_died` does, when that attempt's run fails, once its worker is dead
(pivot/runtime/cancel.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from pivot.launch.procs import is_alive
from pivot.runtime.cancel import writer, writing_path
from pivot.runtime.command import kill_group_of
from pivot.runtime.job import ChainLink, LinkBegan, StageJob, StageOutcome
from pivot.state.outputs import remove

__all__ = ["Executor", "discard_if_died"]


class Executor(Protocol):
    generation: int  # bumped by every replace()
    # Its workers run on other machines: attempt files go on the project's shared file
    # system, and a dead worker is reported by the executor (the pool cannot see it).
    remote: bool
    # Stages a worker holds at once: the one it runs and those queued behind it, which it
    # starts on its own (each one's `on_start` is called then).
    prefetch: int

    def configure(self, preload: tuple[str, ...], preload_key: str) -> None:
        """The third-party modules workers should have imported (a hint)."""

    def submit(self, job: StageJob, on_start: Callable[[], None] | None = None) -> Future[StageOutcome]:
        """Run `job`; `on_start` is called (in the loop's thread, from `submit` or
        `collect`) when a worker begins it."""
        ...

    def submit_after(self, link: ChainLink, on_began: Callable[[LinkBegan], None]) -> Future[Any] | None:
        """Queue `link` behind its upstream's job on the worker running that, which then
        decides and runs it itself (`on_began` is called, in the loop's thread, when it
        runs it); None when it cannot (not this executor's way, or no such worker)."""
        ...

    def rebalance(self, now: float) -> float | None:
        """Stages queued behind a long one that an idle worker could run now, moved to
        it (`now`: time.monotonic()); returns when to call again (None: no need)."""
        ...

    def waitables(self) -> list[int]:
        """Descriptors the pool's loop polls for this executor (none: it wakes the loop
        from its own threads through their futures' callbacks)."""
        ...

    def collect(self, ready: set[int]) -> None:
        """Called by the pool's loop with the descriptors of `waitables` that are ready."""
        ...

    def start(self, count: int, root: Path | None = None) -> None:
        """Start up to `count` workers now (at most its jobs), before any stage: stages
        are known to be coming. With `root`, each imports that project's pipeline as it
        starts, meanwhile, rather than in its first stage."""
        ...

    def resume(self) -> None:
        """Called once the broker answered the results that did not succeed (it may have
        cancelled the stages queued behind them meanwhile): workers that stopped after a
        failed stage go on."""
        ...

    def prepare(self, root: Path) -> None:
        """Python code changed and is being loaded: start a worker for it now, if that
        helps (taken by `replace(adopt=True)` once the new code is accepted)."""
        ...

    def replace(self, adopt: bool = False, keep: frozenset[str] = frozenset()) -> None:
        """Stop every worker now (see the module's text). The stages of `keep` (pid
        files), begun on the old code and left as they were by the new, run to their end
        on their workers, which take no other stage."""
        ...

    def cancel(self, pid_file: Path) -> int:
        """Ask the attempt of `pid_file` to stop (its stage sees `StageCancelled`).
        Returns a handle of the worker running it, or 0 if it has not started it yet."""
        ...

    def kill(self, pid_file: Path, handle: int, why: str) -> None:
        """Stop that attempt's worker now: it ignored the cancel."""
        ...

    def close(self) -> None: ...

    @property
    def started(self) -> bool:
        """Whether workers exist (a no-op run starts none)."""
        ...


def discard_if_died(job: StageJob | ChainLink, future: Future[Any]) -> None:
    """Remove what the attempt of `job` half wrote when its worker died in the stage's
    code. A worker still alive when its run fails (lost with another's death: the pool kills
    it after these callbacks) is left alone: its attempt runs again, and a run removes
    the outputs before it begins."""
    if not future.cancelled() and future.exception() is None:
        return  # its worker ran it to the end (and removed its `.writing` file)
    pid_file = Path(job.pid_file)
    try:
        pid = writer(pid_file)
        if pid and not is_alive(pid):
            kill_group_of(pid_file)  # its command, which would write on
            for out in (o for o in job.outs if o not in job.persist):
                with contextlib.suppress(OSError):  # the stage's result says what matters
                    remove(Path(job.root) / out)
    finally:
        with contextlib.suppress(OSError):
            writing_path(pid_file).unlink(missing_ok=True)
