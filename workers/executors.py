"""Where a pool's stages run: the executor interface, and loky's implementation (the
Dask one is `workers/dask_pool.py`).

The pool decides; an executor only runs `StageJob`s and hands back futures of
`StageOutcome`s. `replace()` stops every worker at once (new code must not run on
workers that imported the old one); the next `submit` starts fresh ones, and
`generation` tells futures of the old workers from those of the new. `cancel` and
`kill` stop one attempt, named by its pid file (the worker writes its pid there).

A worker that dies in a stage's code (the pool's hard kill, the OOM killer, a segfault)
cannot remove what the stage half wrote, as it does when a stage fails or is cancelled:
`LokyWorkers` does, when that attempt's run fails, once its worker is dead
(pivot/runtime/cancel.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from pivot.launch.procs import is_alive
from pivot.runtime.cancel import request_cancel, writer, writing_path
from pivot.runtime.command import kill_group_of
from pivot.runtime.job import StageJob, StageOutcome
from pivot.state.outputs import remove

__all__ = ["Executor", "LokyWorkers"]


class Executor(Protocol):
    generation: int  # bumped by every replace()
    # Its workers run on other machines: attempt files go on the project's shared file
    # system, and a dead worker is reported by the executor (the pool cannot see it).
    remote: bool

    def configure(self, preload: tuple[str, ...], preload_key: str) -> None:
        """The third-party modules workers should have imported (a hint)."""

    def submit(self, job: StageJob) -> Future[StageOutcome]: ...

    def replace(self) -> None: ...

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


CLOSE_WAIT_S = 2.0  # a pool's exit waits this long at most for loky's thread


class LokyWorkers:
    """Stages on this pool's loky worker processes: kept warm between stages (idle for
    an hour before loky reaps one), forked from a forkserver that preloaded the
    pipeline's third-party imports (pivot/runtime/preload.py), started only when a stage
    must run."""

    remote = False

    def __init__(self, jobs: int) -> None:
        self.jobs = max(1, jobs)
        self.generation = 0
        self._loky: Any = None
        self._preload: tuple[str, ...] = ()
        self._preload_key = ""

    def configure(self, preload: tuple[str, ...], preload_key: str) -> None:
        self._preload, self._preload_key = preload, preload_key

    @property
    def started(self) -> bool:
        return self._loky is not None

    def submit(self, job: StageJob) -> Future[StageOutcome]:
        from concurrent.futures import BrokenExecutor

        from pivot.runtime.worker import run_stage

        try:
            future: Future[StageOutcome] = self._executor().submit(run_stage, job)
        except BrokenExecutor:
            # A worker died while idle (killed, OOM): loky refuses new work from then on.
            # Fresh workers take it; the futures of the broken ones fail on their own.
            self.replace()
            future = self._executor().submit(run_stage, job)
        if job.pid_file:
            # Added before the pool's own callback, so it runs first: the outputs are
            # clean before the pool reports the attempt (and the broker runs it again).
            future.add_done_callback(lambda f: _discard_if_died(job, f))
        return future

    def _executor(self) -> Any:
        if self._loky is None:
            from loky.process_executor import ProcessPoolExecutor

            from pivot.runtime.preload import worker_context

            context = worker_context(self._preload, self._preload_key)
            self._loky = ProcessPoolExecutor(max_workers=self.jobs, timeout=3600, context=context)
        return self._loky

    def replace(self) -> None:
        """Kill every worker now; loky fails their futures (BrokenExecutor)."""
        if self._loky is not None:
            self._loky.shutdown(wait=False, kill_workers=True)
            self._loky = None
            self.generation += 1

    def cancel(self, pid_file: Path) -> int:
        return request_cancel(pid_file)

    def kill(self, pid_file: Path, handle: int, why: str) -> None:
        # Stuck in native code: its worker goes (the stages beside it are lost and run
        # again), and the attempt is reported cancelled, not a death.
        with contextlib.suppress(ProcessLookupError):
            os.kill(handle, signal.SIGKILL)
        kill_group_of(pid_file)  # a command stage's processes go with its worker

    def close(self) -> None:
        """Kill the workers, then give loky's own thread up to CLOSE_WAIT_S to finish with
        them: it closes its queues, which tells the resource tracker their semaphores are
        gone (without it the tracker, ending with the pool, warned of "leaked semaphore
        objects" in pool.log after every cold run)."""
        thread = getattr(self._loky, "_executor_manager_thread", None)  # (None after shutdown)
        self.replace()
        if thread is not None:
            thread.join(CLOSE_WAIT_S)


def _discard_if_died(job: StageJob, future: Future[StageOutcome]) -> None:
    """Remove what the attempt of `job` half wrote when its worker died in the stage's
    code. A worker still alive when its run fails (lost with another's death: loky kills
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
