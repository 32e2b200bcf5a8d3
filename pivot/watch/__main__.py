"""`python -P -m pivot.watch --root ROOT --changes ENDPOINT [--poll] [--debounce-ms N]`

The watcher process: sends `watcher_ready` once the OS watch is registered, then
`files_changed` batches to the broker's `changes` endpoint (see pivot/watch/watcher.py).
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

from pivot.watch.watcher import DEFAULT_DEBOUNCE_MS, Watcher

log = logging.getLogger("pivot.watch")


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
    parser.add_argument("--changes", required=True, help="the broker's changes endpoint")
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
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s watcher %(levelname)s %(message)s"
    )
    if not args.root.is_dir():
        log.error("project root %s does not exist or is not a folder", args.root)
        return 2
    from pivot.runtime.logsetup import configure

    configure("watcher", args.root)
    watcher = Watcher(args.root, args.changes, poll=args.poll, debounce_ms=args.debounce_ms)

    def on_signal(signum: int, _frame: object) -> None:
        watcher.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=_stop_when_orphaned, args=(watcher,), name="parent", daemon=True).start()
    try:
        watcher.run()
    except Exception:
        log.exception("the watcher failed")
        return 1
    return 0


PARENT_CHECK_S = 0.5


def _stop_when_orphaned(watcher: Watcher) -> None:
    """Stop when the process that started us (`pivot up`) is gone, even SIGKILLed: no
    watcher outlives its engine. Reparenting changes our parent pid."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    log.warning("the process that started the watcher (pid %d) is gone: stopping", parent)
    watcher.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
