"""`pivot params show|diff`: the stages' resolved params, and how they differ from the
params each stage's last successful run recorded in its lock file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from pivot.cli.common import load_pipeline, select, table
from pivot.cli.options import stages_argument
from pivot.display.strictjson import dumps

if TYPE_CHECKING:
    from pivot.pipeline.manifest import StageSpec

__all__ = ["ParamChange", "diff_params", "param_source", "params"]

FROM_FILE = "params.yaml"
FROM_CODE = "code"  # the function's default or stage(params=...): the manifest can't tell


@click.group()
def params() -> None:
    """Show stage params, or diff them against the last successful runs."""


def param_source(spec: StageSpec, key: str, from_file: dict[str, dict[str, Any]]) -> str:
    """Where the value of `spec`'s param `key` came from: a params file, or code."""
    if spec.keyed:  # named by dvcyaml.param_label: `key` for params.yaml, `FILE:key` for FILE
        file, colon, _ = key.partition(":")
        return file if colon else FROM_FILE
    return FROM_FILE if key in from_file.get(spec.name, {}) else FROM_CODE


def show_value(value: Any) -> str:
    """A param value as it would be written in params.yaml (JSON is valid YAML)."""
    return dumps(value, ensure_ascii=False)


@params.command()
@stages_argument
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def show(stages: tuple[str, ...], as_json: bool) -> None:
    """Show the resolved params of STAGES (default: all), in run order.

    One line per param: stage, param, value (as YAML would spell it), source: the file
    the value was read from (`params.yaml`, or another params file a dvc.yaml stage
    lists), or `code` for a function's keyword default or stage(params=...). A value is
    the function's keyword default, overridden by stage(params=...), then by the
    params.yaml section named after the stage; a dvc.yaml stage's are the params.yaml
    keys (`train.lr`) or FILE:key it reads.
    """
    from pivot.pipeline.params import load_params_file

    root, manifest, graph = load_pipeline()
    names = select(stages, graph.order)
    specs = [manifest.by_name[name] for name in names]
    # As the loader reads it: with dvc.yaml-style stages, only the other stages' names
    # are sections of params.yaml; the rest (`seed: 1`) are values read by key path.
    keyed = any(s.keyed for s in manifest.stages)
    from_file = load_params_file(root, [s.name for s in manifest.stages if not s.keyed] if keyed else None)
    result = {
        spec.name: {
            key: {"value": value, "source": param_source(spec, key, from_file)}
            for key, value in spec.params.items()
        }
        for spec in specs
    }
    if as_json:
        click.echo(dumps({"stages": result}, indent=2))
        return
    for warning in manifest.warnings:
        click.echo(f"warning: {warning}", err=True)
    rows = []
    for name, values in result.items():
        if not values:
            rows.append([name, "(no params)"])
        for key, row in values.items():
            rows.append([name, key, show_value(row["value"]), row["source"]])
    for line in table(rows):
        click.echo(line)


@dataclass(frozen=True)
class ParamChange:
    stage: str
    key: str
    change: str  # "changed", "added" (not in the lock) or "removed" (only in the lock)
    old: Any  # None when added
    new: Any  # None when removed

    def line(self) -> str:
        where = f"{self.stage}.{self.key}"
        if self.change == "added":
            return f"{where}: added, {show_value(self.new)}"
        if self.change == "removed":
            return f"{where}: removed, was {show_value(self.old)}"
        return f"{where}: {show_value(self.old)} -> {show_value(self.new)}"


def diff_params(stage: str, old: dict[str, Any], new: dict[str, Any]) -> list[ParamChange]:
    """What changed from `old` (the lock) to `new` (the manifest): new's key order, then
    the removed keys. Compared with ==, as `pivot status` does."""
    changes = []
    for key, value in new.items():
        if key not in old:
            changes.append(ParamChange(stage, key, "added", None, value))
        elif old[key] != value:
            changes.append(ParamChange(stage, key, "changed", old[key], value))
    changes += [ParamChange(stage, k, "removed", v, None) for k, v in old.items() if k not in new]
    return changes


@params.command()
@stages_argument
@click.option("--rev", default=None,
              help="Compare with the runs recorded at this git revision (its lock files) "
              "instead of the last runs here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--md", "as_md", is_flag=True, help="Print a Markdown table (for a pull request).")
def diff(stages: tuple[str, ...], rev: str | None, as_json: bool, as_md: bool) -> None:
    """Compare params now with those of the last successful runs.

    For STAGES (default: all): the params pipeline.py and params.yaml give now against
    those each stage's lock file in .pivot/stages/ recorded (with --rev, as committed at
    that git revision, like `dvc params diff`). Stages that never ran are listed as
    such. Exit code 0 whether or not anything changed.
    """
    from pivot.state.lock import StageLock, read_lock

    root, manifest, graph = load_pipeline()
    names = select(stages, graph.order)
    if rev is not None:
        from pivot.cli.revision import Revision

        then = Revision(root, rev)

        def lock_of(name: str) -> StageLock | None:
            return then.lock(name)
    else:
        def lock_of(name: str) -> StageLock | None:
            return read_lock(root, name)
    changes: list[ParamChange] = []
    never_ran: list[str] = []
    for name in names:
        lock = lock_of(name)
        if lock is None:
            never_ran.append(name)
        else:
            changes += diff_params(name, lock.params, manifest.by_name[name].params)
    if as_json:
        rows = [{"stage": c.stage, "key": c.key, "change": c.change, "old": c.old, "new": c.new}
                for c in changes]
        click.echo(dumps({"changes": rows, "never_ran": never_ran}, indent=2))
        return
    for warning in manifest.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_md:
        click.echo(f"| Stage | Param | {rev or 'last run'} | workspace |")
        click.echo("|---|---|---|---|")
        for c in changes:
            cells = ["-" if v is None else show_value(v).replace("|", "\\|") for v in (c.old, c.new)]
            click.echo(f"| {c.stage} | {c.key} | {cells[0]} | {cells[1]} |")
        for name in never_ran:
            click.echo(f"| {name} | (never ran) | - | - |")
        return
    for change in changes:
        click.echo(change.line())
    for name in never_ran:
        click.echo(f"{name}: never ran (no lock file{f' at {rev}' if rev else ''})")
    if not changes and not never_ran:
        click.echo(f"no param changes since {rev}" if rev else "no param changes since the last runs")
