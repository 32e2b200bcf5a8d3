"""`pivot ps`: the processes of a running engine."""

from __future__ import annotations

from pathlib import Path

import click

from pivot.cli.options import broker_options
from pivot.display.strictjson import dumps


@click.command("ps")
@broker_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def ps(broker: str | None, key: Path | None, broker_key: Path | None, as_json: bool) -> None:
    """List the engine's processes: the broker, its pools (slots, busy, tags, and the
    stages a pool loaded other code for: it gets none of them) and its watchers, with
    pid, host and uptime."""
    from pivot.cli.common import table
    from pivot.cli.remote import connect
    from pivot.cli.target import root_or_none
    from pivot.protocol.messages import PsReply, PsRequest

    engine = connect(root_or_none(broker), "ps", broker, key, broker_key, one_shot=True)
    assert engine is not None
    with engine:
        reply = engine.client.request(PsRequest(), PsReply, timeout=5.0)
    assert isinstance(reply, PsReply)
    if as_json:
        click.echo(dumps({"processes": reply.processes}, indent=2))
        return
    rows = [["ROLE", "NAME", "PID", "HOST", "UPTIME", "DETAILS"]]
    for p in reply.processes:
        if p.get("role") == "pool":
            tags = ",".join(p.get("tags") or []) or "-"
            details = f"slots {p.get('slots')}, busy {p.get('busy')}, tags {tags}"
            if p.get("queued"):
                details += f", {p.get('queued')} queued"
            other = p.get("mismatched") or []
            if other:  # another checkout or Python: it gets none of these stages
                shown = ", ".join(str(s) for s in other[:5]) + (" ..." if len(other) > 5 else "")
                details += f"; other code for {len(other)} stage(s): {shown}"
            elif p.get("current") is False:
                details += "; loading the pipeline"
        else:
            details = str(p.get("endpoint", ""))
        rows.append([str(p.get("role")), str(p.get("name")), str(p.get("pid")), str(p.get("host")),
                     _uptime(p.get("uptime_s")), details])
    for line in table(rows):
        click.echo(line)


def _uptime(value: object) -> str:
    seconds = int(value) if isinstance(value, (int, float)) else 0
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
