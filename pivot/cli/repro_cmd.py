"""`pivot repro`: run the stale stages once, through the same broker and pool as `up`."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pivot.display.render import wave_failed
from pivot.errors import InfraError, UserError
from pivot.pipeline.project import find_root, pivot_dir
from pivot.protocol.codec import Envelope
from pivot.protocol.messages import (
    PipelineInvalid,
    PoolLost,
    RunReply,
    RunRequest,
    Snapshot,
    WaveFinished,
    WaveStarted,
)

if TYPE_CHECKING:  # imported lazily at run time: `pivot --help` must stay fast
    from pivot.cli.stack import Stack
    from pivot.display.render import Renderer

POOL_EXIT_GRACE_S = 2.0


@dataclass
class Outcome:
    code: int | None = None  # set when the run is over
    wave: int | None = None  # our wave, once seen
    history: int = 0  # waves that finished before we joined are not ours


def display_option(func: click.decorators.FC) -> click.decorators.FC:
    func = click.option("--json", "as_json", is_flag=True, help="Short for --display json.")(func)
    return click.option(
        "--display",
        type=click.Choice(["auto", "tui", "plain", "json"]),
        default="auto",
        show_default=True,
        help="auto: live view on a terminal, plain lines otherwise; json: JSON lines (docs/events.md).",
    )(func)


@click.command()
@click.argument("stages", nargs=-1)
@click.option("-f", "--force", is_flag=True, help="Run the stages even if they are up to date.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Stages to run at once [default: usable CPUs].")
@click.option("--keep-going", is_flag=True,
              help="After a failure, still run every stage not downstream of it.")
@click.option("-n", "--dry-run", is_flag=True,
              help="Print what would run and why; run nothing, change nothing.")
@display_option
def repro(
    stages: tuple[str, ...], force: bool, jobs: int | None, keep_going: bool,
    dry_run: bool, display: str, as_json: bool,
) -> int:
    """Run STAGES (default: all) and their upstream, skipping what is up to date.

    Exit code 0 when every stage ran or was up to date, 1 when a stage failed or the
    worker pool was lost, 2 for a usage or pipeline error, 130 after Ctrl-C.
    """
    from pivot.cli.stack import Stack
    from pivot.display.render import make_renderer, resolve_mode
    from pivot.runtime.cpus import usable_cpus

    root = find_root()
    if dry_run:
        return _dry_run(root, stages, force, as_json or display == "json")
    pivot_dir(root)
    mode = resolve_mode("json" if as_json else display, sys.stdout)
    renderer = make_renderer(mode, sys.stdout, sys.stderr)
    outcome = Outcome()
    dropped = 0
    try:
        with Stack(root, jobs or usable_cpus()) as stack:
            assert stack.client is not None
            client = stack.client
            joined = client.join()
            outcome.history = joined.wave
            renderer.baseline(joined)
            # Answered once the broker can check stage names against a manifest.
            client.send(RunRequest(list(stages), force, keep_going))
            _follow(stack, renderer, outcome)
            dropped = client.dropped_logs
    finally:
        renderer.close(dropped)
    assert outcome.code is not None
    return outcome.code


def _dry_run(root: Path, stages: tuple[str, ...], force: bool, as_json: bool) -> int:
    """The plan `repro` would follow, from the same decisions, without an engine."""
    import json

    from pivot.cli.assess import assess

    result = assess(root, stages, force=force)
    plan: dict[str, dict[str, Any]] = {}
    for name, row in result.stages.items():
        action = "skip" if not row.stale else "restore" if row.restorable else "run"
        plan[name] = {"action": action, **row.to_json()}
    if as_json:
        click.echo(json.dumps({"stages": plan}, indent=2))
        return 0
    for name, entry in plan.items():
        if entry["action"] == "skip":
            click.echo(f"{name}: skip (up to date)")
            continue
        verb = "would restore from run cache" if entry["action"] == "restore" else "would run"
        why = "; ".join(r["message"] for r in entry["reasons"])
        click.echo(f"{name}: {verb} ({why})")
    acting = [n for n, entry in plan.items() if entry["action"] != "skip"]
    click.echo(f"{len(acting)} of {len(plan)} stages would run or be restored" if acting else "nothing to do")
    return 0


def _follow(stack: Stack, r: Renderer, outcome: Outcome) -> None:
    assert stack.client is not None
    pool_died_at: float | None = None
    answered = False
    for item in stack.client.events(poll_s=0.1):
        if not answered and (reply := stack.client.take_reply(RunReply)) is not None:
            answered = True
            assert isinstance(reply, RunReply)
            if not reply.accepted:
                raise UserError(reply.message)
        if isinstance(item, Snapshot):
            r.resync(item)
            _from_snapshot(item, outcome)
        elif isinstance(item, Envelope):
            r.event(item)
            _from_event(item, outcome)
        if outcome.code is not None:
            return
        rc = stack.pool_exit()
        if rc is not None:
            pool_died_at = time.monotonic()
        if pool_died_at is not None and time.monotonic() - pool_died_at > POOL_EXIT_GRACE_S:
            tail = stack.pool_log_tail()
            raise InfraError(
                f"the worker pool exited (code {stack.pool.returncode if stack.pool else '?'}) "
                f"before the run finished; its log {stack.pool_log}:\n{tail}"
            )
        if not stack.broker_alive():
            raise InfraError("the broker stopped unexpectedly; run again with -v for details")


def _from_event(env: Envelope, outcome: Outcome) -> None:
    msg = env.msg
    if isinstance(msg, WaveStarted) and outcome.wave is None:
        outcome.wave = msg.wave
    elif isinstance(msg, WaveFinished) and msg.wave == outcome.wave:
        outcome.code = 1 if wave_failed(msg) else 0
    elif isinstance(msg, PipelineInvalid):
        outcome.code = 2
    elif isinstance(msg, PoolLost):
        outcome.code = 1


def _from_snapshot(snap: Snapshot, outcome: Outcome) -> None:
    if snap.pipeline_error is not None:
        outcome.code = 2
        return
    last = snap.last_wave
    if last is None or last["wave"] <= outcome.history or snap.wave_running:
        return
    if outcome.wave in (None, last["wave"]):
        outcome.code = 1 if wave_failed(WaveFinished(**last)) else 0
