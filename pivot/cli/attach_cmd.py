"""`pivot attach`: another live view of a running engine."""

from __future__ import annotations

from pathlib import Path

import click

from pivot.cli.options import broker_options, display_option
from pivot.cli.target import root_or_none


@click.command()
@broker_options
@display_option
def attach(broker: str | None, key: Path | None, broker_key: Path | None, display: str, as_json: bool) -> int:
    """Show a running engine live, from any terminal (or host, with --broker).

    The view starts from the engine's current state (every stage's status and reason,
    the wave counter, a pipeline error) and follows it; any number of views can attach,
    and detaching (q, Ctrl-C) never affects the run. The view ends when the engine stops.
    """
    from pivot.cli.follow import run_live
    from pivot.cli.remote import connect

    engine = connect(root_or_none(broker), "attach", broker, key, broker_key, one_shot=True)
    assert engine is not None
    with engine:
        return run_live(engine, None, False, False, "json" if as_json else display)
