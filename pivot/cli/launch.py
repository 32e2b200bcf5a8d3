"""Starting a live engine for `pivot up` / `pivot repro --watch`: the broker as a process
of its own (`python -P -m broker`), which starts and supervises the pool and the watcher.

In the foreground this process is the engine's first display: it follows the events and
stops the engine on q, Ctrl-C, SIGTERM or SIGHUP; the broker is told this process is its
owner, so the engine stops too if this process is killed outright. Detached (`-d`), it
returns once the first wave has started and the engine lives on until `pivot down`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pivot.cli.remote import RemoteEngine
from pivot.errors import InfraError, StackRunning, UserError
from pivot.faults import reached
from pivot.launch import python_cmd

if TYPE_CHECKING:
    from pivot.protocol.codec import Envelope
    from pivot.protocol.messages import Snapshot

__all__ = ["SpawnedEngine", "UpOptions", "start_live", "stop_broker"]

READY_WITHIN_S = 30.0  # the broker binds in well under a second; a loaded machine is slow
EXIT_WITHIN_S = 10.0


@dataclass(frozen=True)
class UpOptions:
    stages: tuple[str, ...]
    force: bool
    jobs: int | None
    keep_going: bool
    debounce_ms: int
    poll: bool
    restart: bool
    grace_s: float
    display: str
    detach: bool = False
    bind: str | None = None


class SpawnedEngine(RemoteEngine):
    """A broker process this command started, as a client sees it, plus that process."""

    def __init__(self, control: str, proc: subprocess.Popen[bytes], log: Path, grace_s: float, project: str) -> None:
        super().__init__(control, "up", grace_s=grace_s, project=project)
        self.proc = proc
        self.log = log

    def check(self) -> None:
        rc = self.proc.poll()
        if rc is not None:
            raise InfraError(
                f"the engine's broker process exited unexpectedly ({_exit_text(rc)}); its log "
                f"{self.log}:\n{_tail(self.log)}"
            )


def start_live(root: Path, opts: UpOptions) -> int:
    from pivot.launch.cpus import usable_cpus
    from pivot.pipeline.project import project_id
    from pivot.transport.rundir import RunDir, engine_info

    rundir = RunDir(root)
    try:
        rundir.lock()  # one engine per project; the broker takes the lock over
    except StackRunning:
        if engine_info(root).get("mode") == "repro":
            raise  # (it says what a `pivot repro` holding the lock is, and what to do)
        raise StackRunning(
            f"a Pivot engine is already running for {root}; `pivot attach` shows it, "
            "`pivot repro` asks it for a run, `pivot down` stops it"
        ) from None
    jobs = str(opts.jobs or usable_cpus())
    args = [
        "--root", str(root), "--pool-jobs", jobs, "--watch",
        "--debounce-ms", str(opts.debounce_ms), "--grace", str(opts.grace_s),
        *(["--poll"] if opts.poll else []), *(["--restart"] if opts.restart else []),
        *(["--keep-going"] if opts.keep_going else []),
        *(f"--scope={s}" for s in opts.stages),
        *(["--bind", opts.bind] if opts.bind else []),
    ]
    early: list[subprocess.Popen[bytes]] = []
    try:
        if not opts.detach and not opts.bind:
            # The pool (whose loader imports the pipeline) and the watcher are the slow
            # starters: this process starts them now, beside the broker, which adopts and
            # supervises them (restarts are its own children). Measured: docs/benchmarks.md.
            endpoints = rundir.ipc_endpoints()
            early.append(_spawn(root, "pool", "workers", "--root", str(root), "--work", endpoints.work,
                                "--name", "pool-1", "--jobs", jobs))
            early.append(_spawn(root, "watcher", "pivot.watch", "--root", str(root), "--changes", endpoints.changes,
                                "--parent", str(os.getpid()), *(["--poll"] if opts.poll else [])))
            args += ["--adopt-pool", str(early[0].pid), "--adopt-watcher", str(early[1].pid)]
            reached("starting")
        if not opts.detach:
            args += ["--owner", str(os.getpid())]
        lock_fd = rundir.hand_over()
        log = root / ".pivot" / "logs" / "broker.log"
        start = log.stat().st_size if log.exists() else 0
        ready_r, ready_w = os.pipe()
        try:
            proc = _spawn(root, "broker", "broker", *args, "--lock-fd", str(lock_fd),
                          "--ready-fd", str(ready_w), pass_fds=(lock_fd, ready_w))
        finally:
            os.close(ready_w)
    except BaseException:  # a Ctrl-C as it starts: no broker adopts them
        for child in early:
            _kill(child)
        raise
    try:
        _import_display()  # while the broker starts: it binds before we can join it
        control = _wait_ready(root, proc, log, start, ready_r)
        engine = SpawnedEngine(control, proc, log, opts.grace_s, project_id(root))
    except BaseException:
        stop_broker(proc, grace_s=0.0)
        for child in early:
            _kill(child)
        raise
    with engine:
        if opts.detach:
            rc = _detached(engine, opts)
            if rc != 0:
                engine.client.shutdown(timeout=EXIT_WITHIN_S, grace_s=0.0)
                stop_broker(proc, grace_s=0.0)
            return rc
        try:
            from pivot.cli.follow import run_live

            return run_live(engine, opts.stages, opts.force, opts.keep_going, opts.display)
        finally:
            stop_broker(proc, opts.grace_s)
            for child in early:  # stopped by the broker; reaped here (we are the parent)
                _kill(child)


def _import_display() -> None:
    """This process's own imports for following the engine (ZeroMQ, the client, the
    renderers), done while the engine's processes start rather than after."""
    import pivot.cli.follow
    import pivot.display.jsonl
    import pivot.transport.greet  # noqa: F401


def _spawn(root: Path, role: str, module: str, *args: str, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    """`python -P -m MODULE ARGS` in its own session, its output to .pivot/logs/ROLE.log."""
    logs = root / ".pivot" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    from pivot.launch.scratch import open_role_log

    with open_role_log(logs / f"{role}.log") as out:
        return subprocess.Popen(
            python_cmd(module, *args), cwd=root, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, pass_fds=pass_fds,
        )


def _kill(child: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of a child's group (nothing, normally), then reap it."""
    from pivot.launch.procs import kill_group

    kill_group(child.pid, 3.0)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(3.0)


def _wait_ready(root: Path, proc: subprocess.Popen[bytes], log: Path, start: int, ready: int) -> str:
    """The broker's control endpoint once it has bound: it writes a byte to the `ready`
    pipe then (having rewritten endpoints.json), or exits, which closes the pipe."""
    import select

    from pivot.transport.rundir import engine_info

    try:
        readable, _, _ = select.select([ready], [], [], READY_WITHIN_S)
        said = os.read(ready, 1) if readable else b""
    finally:
        os.close(ready)
    if said:
        info = engine_info(root)
        if info.get("pid") == proc.pid and isinstance(info.get("control"), str):
            return str(info["control"])
        raise InfraError(f"the engine's broker started but {root / '.pivot' / 'run'} does not name it; see {log}")
    if not readable:
        raise InfraError(f"the engine's broker did not start within {READY_WITHIN_S:.0f} s; see {log}")
    try:
        rc = proc.wait(READY_WITHIN_S)  # it closed the pipe without a word: it is exiting
    except subprocess.TimeoutExpired:
        raise InfraError(f"the engine's broker did not start and did not exit; see {log}") from None
    said_text = _since(log, start).strip()
    message = said_text.splitlines()[-1].removeprefix("error: ") if said_text else _exit_text(rc)
    if rc == 2:
        raise UserError(message)
    raise InfraError(f"the engine's broker did not start ({_exit_text(rc)}): {message}; see {log}")


def _detached(engine: SpawnedEngine, opts: UpOptions) -> int:
    """Ask for the first wave, and return once it started (0) or the pipeline is invalid
    (2, with the error)."""
    from pivot.protocol.codec import Envelope
    from pivot.protocol.messages import PipelineInvalid, RunReply, RunRequest, Snapshot, WaveStarted

    client = engine.client
    joined = client.join()
    client.send(RunRequest(list(opts.stages), opts.force, opts.keep_going))
    seen = joined.wave
    items: Iterator[Envelope | Snapshot | None] = itertools.chain([joined], client.events(poll_s=0.1))
    for item in items:  # the pipeline may have failed to load before we joined
        reply = client.take_reply(RunReply)
        if isinstance(reply, RunReply) and not reply.accepted:
            print(f"error: {reply.message}", file=sys.stderr)
            return 2
        error = None
        if isinstance(item, Envelope) and isinstance(item.msg, PipelineInvalid):
            error = item.msg
        elif isinstance(item, Snapshot) and item.pipeline_error:
            error = item.pipeline_error
        if error is not None:
            print(f"error: {error.message}", file=sys.stderr)
            if error.detail:
                print(error.detail, file=sys.stderr)
            return 2
        started = (isinstance(item, Envelope) and isinstance(item.msg, WaveStarted)) or (
            isinstance(item, Snapshot) and item.wave > seen
        )
        if started:
            info = engine.info
            print(
                f"pivot: the engine runs in the background (broker pid {info.pid}, "
                f"{info.control}); `pivot attach` shows it, `pivot ps` lists its processes, "
                "`pivot down` stops it"
            )
            return 0
        engine.check()
    return 1  # never reached: events() only ends by raising


def stop_broker(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """Stop the broker process this command started: SIGTERM (a graceful stop, like a
    shutdown request; harmless when one was made), a bounded wait for it to stop its
    engine and exit, then SIGKILL to whatever is left of its group."""
    from pivot.launch.limits import HARD_KILL_S
    from pivot.launch.procs import kill_group

    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s + HARD_KILL_S + EXIT_WITHIN_S)
    kill_group(proc.pid, 3.0)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(3.0)


def _since(log: Path, start: int) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _exit_text(rc: int) -> str:
    from pivot.launch.procs import describe_exit

    return describe_exit(rc, "it")
