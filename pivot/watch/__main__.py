"""`python -P -m pivot.watch --root ROOT (--changes ENDPOINT | --broker CONTROL) [--poll]`

The watcher process: sends `watcher_ready` once the OS watch is registered, then
`files_changed` batches to the broker's `changes` endpoint (see pivot/watch/watcher.py).

- `--changes`: started by an engine, which told it the endpoint; it stops once that
  engine's process is gone (even SIGKILLed).
- `--broker`: started on its own (`pivot watcher`): it says hello on the control
  endpoint to learn where to send changes, says hello again every few seconds, and
  follows a broker that restarted (its changes endpoint may move); `--broker-timeout`
  gives up when no broker answers that long.

SIGTERM or SIGINT stops it (exit 0); a root that is not a folder exits 2; anything
else that breaks it is logged with its traceback and exits 1.

Imports stay light (argparse, zmq, watchfiles, msgpack): the engine waits for
`watcher_ready` before it trusts that edits are seen.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pivot.launch.stderrlog import fatal, log_to_stderr
from pivot.watch.watcher import DEFAULT_DEBOUNCE_MS, Watcher

log = logging.getLogger("pivot.watch")

HELLO_EVERY_S = 2.0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pivot.watch", description="Report changed project files to the broker."
    )
    parser.add_argument("--root", required=True, type=Path, help="the project folder")
    link = parser.add_mutually_exclusive_group(required=True)
    link.add_argument("--changes", help="the broker's changes endpoint (an engine started us)")
    link.add_argument("--broker", help="the broker's control endpoint (started on our own)")
    parser.add_argument(
        "--poll",
        action="store_true",
        help="scan instead of OS notifications (Docker Desktop mounts, network file systems)",
    )
    parser.add_argument(
        "--debounce-ms",
        type=_positive_int,
        default=DEFAULT_DEBOUNCE_MS,
        help=f"longest time to gather one batch of changes [{DEFAULT_DEBOUNCE_MS}]",
    )
    parser.add_argument(
        "--parent", type=int, default=None,
        help="the pid of the process that started us (with --changes): we stop once it is gone, "
        "also when it is gone before we look [the parent as we start]",
    )
    parser.add_argument("--broker-timeout", type=float, default=None)
    parser.add_argument("--key", type=Path, default=None)
    parser.add_argument("--broker-key", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    log_to_stderr(logging.WARNING, "%(asctime)s watcher %(levelname)s %(message)s")
    if not args.root.is_dir():
        log.error("project root %s does not exist or is not a folder", args.root)
        return 2
    from pivot.launch.logsetup import configure

    configure("watcher", args.root)
    stop = threading.Event()
    link: BrokerLink | None = None
    if args.broker:
        link = BrokerLink(args.root.resolve(), args.broker, args.key, args.broker_key, args.broker_timeout, stop)
        try:
            changes, keys = link.first()
        except Exception as exc:  # refused, or a bad key: said once, clearly
            fatal(log, str(exc))
            return 2
        if changes is None:
            return 0 if stop.is_set() else 3
    else:
        from pivot.transport.curve import client_keys

        # An engine bound on tcp with keys: this watcher needs one too (a watcher key).
        changes, keys = args.changes, client_keys(args.changes, args.key, args.broker_key, default_name="watcher")
    watcher = Watcher(args.root, changes, poll=args.poll, debounce_ms=args.debounce_ms, keys=keys)
    watcher.early_connect = link is None

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        watcher.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if link is not None:
        watcher.max_wait_ms = 500
        threading.Thread(target=link.follow, args=(watcher,), name="broker-link", daemon=True).start()
    else:
        parent = args.parent if args.parent is not None else os.getppid()
        threading.Thread(target=_stop_when_orphaned, args=(watcher, parent), name="parent", daemon=True).start()
    try:
        watcher.run()
    except Exception:
        log.exception("the watcher failed")
        return 1
    return 3 if link is not None and link.gave_up else 0


class BrokerLink:
    """A standalone watcher's hello, repeated: where the broker wants changes sent."""

    def __init__(
        self, root: Path, control: str, key: Path | None, broker_key: Path | None,
        timeout: float | None, stop: threading.Event,
    ) -> None:
        import zmq

        from pivot.transport.address import normalize
        from pivot.transport.curve import client_keys

        self.root = root
        self.control = normalize(control)
        self.keys = client_keys(self.control, key, broker_key, default_name="watcher")
        self.timeout = timeout
        self.stop = stop
        self.ctx: Any = zmq.Context()
        self.broker = ""
        self.gave_up = False

    def _greet(self) -> Any:
        from pivot.pipeline.project import project_id
        from pivot.transport.greet import NoBroker, greet

        try:
            return greet(self.ctx, self.control, role="watcher", name=f"watcher-{os.getpid()}",
                         project=project_id(self.root), timeout=1.0, keys=self.keys)
        except NoBroker:
            return None

    def first(self) -> tuple[str | None, Any]:
        """The changes endpoint of the first broker that answers (None: gave up)."""
        started = time.monotonic()
        told = False
        while not self.stop.is_set():
            info = self._greet()
            if info is not None:
                self.broker = info.broker
                return info.changes, self.keys
            if not told:
                log.warning("waiting for the broker at %s", self.control)
                told = True
            if self.timeout is not None and time.monotonic() - started > self.timeout:
                fatal(log, f"no broker answered at {self.control} within {self.timeout:.0f} s; "
                      "start one (`pivot broker`), or check the endpoint and --broker-timeout")
                self.gave_up = True
                return None, None
        return None, None

    def follow(self, watcher: Watcher) -> None:
        """Say hello every few seconds; a new broker gets the changes from now on."""
        last_answer = time.monotonic()
        while not self.stop.wait(HELLO_EVERY_S):
            info = self._greet()
            now = time.monotonic()
            if info is None:
                if self.timeout is not None and now - last_answer > self.timeout:
                    log.error("the broker at %s has not answered for %.0f s: exiting", self.control, self.timeout)
                    self.gave_up = True
                    watcher.stop()
                    return
                continue
            last_answer = now
            if info.broker != self.broker:
                log.warning("a new broker (%s) took over from %s", info.broker, self.broker)
                self.broker = info.broker
                watcher.retarget(info.changes, self.keys)


PARENT_CHECK_S = 0.5


def _stop_when_orphaned(watcher: Watcher, parent: int) -> None:
    """Stop when the process that started us (the engine, `parent`) is gone, even
    SIGKILLed: no watcher outlives its engine. Reparenting changes our parent pid. Its
    pid comes from it: a `pivot up` interrupted as it started was gone before this
    thread began, and a watcher that took its new parent for the one to follow ran on."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    log.warning("the process that started the watcher (pid %d) is gone: stopping", parent)
    watcher.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
