"""`pivot broker`: the engine's coordinator as a service of its own."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("broker")
@click.option("--bind", metavar="ENDPOINT", default=None,
              help="Control endpoint: tcp://HOST:PORT (HOST 0.0.0.0 for every interface) or "
              "ipc://PATH [default: ipc under .pivot/run/].")
@click.option("--work", "work", metavar="ENDPOINT", default=None,
              help="Where pools connect [a free port on the --bind host; announced at hello].")
@click.option("--events", "events", metavar="ENDPOINT", default=None,
              help="Where displays subscribe [a free port; announced at hello].")
@click.option("--changes", "changes", metavar="ENDPOINT", default=None,
              help="Where watchers send changes [a free port; announced at hello].")
@click.option("--keys", "keys", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="CURVE keys folder (`pivot keys init`) [PIVOT_KEYS_DIR, else ~/.config/pivot/keys]; "
              "required to bind tcp on anything but loopback.")
@click.option("--debounce", "debounce_ms", type=click.IntRange(min=0, max=60_000), default=20,
              show_default=True, help="Quiet time in ms after the last change before a wave starts.")
@click.option("--restart", is_flag=True, help="Restart a running stage whose inputs change.")
@click.option("--keep-going", is_flag=True, help="After a failure, run every branch not downstream of it.")
@click.option("--grace", "grace_s", type=click.FloatRange(min=0, max=3600), default=5.0,
              show_default=True, help="On SIGTERM, seconds running stages get to finish.")
def broker(
    bind: str | None, work: str | None, events: str | None, changes: str | None, keys: Path | None,
    debounce_ms: int, restart: bool, keep_going: bool, grace_s: float,
) -> int:
    """Run the broker (the engine's coordinator) in this terminal until SIGTERM or Ctrl-C.

    Pools (`pivot workers`), watchers (`pivot watcher`) and displays (`pivot attach`)
    connect to it from anywhere and may start, stop and restart in any order; they need
    only the control endpoint. It runs what `pivot repro --broker` asks and, once a
    watcher joins, what each change affects. One engine per project: it holds the
    project's engine lock and writes .pivot/run/endpoints.json for local commands.
    """
    from broker.main import main
    from pivot.pipeline.project import find_root

    argv = ["--root", str(find_root()), "--debounce-ms", str(debounce_ms), "--grace", str(grace_s)]
    for flag, value in (("--bind", bind), ("--work", work), ("--events", events), ("--changes", changes)):
        if value:
            argv += [flag, value]
    if keys is not None:
        argv += ["--keys", str(keys)]
    argv += ["--restart"] if restart else []
    argv += ["--keep-going"] if keep_going else []
    return main(argv)
