"""Options shared by the commands that start or join an engine."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["LIVE_PARAMS", "broker_options", "complete_stages", "display_option", "known_stages", "live_options", "stages_argument"]


def display_option(func: click.decorators.FC) -> click.decorators.FC:
    func = click.option("--json", "as_json", is_flag=True, help="Short for --display json.")(func)
    return click.option(
        "--display",
        type=click.Choice(["auto", "tui", "plain", "json"]),
        default="auto",
        show_default=True,
        help="auto: live view on a terminal, plain lines otherwise; json: JSON lines (docs/events.md).",
    )(func)


LIVE_PARAMS = ("debounce_ms", "poll", "restart", "grace_s")


def live_options(func: click.decorators.FC) -> click.decorators.FC:
    """The options of a live engine, shared by `pivot up` and `pivot repro --watch`."""
    options = [
        click.option("--debounce", "debounce_ms", type=click.IntRange(min=0, max=60_000), default=20,
                     show_default=True,
                     help="Quiet time in ms after the last change before a wave starts (a stream "
                     "of changes still starts one every 5 s). A lone save, seen closed by "
                     "the OS, starts its wave at once; files still open for writing, and "
                     "saves in their folder meanwhile, wait until closed (not with --poll)."),
        click.option("--poll", is_flag=True,
                     help="Poll the file system instead of OS notifications (Docker Desktop, "
                     "network mounts)."),
        click.option("--restart", is_flag=True,
                     help="Cancel a running stage whose inputs change and run it again at once "
                     "(default: it finishes, then runs again in the next wave)."),
        click.option("--grace", "grace_s", type=click.FloatRange(min=0, max=3600), default=5.0,
                     show_default=True,
                     help="On quit, seconds running stages get to finish before they are "
                     "cancelled (a cancelled stage commits nothing)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def known_stages(root: Path) -> list[str]:
    """The project's stage names: the pipeline's, loaded as any command loads it, else
    (it does not load) those that ran, from their lock files; never an error."""
    try:
        from pivot.launch.spawn import run_loader

        return [s.name for s in run_loader(root, timeout=5.0).stages]
    except Exception:  # a broken pipeline still has the names of what ran
        from pivot.state.lock import stage_of_file

        return sorted(stage_of_file(p.stem) for p in (root / ".pivot" / "stages").glob("*.lock"))


def complete_stages(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Stage names (and variant groups) for shell completion (`known_stages`)."""
    from pivot.pipeline.project import find_root

    try:
        root = find_root()
    except Exception:  # completion outside a project offers nothing
        return []
    names = known_stages(root)
    groups = sorted({n.partition("@")[0] for n in names if "@" in n} - set(names))
    return [n for n in [*names, *groups] if n.startswith(incomplete)]


def stages_argument(func: click.decorators.FC) -> click.decorators.FC:
    """STAGES (any number), completed by the shell from the pipeline's stage names."""
    return click.argument("stages", nargs=-1, shell_complete=complete_stages)(func)


def broker_options(func: click.decorators.FC) -> click.decorators.FC:
    """--broker, --key, --broker-key (with their environment variables)."""
    options = [
        click.option("--broker", "broker", metavar="ENDPOINT", default=None,
                     help="The broker's control endpoint (tcp://HOST:PORT or ipc://PATH) "
                     "[PIVOT_BROKER; default: this project's running engine]."),
        click.option("--key", "key", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="This client's CURVE secret key file [PIVOT_KEY]."),
        click.option("--broker-key", "broker_key", type=click.Path(dir_okay=False, path_type=Path),
                     default=None, help="The broker's CURVE public key file [PIVOT_BROKER_KEY]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func
