"""What a Dask task of a Dask pool does (`pivot workers --dask`): run one stage in a
fresh Python process on the Dask worker's machine, and watch it.

Why a fresh process per stage: a Dask worker lives on (a cluster is shared, started by
SLURM, PBS or Kubernetes, and is not ours to restart), and a module it imported stays
imported. A child process imports the pipeline anew for every stage, so no stage ever
runs on code older than its dispatch, and a code change needs nothing restarted. It
costs a process start per stage (docs/benchmarks.md). The child also isolates deaths:
a stage that kills its process is charged alone (`worker_died`), and the Dask worker
survives it.

The pool and the task talk through files in the attempt folder, on the file system
the project shares between hosts (every pool needs it anyway):
    ATTEMPT        the child's pid, written by the child (`run_stage`'s pid file)
    ATTEMPT.cancel soft cancel, written by the pool: the task signals the child (SIGUSR1)
    ATTEMPT.kill   hard cancel: the task kills the child's process group
    ATTEMPT.claim  taken by the task: Dask reruns a task whose worker died, and a rerun
                   finding the claim reports the attempt lost (the broker then runs a
                   new attempt) rather than run it twice
    ATTEMPT.alive  locked by the child for as long as it lives: the rerun reports the
                   attempt lost only once it can take that lock (the first try's process
                   is over), so two attempts of a stage are never alive at once
    lease          rewritten by the pool every second (pivot/runtime/lease.py):
                   unchanged for LEASE_S means the pool is gone, cut off or hung: the
                   child is killed, as a local worker exits when its pool dies
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from pivot.runtime.cancel import SIGNAL, marker_path
from pivot.runtime.command import kill_group_of
from pivot.runtime.job import StageJob, StageOutcome
from pivot.runtime.lease import LEASE_NAME, LEASE_S, read_lease

__all__ = ["ALIVE_SUFFIX", "CLAIM_SUFFIX", "KILL_SUFFIX", "child_main", "run_in_child"]

KILL_SUFFIX = ".kill"
CLAIM_SUFFIX = ".claim"
ALIVE_SUFFIX = ".alive"
OVER_WITHIN_S = 3600.0  # a first try cut off from the scheduler may still run its stage
POLL_S = 0.05


def run_in_child(job: StageJob) -> StageOutcome:
    """The Dask task: run `job` in a fresh `python -m pivot.runtime.dask_task` and return
    its outcome, or how the child ended."""
    pid_file = Path(job.pid_file)
    kill_marker = pid_file.with_name(pid_file.name + KILL_SUFFIX)
    try:  # Dask reruns a task whose worker died: an attempt runs at most once
        os.close(os.open(pid_file.with_name(pid_file.name + CLAIM_SUFFIX), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        if not _wait_until_over(pid_file.with_name(pid_file.name + ALIVE_SUFFIX)):
            return StageOutcome(
                "failed", "worker_died",
                f"the first try of this attempt still ran after {OVER_WITHIN_S:.0f} s on a lost Dask worker", 0.0,
            )
        return StageOutcome(
            "lost", "pool_lost", "the Dask worker of its first try was lost; it runs again as a new attempt", 0.0,
        )
    # The child exits if this Dask worker process dies (run_stage watches its "pool").
    job = replace(job, pool_pid=os.getpid())
    with tempfile.TemporaryFile() as result:
        child = subprocess.Popen(
            [sys.executable, "-P", "-m", "pivot.runtime.dask_task", str(result.fileno())],
            cwd=job.root, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(result.fileno(),), start_new_session=True,
        )
        assert child.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            child.stdin.write(pickle.dumps(job))
        child.stdin.close()
        why, lost = _watch(child, pid_file, kill_marker)
        kill_group_of(pid_file)  # a command stage's processes, if its process did not end them
        result.seek(0)
        data = result.read()
    if data:
        outcome: StageOutcome = pickle.loads(data)
        return outcome
    if lost:  # not the pool's decision: the attempt runs again (the broker decides where)
        return StageOutcome("lost", "pool_lost", why, 0.0)
    if why:
        return StageOutcome("cancelled", "cancelled", why, 0.0)
    code = child.returncode
    how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    return StageOutcome(
        "failed", "worker_died", f"its process (pid {child.pid} on {socket.gethostname()}) died ({how})", 0.0,
    )


def _watch(child: subprocess.Popen[bytes], pid_file: Path, kill: Path) -> tuple[str, bool]:
    """Wait for the child, passing cancels on. Returns why it was killed, if it was, and
    whether that was because its pool's lease expired (rather than a cancel)."""
    cancel = marker_path(pid_file)
    lease = pid_file.parent / LEASE_NAME
    seen, unchanged_since = read_lease(lease), time.monotonic()
    signalled = False
    while True:
        try:
            child.wait(POLL_S)
            return "", False
        except subprocess.TimeoutExpired:
            pass
        if kill.exists():
            _kill(child)
            return kill.read_text(errors="replace").strip() or "cancelled", False
        # Signalled only once it wrote its pid file (its handler is armed by then);
        # before that, the marker stops the stage on entry.
        if not signalled and cancel.exists() and pid_file.exists():
            signalled = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, SIGNAL)
        now_seen = read_lease(lease)
        if now_seen != seen:
            seen, unchanged_since = now_seen, time.monotonic()
        elif time.monotonic() - unchanged_since > LEASE_S:
            _kill(child)
            return f"its pool stopped renewing its lease for {LEASE_S:.0f} s (gone, or cut off)", True


def _wait_until_over(alive: Path) -> bool:
    """Whether the process holding `alive` locked (if any) ended within OVER_WITHIN_S."""
    import fcntl

    deadline = time.monotonic() + OVER_WITHIN_S
    with open(alive, "a+b") as f:
        while True:
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True  # released when the file closes
            except OSError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(POLL_S)


def _kill(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def child_main(result_fd: int) -> int:
    """The child: read the pickled job on stdin, run it, write the pickled outcome."""
    import fcntl

    from pivot.runtime.worker import run_stage

    job: StageJob = pickle.loads(sys.stdin.buffer.read())
    pid_file = Path(job.pid_file)
    alive = open(pid_file.with_name(pid_file.name + ALIVE_SUFFIX), "a+b")  # noqa: SIM115 - held until exit
    fcntl.lockf(alive, fcntl.LOCK_EX)
    if os.getppid() != job.pool_pid:
        return 70  # its Dask worker died before this process could start the stage
    outcome = run_stage(job)
    with os.fdopen(result_fd, "wb") as out:
        out.write(pickle.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(child_main(int(sys.argv[1])))
