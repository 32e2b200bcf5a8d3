"""`pivot keys`: CURVE keys for a broker reached over tcp."""

from __future__ import annotations

from pathlib import Path

import click

_DIR_HELP = "The keys folder [PIVOT_KEYS_DIR, else ~/.config/pivot/keys]; never inside a project."


@click.group("keys")
def keys() -> None:
    """Create the CURVE keys that authenticate pools, watchers and displays to a broker
    bound on tcp (required off loopback). Secret keys stay in the keys folder (mode
    0600); public keys (broker.key, clients/*.key) may be shared."""


@keys.command("init")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=None, help=_DIR_HELP)
@click.option("--force", is_flag=True, help="Replace existing keys (every client must get new ones).")
def init(folder: Path | None, force: bool) -> None:
    """Create the broker's keypair and one client keypair per role: operator, pool,
    watcher, viewer."""
    from pivot.transport.curve import default_keys_dir, init_keys

    folder = folder or default_keys_dir()
    init_keys(folder, force=force)
    click.echo(f"created keys in {folder}:")
    click.echo(f"  {folder / 'broker.key_secret'}  the broker's secret key (the broker reads the folder)")
    click.echo(f"  {folder / 'broker.key'}  the broker's public key: give it to clients (--broker-key)")
    for name in ("operator", "pool", "watcher", "viewer"):
        click.echo(f"  {folder / (name + '.key_secret')}  a {name} client's secret key (--key)")


@keys.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["pool", "watcher", "operator", "viewer"]), required=True,
              help="pool: the work link only; watcher: changes only; viewer: snapshot and events "
              "only; operator: everything a local CLI can do.")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=None, help=_DIR_HELP)
@click.option("--force", is_flag=True, help="Replace a key of that name.")
def add(name: str, role: str, folder: Path | None, force: bool) -> None:
    """Add a client NAME with ROLE: its secret key file and its entry in the broker's
    allow-list (a running broker reads the allow-list at start: restart it)."""
    from pivot.transport.curve import add_client, default_keys_dir

    folder = folder or default_keys_dir()
    secret, public = add_client(folder, name, role, force=force)
    click.echo(f"created {secret} (give it to that client: --key) and {public} ({role})")
