"""`pivot logs`: what a stage printed in its last run, or a Pivot process's own records."""

from __future__ import annotations

import json
import time
from typing import IO

import click

from pivot.cli.options import complete_stages
from pivot.errors import UserError

ROLES = ("engine", "pool", "watcher")


@click.command()
@click.argument("stage", required=False, shell_complete=complete_stages)
@click.option("--role", type=click.Choice(ROLES),
              help="Show a Pivot process's own log records instead (engine = CLI and broker).")
@click.option("-f", "--follow", is_flag=True, help="With --role: keep printing new records (Ctrl-C stops).")
def logs(stage: str | None, role: str | None, follow: bool) -> None:
    """Print the captured output (stdout, stderr lines as `! ...`, and a failure's
    traceback) of STAGE's last run, kept under .pivot/logs/stages/.

    With --role engine|pool|watcher, print that process's structured log records
    (.pivot/logs/ROLE.jsonl: time, level, event, stage/wave), then anything it wrote
    outside them, such as a crash's traceback (.pivot/logs/ROLE.log).
    """
    from pivot.launch.logsetup import records_path
    from pivot.pipeline.project import find_root
    from pivot.state.stagelogs import stage_log_path

    root = find_root()
    if (stage is None) == (role is None):
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
    if follow:
        raise UserError("--follow goes with --role")
    path = stage_log_path(root, stage)
    if not path.is_file():
        raise UserError(f"no log for stage {stage!r}: it has not run in this project (or its name is wrong)")
    click.echo(path.read_text(errors="replace"), nl=False)


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
