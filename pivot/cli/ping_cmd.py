"""`pivot ping`: does a broker answer? (healthchecks)"""

from __future__ import annotations

import time
from pathlib import Path

import click

from pivot.cli.options import broker_options


@click.command("ping")
@broker_options
@click.option("--timeout", type=click.FloatRange(min=0.1, max=600), default=5.0, show_default=True,
              help="Seconds to wait for an answer.")
def ping(broker: str | None, key: Path | None, broker_key: Path | None, timeout: float) -> int:
    """Exit 0 when the broker answers a hello, 1 when none answers within --timeout,
    2 when it refuses this client (another version, a key it does not accept)."""
    import zmq

    from pivot.cli.target import keys_from, resolve, root_or_none
    from pivot.errors import UserError
    from pivot.transport.curve import client_keys
    from pivot.transport.greet import greet

    control = resolve(broker, root_or_none(broker))
    if control is None:
        raise UserError("no broker to ping: no engine runs for this project; name one with --broker")
    key, broker_key = keys_from(key, broker_key)
    keys = client_keys(control, key, broker_key, default_name="operator")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        started = time.monotonic()
        info = greet(ctx, control, role="cli", name="ping", timeout=timeout, keys=keys)
        took = (time.monotonic() - started) * 1000
    finally:
        ctx.destroy(linger=0)
    click.echo(f"broker {info.broker} (pid {info.pid} on {info.host}) answered at {control} in {took:.1f} ms")
    return 0
