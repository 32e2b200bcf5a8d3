"""A pool whose stages run as tasks on a Dask distributed cluster (`pivot workers
--dask tcp://SCHEDULER:8786`): the cluster users already have (SLURM, PBS, Kubernetes
through dask-jobqueue or dask-kubernetes), without Pivot managing machines.

The pool stays what it is (it says hello to the broker, decides skip-or-run, reports
results); only where a stale stage runs changes. Each stage is one Dask task, which runs
the stage in a fresh Python process on the Dask worker's machine
(`pivot/runtime/dask_task.py` says why: no stage on old code, no restart of a shared
cluster). Slots: the cluster's threads when the pool starts (or `-j`).

What is lost and what failed, as with local workers:
- the stage's own process died: `failed` / `worker_died`, charged (the broker tries a
  stage three times);
- the Dask worker running it was lost (the future errs with the worker gone, or the
  scheduler gave the task up as `KilledWorker`): `lost`, and the broker runs it again.
  Dask itself also reruns a task whose worker died; a rerun of an attempt that already
  started is refused (an exclusive claim file), so an attempt runs at most once.
Cancel and fencing go through files in the attempt folder on the shared file system.
Requires `pip install 'pivot[dask]'` (Dask's `distributed`) here and on the workers,
which also need Pivot and the project's Python dependencies.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from pivot.errors import UserError
from pivot.runtime.cancel import marker_path
from pivot.runtime.dask_task import KILL_SUFFIX
from pivot.runtime.job import ChainLink, LinkBegan, StageJob, StageOutcome

__all__ = ["DaskWorkers"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
FETCH_TIMEOUT_S = 60.0


class DaskWorkers:
    remote = True
    prefetch = 1  # the scheduler queues

    def __init__(self, scheduler: str, timeout: float | None = None) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise UserError(
                "`pivot workers --dask` needs Dask's distributed package: pip install 'pivot[dask]'"
            ) from None
        self.scheduler = scheduler
        try:
            self.client: Any = Client(scheduler, timeout=timeout or CONNECT_TIMEOUT_S, set_as_default=False)
        except OSError as exc:
            raise UserError(f"no Dask scheduler answered at {scheduler}: {exc}") from None
        self.generation = 0
        self._lock = threading.Lock()
        self._running: dict[str, tuple[int, Any]] = {}  # pid file -> (generation, Dask future)

    def slots(self) -> int:
        """The cluster's threads now (at least 1): how many stages it runs at once."""
        return max(1, sum(self.client.nthreads().values()))

    def configure(self, preload: tuple[str, ...], preload_key: str) -> None:
        pass  # every stage starts a fresh process: nothing to preload

    @property
    def started(self) -> bool:
        return True

    def submit(self, job: StageJob, on_start: Callable[[], None] | None = None) -> Future[StageOutcome]:
        from pivot.runtime.dask_task import run_in_child

        ours: Future[StageOutcome] = Future()
        ours.set_running_or_notify_cancel()
        # pure=False: the same stage dispatched again is a new task, never a cached result.
        task = self.client.submit(run_in_child, job, key=f"pivot-{Path(job.pid_file).name}", pure=False)
        with self._lock:
            self._running[job.pid_file] = (self.generation, task)

        def done(finished: Any) -> None:  # on the client's own thread
            with self._lock:
                self._running.pop(job.pid_file, None)
            ours.set_result(_outcome(finished, job))

        task.add_done_callback(done)
        if on_start is not None:  # (Dask queues it: when it starts is not seen from here)
            on_start()
        return ours

    def rebalance(self, now: float) -> float | None:
        return None  # the scheduler places each stage when a worker is free

    def submit_after(self, link: ChainLink, on_began: Callable[[LinkBegan], None]) -> Future[Any] | None:
        return None  # its scheduler places each stage: the pool decides them all

    def waitables(self) -> list[int]:
        return []  # its futures are set on the Dask client's thread

    def collect(self, ready: set[int]) -> None:
        pass

    def start(self, count: int, root: Path | None = None) -> None:
        pass  # the cluster's workers are running

    def resume(self) -> None:
        pass  # (a task starts when the scheduler says)

    def prepare(self, root: Path) -> None:
        pass  # a task's process starts with the stage (pivot/runtime/dask_task.py)

    def replace(self, adopt: bool = False, keep: frozenset[str] = frozenset()) -> None:
        """Stop every stage in flight but those of `keep` (their processes are killed;
        they report cancelled). Each stage has a process of its own: a kept one runs
        nothing else, and later stages start fresh processes anyway."""
        with self._lock:
            running = [p for p in self._running if p not in keep]
            self.generation += 1
        for pid_file in running:
            self.kill(Path(pid_file), 0, "cancelled: its pool replaced its workers")

    def cancel(self, pid_file: Path) -> int:
        marker_path(pid_file).write_text("cancel\n")
        return 1 if pid_file.exists() else 0

    def kill(self, pid_file: Path, handle: int, why: str) -> None:
        pid_file.with_name(pid_file.name + KILL_SUFFIX).write_text(why + "\n")

    def close(self) -> None:
        self.replace()
        with contextlib.suppress(Exception):
            self.client.close(timeout=2)


def _outcome(task: Any, job: StageJob) -> StageOutcome:
    """The stage's outcome; a failure when the task raised (Pivot missing or broken on
    that worker, or Dask gave it up after its workers died running it: `KilledWorker`);
    `lost` when it did not run to its end (cancelled, the scheduler gone)."""
    try:
        # Called on a thread of the client's (not its event loop): the result may still
        # have to travel from the worker.
        if task.status == "finished":
            outcome: StageOutcome = task.result(timeout=FETCH_TIMEOUT_S)
            return outcome
        if task.status == "error":
            error = task.exception(timeout=FETCH_TIMEOUT_S)
            if type(error).__name__ == "KilledWorker":
                return StageOutcome("failed", "worker_died", f"the Dask workers running it died ({error})", 0.0)
            return StageOutcome(
                "failed", "failed",
                f"Pivot could not run the stage on its Dask worker: {type(error).__name__}: {error}", 0.0,
            )
        why = f"the task was {task.status}"
    except Exception as exc:  # the client lost the scheduler meanwhile
        why = f"{type(exc).__name__}: {exc}"
    log.warning("stage %s: its Dask task did not finish (%s)", job.stage, why)
    return StageOutcome("lost", "pool_lost", f"its Dask task did not finish ({why}); it runs again", 0.0)
