"""`pivot attach`: another live view of the engine a `pivot up` runs."""

from __future__ import annotations

import click

from pivot.cli.options import display_option
from pivot.pipeline.project import find_root


@click.command()
@display_option
def attach(display: str, as_json: bool) -> int:
    """Show the running engine (started by `pivot up`) live, from any terminal.

    The view starts from the engine's current state (every stage's status and reason,
    the wave counter, a pipeline error) and follows it; any number of views can attach,
    and detaching (Ctrl-C) never affects the run.
    """
    from pivot.cli.follow import run_live
    from pivot.cli.remote import RemoteEngine, running_engine
    from pivot.errors import UserError

    root = find_root()
    if not running_engine(root):
        raise UserError(f"no `pivot up` is running for {root}; start one with `pivot up`")
    with RemoteEngine(root, "attach") as engine:
        return run_live(engine, None, False, False, "json" if as_json else display)
