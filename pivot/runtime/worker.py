"""What runs inside a worker process: import the pipeline, run one stage, record it.

Nothing here touches sockets. What the stage prints goes to the attempt's files as it
prints it (pivot/runtime/capture.py); its pool reads them, keeps its log and streams
the lines to the displays.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
import signal
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pivot.errors import (
    MAX_DETAIL_CHARS,
    MAX_REASON_CHARS,
    PipelineError,
    PivotError,
    clip,
    describe_os_error,
)
from pivot.faults import reached
from pivot.pipeline.stage import StageDecl
from pivot.runtime.cancel import CANCEL_SUFFIX, StageCancelled, arm, cancellable
from pivot.runtime.capture import captured, output_file, write_note
from pivot.runtime.claim import JobClaims
from pivot.runtime.command import CommandFailed, kill_running_group, run_command
from pivot.runtime.freshcode import differing
from pivot.runtime.job import (
    RESUME,
    ChainLink,
    LinkBegan,
    LinkDecided,
    StageJob,
    StageOutcome,
    Verdict,
    ended_well,
    paused_after,
    verdict,
)
from pivot.runtime.lease import LEASE_NAME, LEASE_S, read_lease
from pivot.runtime.loader import import_pipeline
from pivot.runtime.usertb import user_traceback
from pivot.state.cache import remove_dead_leftovers
from pivot.state.hashing import folder_stats
from pivot.state.lock import CHANGED_WHILE_RUNNING, StageLock, write_lock
from pivot.state.outputs import ProjectState, commit, preserve, remove, settle
from pivot.state.plan import prepare
from pivot.state.reasons import ReasonCode
from pivot.state.stagelogs import keep_log, quiet_head, running_log_parts, stage_log_file

__all__ = ["run_link", "run_stage", "serve"]

# A failure's reason (one line) and traceback are bounded (MAX_REASON_CHARS,
# MAX_DETAIL_CHARS): an exception whose message is megabytes long made the result too
# large for the transport, and the stage looked lost.


_STATE: dict[str, ProjectState] = {}


_Stats = tuple[int, int, int] | dict[str, tuple[int, int, int]]


def _dep_stats(root: str, deps: dict[str, str]) -> dict[str, _Stats]:
    """(inode, size, mtime) of each file dependency as the stage's code starts, and of
    everything in each folder dependency (`folder_stats`)."""
    found: dict[str, _Stats] = {}
    for dep in deps:
        path = os.path.join(root, dep)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            found[dep] = (st.st_ino, st.st_size, st.st_mtime_ns)
        elif stat.S_ISDIR(st.st_mode):
            leftovers: list[str] = []
            found[dep] = folder_stats(path, leftovers)
            if leftovers:  # a killed checkout's partial copy: the stage would read it
                remove_dead_leftovers(leftovers)
                found[dep] = folder_stats(path)
    return found


def _changed_deps(
    state: ProjectState, root: Path, before: dict[str, str], started: dict[str, _Stats],
) -> list[str]:
    """Dependencies that are not what the stage was decided on, or were written while it
    ran (`started`: their stat as its code began), even if their content is back to
    what it was: it (or someone) changed what it reads while it ran, and what it read is
    not known. A folder's files, and its folders (a file made and removed again), are
    compared one by one: a file of it changed and put back left the output of the
    version between "up to date", and in the run cache under the folder as decided.
    Records nothing: the engine's own check sees the change too."""
    changed = []
    top = os.fspath(root)
    for dep, digest in sorted(before.items()):
        path = os.path.join(top, dep)
        try:
            st = os.stat(path)
        except OSError:
            continue
        was = started.get(dep)
        if stat.S_ISREG(st.st_mode):
            if (was is not None and was != (st.st_ino, st.st_size, st.st_mtime_ns)) or not state.hashes.still(
                path, digest, st
            ):
                changed.append(dep)
        elif stat.S_ISDIR(st.st_mode) and (
            (was is not None and was != folder_stats(path)) or state.hashes.hash_path(path) != digest
        ):
            changed.append(dep)
    return changed


def _discard(root: Path, outs: list[str]) -> None:
    """Remove what a run that did not succeed left of its outputs."""
    for out in outs:
        with contextlib.suppress(OSError):  # its own error says the rest
            remove(root / out)


def _state(root: Path) -> ProjectState:
    """One set of stores per worker process (and root), reused across stages."""
    key = str(root)
    if key not in _STATE:
        _STATE[key] = ProjectState.open(root)
    return _STATE[key]


_ROOTS: dict[str, Path] = {}  # a job's root (a string) as a path, made once per worker


def _root_of(root: str) -> Path:
    path = _ROOTS.get(root)
    if path is None:
        path = _ROOTS[root] = Path(root)
    return path


POOL_CHECK_S = 0.2
STOPPED_POOL_S = 3.0  # the broker's liveness window: by then it runs the stage elsewhere
_watched: list[int] = []


def watch_pool(pool_pid: int, lease: Path | None = None) -> None:
    """Fencing from inside: a stage must not outlive its pool. A pool killed outright
    (SIGKILL) leaves its workers running; one stopped (SIGSTOP) or hung (its loop stuck
    in native code holding the GIL, so that no thread of it runs: its `lease` file, which
    its loop rewrites every second, stays as it was while the process runs) is given up
    by the broker, which runs its stages elsewhere. Either way this worker exits, so two
    attempts of a stage never run side by side. One watching thread per worker process."""
    if _watched == [pool_pid]:
        return
    _watched[:] = [pool_pid]
    import threading

    from pivot.launch.procs import is_alive, is_stopped

    # The worker's own standard error: while a stage runs, descriptor 2 is its capture.
    try:
        err = os.dup(2)
    except OSError:
        err = -1

    def fence(why: str) -> None:
        kill_running_group()  # a command stage's processes go with the worker
        with contextlib.suppress(OSError):
            os.write(err, f"pivot worker {os.getpid()}: its pool (pid {pool_pid}) {why}: exiting\n".encode())
        os._exit(70)

    def watch() -> None:
        # The cancel signal is the stage's (pivot/runtime/cancel.py): a stage that
        # blocks it, or sits in native code, must not have it run here instead.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        stopped_since: float | None = None
        seen = read_lease(lease)
        unrenewed = 0.0  # time the pool ran (not stopped) without renewing its lease
        last = time.monotonic()
        while _watched == [pool_pid]:
            time.sleep(POOL_CHECK_S)
            now = time.monotonic()
            step, last = now - last, now
            if not is_alive(pool_pid):
                fence("is gone")
            if is_stopped(pool_pid):
                stopped_since = stopped_since or now
                if now - stopped_since > STOPPED_POOL_S:
                    fence(f"has been stopped for {STOPPED_POOL_S:.0f} s")
                continue
            stopped_since = None
            renewed = read_lease(lease)
            if renewed != seen:
                seen, unrenewed = renewed, 0.0
            elif lease is not None:
                unrenewed += step
                if unrenewed > LEASE_S:
                    fence(f"runs but has not renewed its lease for {LEASE_S:.0f} s (hung)")

    threading.Thread(target=watch, name="pool-watch", daemon=True).start()


def _call(decl: StageDecl, params: dict[str, Any], root: Path, pid_file: str | None) -> None:
    """The stage's code: its function, or its command (pivot/runtime/command.py)."""
    if decl.cmd is None:
        decl.func(**params)
    else:
        # Warm only in a pool's worker: `pivot run --foreground` is the terminal's process.
        run_command(decl.name, decl.cmd, params, root / decl.wdir, Path(pid_file) if pid_file else None,
                    warm=decl.warm and pid_file is not None,
                    root=root)


def _tidy(root: str, stage: str, pid_file: str) -> bool:
    """A pool's attempt that ran and printed nothing: its files, and the stage's earlier
    log (its pool keeps this run's, one head line: `StageOutcome.quiet_head`), removed
    here, in parallel with the other stages rather than in the pool's one loop. False
    if a file could not be removed: its pool then does it all."""
    for path in (stage_log_file(root, stage), *running_log_parts(root, stage), output_file(pid_file, "stdout"),
                 output_file(pid_file, "stderr"), pid_file):
        try:
            os.unlink(path)  # os, not pathlib: six a stage, most of them absent
        except FileNotFoundError:
            pass
        except OSError:
            return False
    return True


def _outdated(files: list[str], when: str) -> str:
    shown = ", ".join(files[:3]) + (" ..." if len(files) > 3 else "")
    return (f"{when}: its code changed after the pipeline was loaded ({shown}); it runs on the new "
            "code once that is loaded (`pivot up` loads it at once; else run it again)")


def run_stage(job: StageJob) -> StageOutcome:
    """Run the stage described by `job` (a pool's, or `pivot run --foreground`'s) and
    record it on success: the outputs are in the content cache, the lock names them and
    the run cache maps this run's inputs to them."""
    root = _root_of(job.root)
    name = job.stage
    if job.pool_pid and _watched != [job.pool_pid]:
        watch_pool(job.pool_pid, Path(job.pid_file).parent / LEASE_NAME if job.pid_file else None)
    # A string: every stage passes it to os calls (pathlib was a quarter of a worker's
    # own Python time, sampled).
    pid_file = job.pid_file or None
    if pid_file is not None:
        # The pool learns which stage a dying worker was running, and whom to signal to
        # cancel it.
        arm()
        fd = os.open(pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
        if os.path.exists(pid_file + CANCEL_SUFFIX):  # cancelled while it waited in this worker
            return StageOutcome("cancelled", "cancelled", "cancelled before it began", 0.0)
    notes: list[str] = []
    started = time.perf_counter()
    executed = False  # the stage's own code ran: its output is kept for `pivot logs`
    quiet = False  # ... and printed nothing, nor did Pivot note anything on it

    def outcome(
        status: str, code: str, reason: str, error: str | None = None, details: dict[str, Any] | None = None
    ) -> StageOutcome:
        reason = clip(reason, MAX_REASON_CHARS)
        error = None if error is None else clip(error, MAX_DETAIL_CHARS)
        tidied = False
        head = b""
        rows: list[tuple[str, int, int, int, str, int]] = []
        if executed:
            if pid_file is None:  # else its pool keeps the log, with what it printed
                keep_log(root, name, status, reason, error,
                         state.runs.log_path(job.run_key) if job.run_key else None)
            elif status == "ran":
                # Its pool stores them, with other stages' (a transaction a stage, here,
                # was a tenth of a small stage).
                rows = state.hashes.take_held()
                if quiet and _tidy(job.root, name, pid_file):
                    tidied, head = True, quiet_head(name, reason)
            if status != "ran":
                settle(state, outs)  # what it deleted or half wrote starts no wave
        return StageOutcome(
            status, code, reason, time.perf_counter() - started, error,
            details if details is not None else (job.details if status == "ran" else {}),
            notes, tidied, head, rows,
        )

    try:
        import_pipeline(root)
    except PipelineError as exc:
        return outcome("failed", "failed", str(exc), exc.detail)
    from pivot.pipeline.stage import registered

    decl = registered().get(name)
    if decl is None:
        return outcome(
            "failed", "failed", f"stage {name!r} is no longer defined in pipeline.py"
        )
    # The code this process imported must be what the fingerprint was taken from: a save
    # after the loader read it would otherwise run (and record, under that fingerprint,
    # in the lock and the run cache) another version.
    # A command's own process reads the files as they are when it imports them.
    on_disk = decl.cmd is not None
    moved, late = differing(job.root, job.code_sources, on_disk=on_disk) if job.code_sources else ([], {})
    if moved:
        return outcome("cancelled", ReasonCode.CODE_OUTDATED, _outdated(moved, "not run"),
                       details={"paths": moved})
    state = _state(root)
    outs: list[str] = list(job.outs)
    # What a failed run leaves of its outputs goes; persistent ones (dvc.yaml's persist:
    # a stage that appends or resumes) stay, before it runs and after.
    transient = [out for out in outs if out not in job.persist]
    # Nothing is lost: what is about to be deleted goes to the cache first. Then the old
    # outputs go, so a stage that does not write one cannot pass on the previous file.
    # The previous lock stays until this run succeeds: it still describes the last good
    # run (whose outputs `pivot checkout` can bring back), never this one.
    noted = False
    try:
        for saved in preserve(state, outs, job.recorded_outs, job.uncached):
            if pid_file is not None:
                write_note(pid_file, saved.note())  # before the lines the stage prints
                noted = True
            else:
                notes.append(saved.note())
    except (PivotError, OSError) as exc:
        msg = f"not run: could not save its current outputs to the cache first: {exc}"
        return outcome("failed", "failed", msg)
    try:
        for out in transient:
            remove(os.path.join(job.root, out))  # (a string: every stage run)
    except OSError as exc:  # a read-only mount, a permission: said, the stage not run
        return outcome("failed", "failed", f"not run: {describe_os_error(exc, root)}")
    executed = True
    started_deps = _dep_stats(job.root, job.dep_hashes)
    try:
        if pid_file is None:  # `pivot run --foreground`: the terminal is the stage's
            _call(decl, job.params, root, None)
        else:
            with captured(pid_file) as printed, cancellable(pid_file):
                _call(decl, job.params, root, pid_file)
            # A command's processes are its pool's to end (they may outlive it).
            quiet = not (printed.anything or noted) and decl.cmd is None
    except StageCancelled:
        _discard(root, transient)  # partial: nothing of this run is kept
        return outcome("cancelled", "cancelled", "cancelled while running")
    except CommandFailed as exc:  # said in one line: no traceback of ours
        _discard(root, transient)
        return outcome("failed", "failed", str(exc))
    except BaseException as exc:
        # What a failed run wrote is partial (and may fill the disk): it goes. The last
        # good outputs stay in the cache (`pivot checkout` brings them back).
        _discard(root, transient)
        why = describe_os_error(exc, root) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        return outcome("failed", "failed", why, user_traceback(exc))
    moved = differing(job.root, late, on_disk=on_disk)[0] if late else []
    if moved:  # imported by the stage as it ran, saved since the load: nothing is kept
        _discard(root, transient)
        return outcome("cancelled", ReasonCode.CODE_OUTDATED, _outdated(moved, "not kept"),
                       details={"paths": moved})
    not_folders = [out for out in outs if out.endswith("/") and (root / out.rstrip("/")).is_file()]
    if not_folders:
        # Stored as a file, it would never match its declaration: stale forever.
        _discard(root, transient)
        out = not_folders[0]
        return outcome(
            "failed", "failed",
            f"declared output {out} is a folder (its trailing /) but the stage wrote a file there: "
            f"write a folder, or declare {out.rstrip('/')!r} without the /",
            details={"paths": not_folders},
        )
    # The outputs' state-cache rows are written with the quiet run's note, in one
    # transaction (else at the block's end): each costs the database's locks and pages.
    with state.hashes.batched():
        try:
            stored = commit(state, outs, job.uncached)
        except (PivotError, OSError) as exc:
            _discard(root, transient)
            why = describe_os_error(exc, root / ".pivot" / "cache") if isinstance(exc, OSError) else str(exc)
            return outcome("failed", "failed", f"could not store its outputs in the cache: {why}")
        reached("committed")
        missing = [out for out, digest in stored.items() if digest is None]
        if missing:
            _discard(root, transient)  # what it did write is half a run's: it goes too
            msg = f"declared output not produced: {', '.join(missing)}"
            return outcome("failed", "out_not_produced", msg, details={"paths": missing})
        out_hashes = {out: digest for out, digest in stored.items() if digest is not None}
        changed = _changed_deps(state, root, job.dep_hashes, started_deps)
        # A dependency written while it ran: which version it read is not known, so its
        # lock matches none (the stage is stale until it runs again) and the run cache
        # does not take this run under the inputs it was decided on.
        dep_hashes = {**job.dep_hashes, **dict.fromkeys(changed, CHANGED_WHILE_RUNNING)} if changed else job.dep_hashes
        lock_file = write_lock(
            root,
            StageLock(name, job.fingerprint, job.params, dep_hashes, out_hashes, job.code_parts),
        )
        reached("locked")
        if job.run_key and not changed:
            state.runs.record(job.run_key, name, out_hashes, lock_file)
            reached("run-cached")
        details = {**job.details, "changed_deps": changed} if changed else None
        return outcome("ran", job.reason_code, job.reason, details=details)


def run_link(link: ChainLink, well: str, began: Callable[[LinkBegan], None]) -> StageOutcome | LinkDecided:
    """Decide the chain link and run it if it must run, once its upstream job ended
    well here (`well`: the pid file of the last job that did). `began` is told why,
    before the stage runs. What the check hashed goes with the outcome, as a run's
    own rows do."""
    if link.upstream != well:
        return LinkDecided()  # its pool gave it back when the upstream's result came in
    if os.path.exists(link.pid_file + CANCEL_SUFFIX):  # cancelled before it began
        return StageOutcome("cancelled", "cancelled", "cancelled before it began", 0.0)
    root = _root_of(link.root)
    state = _state(root)
    try:
        with state.hashes.batched():
            prepared = prepare(state, link.spec, force=link.force, producers={link.spec.name: link.producers})
            rows = state.hashes.take_held()
    except Exception as exc:  # (its pool says it: "could not check the stage")
        return LinkDecided(error=str(exc) or type(exc).__name__)
    if verdict(prepared) is not Verdict.RUN:
        return LinkDecided(prepared, rows=rows)
    job = StageJob.for_stage(root, link.spec, prepared, pid_file=link.pid_file, pool_pid=link.pool_pid,
                             linger=link.linger_s)
    reason = prepared.reason
    began(LinkBegan(str(reason.code), reason.message, reason.details, prepared.run_key))
    outcome = run_stage(job)
    outcome.rows[:0] = rows  # (its own list)
    return outcome


def serve(conn: Any, idle_s: float, warm: str | None = None, claims: str | None = None) -> None:
    """A worker process's life (workers/processes.py): run each job its pool sends, in
    order, send back ``(True, outcome)`` or ``(False, exception)``; exit when the pool
    closes its end or after `idle_s` without a job. With `warm` (a project root), the
    pipeline is imported first: a worker started for code being loaded (`prepare`).
    Its failure is said by the first stage's own import.

    After a stage that failed, the next one (its pool may have sent it already) waits for
    RESUME: the broker may stop it (fail fast), and its pool says go on only once the
    broker has answered that failure. A chain link (`run_link`) goes on only after the
    job it follows ended well here: else it is answered as given back, unrun.

    Each job comes numbered; with `claims` (pivot/runtime/claim.py), one its pool took
    back before it began is dropped unanswered: it runs on another worker."""
    claimed = None
    if claims is not None:
        try:
            claimed = JobClaims(claims)
        except OSError as exc:
            # Its pool may take back a job it queued here: without the file this worker
            # could run one that another worker runs too. It goes; its pool starts another.
            print(f"pivot worker: cannot open its claims file {claims}: {exc}", file=sys.stderr)
            return
    if warm is not None:
        with contextlib.suppress(PipelineError):
            import_pipeline(Path(warm))
    held: collections.deque[tuple[int, StageJob | ChainLink]] = collections.deque()
    paused = False
    well = ""  # the pid file of the last job that ended well here (a chain link's condition)

    def began(note: LinkBegan) -> None:
        conn.send_bytes(pickle.dumps(note, pickle.HIGHEST_PROTOCOL))

    while True:
        if held and not paused:
            number, job = held.popleft()
        else:
            if not conn.poll(None if held else idle_s):
                return
            try:
                got = conn.recv()
            except EOFError:
                return
            if got is RESUME:
                paused = False
                continue
            if paused:
                held.append(got)
                continue
            number, job = got
        if claimed is not None and not claimed.begin(number):
            continue
        try:
            result = run_link(job, well, began) if isinstance(job, ChainLink) else run_stage(job)
            reply: tuple[bool, Any] = (True, result)
        except BaseException as exc:  # Pivot's own failure around the stage: the pool says it
            reply = (False, exc)
        well = job.pid_file if ended_well(*reply) else ""
        paused = paused_after(*reply)
        try:
            conn.send_bytes(pickle.dumps(reply, pickle.HIGHEST_PROTOCOL))
        except Exception as exc:  # an exception that does not pickle
            conn.send((False, RuntimeError(f"{type(reply[1]).__name__}: {reply[1]} ({exc})")))
        if job.linger_s and not paused and not held:
            # Awake for the next job a while (its pool's word: a core is free for it).
            until = time.perf_counter() + job.linger_s
            while time.perf_counter() < until and not conn.poll(0):
                pass
