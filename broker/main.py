"""The broker as a process of its own: `python -P -m broker` (and `pivot broker`).

It binds the control socket where it is told (default: ipc under `.pivot/run/`; a
`tcp://HOST:PORT` for compose and other hosts) and its other sockets on the ports it is
told or free ones, announced at hello. It takes the project's engine lock first (one
engine per project) and writes `.pivot/run/endpoints.json` for local commands.
SIGTERM or SIGINT stops the engine gracefully (running stages get `--grace` seconds);
a second one cancels them at once. With `--pool-jobs` / `--watch` it also starts and
supervises a pool and a watcher (what `pivot up` asks for), and with `--owner PID` it
stops the engine when that process is gone.

Exit codes: 0 stopped, 2 a usage problem (the message says what and how to fix it),
1 anything else (logged with its traceback in .pivot/logs/broker.jsonl).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pivot.errors import PivotError, UserError
from pivot.launch.stderrlog import log_to_stderr
from pivot.transport.address import is_loopback, normalize, with_port
from pivot.transport.rundir import Endpoints, RunDir

if TYPE_CHECKING:
    from broker.local import LocalRoles
    from broker.service import BrokerService, Security

__all__ = ["main", "parse_args"]

log = logging.getLogger("broker")

DEFAULT_GRACE_S = 5.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m broker", description="The Pivot broker (coordinator).")
    p.add_argument("--root", type=Path, default=None, help="the project folder [found from the cwd]")
    p.add_argument("--bind", default=None,
                   help="control endpoint, tcp://HOST:PORT or ipc://PATH [ipc under .pivot/run/]")
    for link in ("work", "events", "changes"):
        p.add_argument(f"--{link}", default=None,
                       help=f"{link} endpoint [same host as --bind, a free port]")
    p.add_argument("--keys", type=Path, default=None,
                   help="CURVE keys folder [PIVOT_KEYS_DIR, else ~/.config/pivot/keys]")
    p.add_argument("--debounce-ms", type=int, default=20)
    p.add_argument("--restart", action="store_true")
    p.add_argument("--keep-going", action="store_true")
    p.add_argument("--scope", action="append", default=[], help="a stage kept live (repeatable)")
    p.add_argument("--grace", type=float, default=DEFAULT_GRACE_S,
                   help="on SIGTERM, seconds running stages get to finish")
    p.add_argument("--pool-jobs", type=int, default=0, help="start and supervise a pool of N slots")
    p.add_argument("--watch", action="store_true", help="start and supervise a watcher")
    p.add_argument("--poll", action="store_true", help="the watcher polls")
    p.add_argument("--owner", type=int, default=0, help="stop when this process is gone")
    p.add_argument("--adopt-pool", type=int, default=0,
                   help="supervise this pool process (started by `pivot up` for speed)")
    p.add_argument("--adopt-watcher", type=int, default=0, help="likewise a watcher process")
    p.add_argument("--lock-fd", type=int, default=-1,
                   help="the project's engine lock, already taken by `pivot up` (inherited)")
    p.add_argument("--ready-fd", type=int, default=-1,
                   help="write one byte to this (inherited) pipe once bound and published")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    log_to_stderr(logging.WARNING, "%(asctime)s broker %(levelname)s %(message)s")
    try:
        return run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PivotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    from pivot.pipeline.project import find_root, pivot_dir, project_id

    root = (args.root or find_root()).resolve()
    pivot_dir(root)
    bind = normalize(args.bind) if args.bind else None
    rundir = RunDir(root)
    if args.lock_fd >= 0:
        rundir.adopt_lock(args.lock_fd)
    else:
        rundir.lock()
    try:
        endpoints = _endpoints(rundir, bind, args)
        roles = _early_roles(root, endpoints, args)
        try:
            security = _security(bind, args.keys)
            return _serve(root, rundir, endpoints, security, args, project_id(root), roles)
        finally:
            if roles is not None:
                roles.stop()
    finally:
        rundir.release()


def _early_roles(root: Path, endpoints: Endpoints, args: argparse.Namespace) -> LocalRoles | None:
    """The pool and watcher `pivot up` asks for, started before the heavy imports when
    their endpoints are known already (ipc, or fixed ports)."""
    if not (args.pool_jobs or args.watch or args.owner or args.adopt_pool or args.adopt_watcher):
        return None
    from broker.local import LocalRoles

    known = not any(e.endswith((":0", ":*")) for e in endpoints.__dict__.values())
    roles = LocalRoles(root, endpoints if known else None, args)
    if known:
        roles.start()
    return roles


def _security(bind: str | None, keys_dir: Path | None) -> Security | None:
    """CURVE for tcp when keys are given; required off loopback."""
    from broker.access import Access
    from broker.service import Security
    from pivot.transport.curve import AllowList, ServerKeys, default_keys_dir

    if bind is None or not bind.startswith("tcp://"):
        return None
    explicit = keys_dir is not None or bool(os.environ.get("PIVOT_KEYS_DIR"))
    folder = keys_dir or default_keys_dir()
    have = (folder / "broker.key_secret").exists()
    if not is_loopback(bind) and not have:
        raise UserError(
            f"refusing to bind {bind} without CURVE keys: anyone who can reach it could run "
            f"code in this project. Create keys with `pivot keys init` (into {folder}), or "
            "bind 127.0.0.1 for this machine only"
        )
    if not have:
        if explicit:
            raise UserError(f"no broker key in {folder}; create keys with `pivot keys init --dir {folder}`")
        return None
    if not is_loopback(bind) or explicit:
        return Security(ServerKeys.load(folder), Access(AllowList.load(folder)))
    return None


def _endpoints(rundir: RunDir, bind: str | None, args: argparse.Namespace) -> Endpoints:
    if bind is None:
        local = rundir.ipc_endpoints()
        given = {k: normalize(v) for k in ("work", "events", "changes") if (v := getattr(args, k))}
        return Endpoints(**{**local.__dict__, **given})
    if bind.startswith("tcp://"):
        links = {k: normalize(getattr(args, k)) if getattr(args, k) else with_port(bind, 0)
                 for k in ("work", "events", "changes")}
        return Endpoints(control=bind, **links)
    folder = Path(bind[len("ipc://"):]).parent
    links = {k: normalize(getattr(args, k)) if getattr(args, k) else f"ipc://{folder / (k + '.sock')}"
             for k in ("work", "events", "changes")}
    return Endpoints(control=bind, **links)


def _serve(
    root: Path,
    rundir: RunDir,
    endpoints: Endpoints,
    security: Security | None,
    args: argparse.Namespace,
    project: str,
    roles: LocalRoles | None,
) -> int:
    import zmq

    from broker.events import ShutdownRequested
    from broker.service import BrokerIdentity, BrokerService
    from broker.state import BrokerState, LiveOptions
    from pivot.launch.logsetup import configure

    configure("broker", root)
    identity = BrokerIdentity(project=project)
    live = LiveOptions(
        debounce_s=args.debounce_ms / 1000, keep_going=args.keep_going, scope=tuple(args.scope),
        restart=args.restart, wait_for_watcher=args.watch,
    )
    # `pivot up` trusts the pool it started in its own checkout for the pipeline; a
    # standalone broker loads it itself, beside it; other pools are compared with that.
    source = "pool-1" if args.pool_jobs or args.adopt_pool else ""
    state = BrokerState(live=live, broker_id=identity.id, manifest_source=source)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        service = BrokerService(root, endpoints, ctx, state=state, identity=identity, security=security)
        service.exit_when_stopped = True
        try:
            service.bind()
        except zmq.ZMQError as exc:
            where = ", ".join(sorted({e for e in endpoints.__dict__.values() if not e.endswith(":0")}))
            raise UserError(
                f"cannot bind {where}: {exc.strerror}; another broker (or program) may hold "
                "that port: pick another with --bind, or stop the other one"
            ) from None
        rundir.publish(service.endpoints, "up", broker=identity.id, bind=endpoints.control)
        print(f"pivot broker {identity.id}: control {service.endpoints.control}", file=sys.stderr, flush=True)
        if args.ready_fd >= 0:  # `pivot up` waits on it rather than polling endpoints.json
            os.write(args.ready_fd, b"1")
            os.close(args.ready_fd)
        log.info("broker %s serving %s on %s", identity.id, root, service.endpoints.control)
        _run_loop(service, roles, args.grace, ShutdownRequested)
    finally:
        ctx.destroy(linger=0)
    return 0


def _run_loop(service: BrokerService, roles: LocalRoles | None, grace_s: float, shutdown: type) -> None:
    """Signals and supervised children wake the loop through pipes it polls."""
    stops = 0
    done = False  # the loop has returned: the engine is stopping anyway
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stops
        stops += 1
        if not done:
            with contextlib.suppress(BlockingIOError):
                os.write(wake_w, bytes([signum]))

    def on_wake(fd: int) -> None:
        if fd == wake_r:
            os.read(wake_r, 64)
            grace = grace_s if stops == 1 else 0.0
            service.feed(shutdown(b"", grace, service.clock()))
        elif roles is not None:
            roles.on_fd(fd)

    if roles is not None:
        roles.attach(service)
    service.wake_fds = [wake_r, *(roles.fds() if roles else [])]
    service.on_wake = on_wake
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # its terminal closing is not a stop
    try:
        if roles is not None:
            roles.start()  # if not done before the bind (tcp on free ports)
        service.run()
    finally:
        done = True
        os.close(wake_r)
        os.close(wake_w)
