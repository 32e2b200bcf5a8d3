"""`pivot logs`: what a stage printed in its last run, or a Pivot process's own records."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

import click

from pivot.cli.options import broker_options, complete_stages, known_stages
from pivot.errors import InfraError, UserError

if TYPE_CHECKING:
    from pivot.cli.remote import RemoteEngine

ROLES = ("engine", "pool", "watcher")


@click.command()
@click.argument("stage", required=False, shell_complete=complete_stages)
@click.option("--role", type=click.Choice(ROLES),
              help="Show a Pivot process's own log records instead (engine = CLI and broker).")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing what STAGE prints, as the running engine streams it, until the engine "
              "stops (Ctrl-C stops earlier); with --role, new records.")
@broker_options
def logs(
    stage: str | None, role: str | None, follow: bool, broker: str | None, key: Path | None, broker_key: Path | None,
) -> None:
    """Print what STAGE printed in its last run (stdout, stderr lines as `! ...`, Pivot's
    notes as `# pivot: ...`, and a failure's traceback), kept under .pivot/logs/stages/;
    each line as its last state. A run that printed more than the cap (100 MB,
    PIVOT_LOG_MAX_MB) keeps its last 50 to 100 MB (half the cap to the cap: the log is
    two segments, the older dropped when the newer fills). While STAGE runs, what it printed
    so far. With -f, then follow it live from the running engine (`pivot up`, a running
    `pivot repro`, or the one --broker names).

    With --role engine|pool|watcher, print that process's structured log records
    (.pivot/logs/ROLE.jsonl: time, level, event, stage/wave), then anything it wrote
    outside them, such as a crash's traceback (.pivot/logs/ROLE.log).
    """
    from pivot.launch.logsetup import records_path
    from pivot.pipeline.project import find_root
    from pivot.state.stagelogs import quiet_log, running_log_path, stage_log_path

    root = find_root()
    if stage is not None and role is not None:
        raise UserError(f"give a STAGE or --role, not both: `pivot logs {stage}` or `pivot logs --role {role}`")
    if stage is None and role is None:
        raise UserError("give a STAGE, or --role engine|pool|watcher")
    if role is not None:
        records = records_path(root, role)
        raw = root / ".pivot" / "logs" / f"{role}.log"
        if not records.is_file() and not raw.is_file():
            raise UserError(f"no log yet for the {role} (it has not run in this project)")
        if raw.is_file() and raw.stat().st_size:
            click.echo(f"# {raw}:")
            click.echo(raw.read_text(errors="replace"), nl=False)
        if records.is_file():
            with open(records, errors="replace") as f:
                _print_records(f, follow)
        return
    assert stage is not None
    path = stage_log_path(root, stage)
    running = running_log_path(root, stage)
    # Subscribed before the file is read: a line printed in between is shown twice at
    # worst, never missed.
    engine = _engine(root, stage, broker, key, broker_key) if follow else None
    if running.is_file():
        click.echo(f"# {stage}: running; what it printed so far:")
        _print_file(running)
    elif path.is_file():
        _print_file(path)
    elif (head := quiet_log(root, stage)) is not None:  # its last run printed nothing
        sys.stdout.buffer.write(head)
        sys.stdout.flush()
    elif engine is None:
        raise _no_log(root, stage, follow)
    if follow and engine is None:
        click.echo(f"(no engine is running for this project: nothing more of {stage} to follow)", err=True)
    elif engine is not None:
        with engine:
            _follow_stage(engine, stage)


def _no_log(root: Path, stage: str, follow: bool) -> UserError:
    """Why STAGE has no log: a name the pipeline does not have (resolve_names says which
    is close, and lists the stages), or a stage that has not run here yet."""
    from pivot.pipeline.select import resolve_names

    known = known_stages(root)
    if known and stage not in known:
        named = resolve_names([stage], known)  # raises for an unknown name, with a close one
        return UserError(f"{stage!r} names the stages {', '.join(named)}: `pivot logs` takes one of them")
    more = "; and no engine is running to follow it" if follow else ""
    if stage in known:
        return UserError(f"no log for stage {stage!r}: it has not run in this project yet{more}")
    return UserError(f"no log for {stage!r}: no stage of that name has run in this project{more}")


def _print_file(path: Path) -> None:
    """Each line as its latest state, as the displays show it (the file keeps every
    rewrite of a progress bar: thousands of states on one line)."""
    from pivot.state.stagelogs import latest_states

    sys.stdout.flush()
    out = sys.stdout.buffer
    with open(path, "rb") as f:
        for line in latest_states(iter(lambda: f.read(1 << 20), b"")):
            out.write(line)
    out.flush()


def _engine(
    root: Path, stage: str, broker: str | None, key: Path | None, broker_key: Path | None,
) -> RemoteEngine | None:
    """The running engine, subscribed to its events; None when none runs."""
    from pivot.cli.remote import connect

    engine = connect(root if broker is None else None, "logs", broker, key, broker_key, required=False, one_shot=True)
    if engine is not None:
        snap = engine.client.join()
        if snap.order and stage not in snap.order:
            from pivot.pipeline.select import resolve_names

            try:
                resolve_names([stage], snap.order)  # says "did you mean"
            finally:
                engine.client.close()
    return engine


def _follow_stage(engine: RemoteEngine, stage: str) -> None:
    """The stage's lines as the engine publishes them, until it stops."""
    from pivot.display.client import BrokerSilent
    from pivot.protocol.messages import EngineStopped, LogLine, Snapshot, StageStarted

    held = False  # a progress line shown in place (a terminal only)
    tty = sys.stdout.isatty()
    announced = 0  # the last wave whose run of the stage was said to start
    try:
        for env in engine.client.events(0.5):
            msg = getattr(env, "msg", None)
            if isinstance(msg, EngineStopped):
                break
            start: tuple[int, str] | None = None
            if isinstance(msg, StageStarted) and msg.stage == stage:
                start = (msg.wave, msg.reason)
            elif isinstance(env, Snapshot):  # state events were missed: its start may be among them
                view = env.stages.get(stage)
                if view is not None and view.status == "running" and view.wave > announced:
                    start = (view.wave, view.reason)
            if start is not None:
                # A new run's lines follow the last run's: say where they begin.
                announced = start[0]
                click.echo(("\n" if held else "") + f"# {stage}: running (wave {start[0]}; {start[1]})")
                held = False
            if not isinstance(msg, LogLine) or msg.stage != stage:
                continue
            text = {"stderr": "! ", "pivot": "# pivot: "}.get(msg.stream, "") + msg.line
            if msg.partial:
                if tty:
                    click.echo("\r\x1b[K" + text, nl=False)
                    held = True
                continue
            click.echo(("\r\x1b[K" if held else "") + text)
            held = False
    except (BrokerSilent, InfraError) as exc:
        click.echo(f"(stopped following: {exc})", err=True)
    except KeyboardInterrupt:
        pass
    if held:
        click.echo("")


def _print_records(f: IO[str], follow: bool) -> None:
    while True:
        line = f.readline()
        if line:
            click.echo(_format(line))
        elif not follow:
            return
        else:
            time.sleep(0.2)  # polling a file for new lines (tail -f); not a test wait


def _format(line: str) -> str:
    try:
        r = json.loads(line)
    except ValueError:
        return line.rstrip("\n")
    where = " ".join(f"{k}={r[k]}" for k in ("wave", "stage") if r.get(k) is not None)
    text = f"{r.get('time', '?')} {r.get('level', '?'):<7} pid {r.get('pid', '?')} {r.get('event', '')}"
    text += f"  [{where}]" if where else ""
    if r.get("traceback"):
        text += "\n" + str(r["traceback"])
    return text
