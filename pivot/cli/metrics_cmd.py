"""`pivot metrics show|diff`: the metrics files stages declare (metrics=[...]) and those a
dvc.yaml lists at its top level (owned by no stage), flattened."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from pivot.cli.common import load_pipeline, select, table
from pivot.cli.options import stages_argument
from pivot.display.strictjson import dumps
from pivot.pipeline.params import load_yaml

__all__ = ["MetricsFile", "flatten", "metrics", "read_metrics"]

FORMATS = {".json": "JSON", ".yaml": "YAML", ".yml": "YAML"}


@dataclass(frozen=True)
class MetricsFile:
    stage: str  # "" for a file a dvc.yaml lists at its top level
    path: str  # as declared, relative to the project root
    data: Any = None  # parsed content when `status` is "ok"
    status: str = "ok"  # "ok", "missing" or "error"
    error: str = ""  # why it could not be read, when `status` is "error"
    listed_in: str = ""  # the dvc.yaml whose top-level `metrics` lists it (then no stage)

    @property
    def owner(self) -> str:
        """For messages and the text table's first column: its stage, or its dvc.yaml."""
        return self.stage or self.listed_in

    def where(self) -> str:
        return f"metrics of stage {self.stage!r}" if self.stage else f"metrics listed in {self.listed_in}"


def top_level(root: Path, declared: set[str]) -> list[tuple[str, str]]:
    """(dvc.yaml, path) for the files the project's dvc.yaml files list as top-level
    `metrics` that no stage declares (a stage's own file is shown under its stage)."""
    from pivot.pipeline.dvcyaml import top_level_metrics
    from pivot.pipeline.project import PIPELINE_FILE

    listed = top_level_metrics(root, below_pipeline=(root / PIPELINE_FILE).is_file())
    seen: set[str] = set()
    found = []
    for file, path in listed:
        if path not in declared and path not in seen:
            seen.add(path)
            found.append((file, path))
    return found


def read_metrics(root: Path, stage: str, path: str) -> MetricsFile:
    """Read and parse one metrics file; never raises for what is in (or not in) the file."""
    kind = FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        return MetricsFile(stage, path, status="error", error=(
            f"unsupported metrics format {Path(path).suffix or '(no extension)'}; "
            "Pivot reads .json, .yaml and .yml files"
        ))
    try:
        text = (root / path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return MetricsFile(stage, path, status="missing")
    except (OSError, UnicodeDecodeError) as exc:
        reason = "is a directory" if (root / path).is_dir() else f"cannot be read: {exc}"
        return MetricsFile(stage, path, status="error", error=reason)
    return parse_metrics(stage, path, text)


def parse_metrics(stage: str, path: str, text: str) -> MetricsFile:
    """A metrics file's content (from disk, git or the cache), parsed by its extension."""
    kind = FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        return MetricsFile(stage, path, status="error", error=f"unsupported metrics format {Path(path).suffix}")
    try:
        data = json.loads(text) if kind == "JSON" else load_yaml(text)  # BadYaml is a ValueError
    except ValueError as exc:
        return MetricsFile(stage, path, status="error", error=f"not valid {kind}: {exc}")
    return MetricsFile(stage, path, data)


def flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested maps and lists as (dotted key, scalar) pairs: {"a": {"b": 1}} -> [("a.b", 1)]."""
    if isinstance(data, dict):
        items: list[tuple[object, Any]] = list(data.items())
    elif isinstance(data, list):
        items = list(enumerate(data))
    else:
        return [(prefix, data)]
    if not items:
        return [(prefix, data)] if prefix else []
    pairs = []
    for key, value in items:
        pairs += flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return pairs


def _show(value: Any) -> str:
    return value if isinstance(value, str) else dumps(value, default=str, ensure_ascii=False)


@click.group()
def metrics() -> None:
    """Show the metrics files stages declare (and those a dvc.yaml lists at its top level)."""


@metrics.command()
@stages_argument
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def show(stages: tuple[str, ...], as_json: bool) -> int:
    """Show the metrics of STAGES (default: every stage that declares metrics, and the
    files a dvc.yaml lists in its top-level `metrics`, owned by no stage).

    One line per value: stage (or the dvc.yaml listing the file), file, key (nested keys
    joined with '.'), value. Reads
    .json, .yaml and .yml files as they are on disk now. A missing file is listed as
    missing (exit code 0: the stage has not run yet); a file that cannot be parsed is
    named on stderr and the exit code is 2.
    """
    from dataclasses import replace

    root, manifest, graph = load_pipeline()
    names = select(stages, graph.order)
    files = [read_metrics(root, n, p) for n in names for p in manifest.by_name[n].metrics]
    if not stages:  # they belong to no stage: shown when all are
        declared = {p for s in manifest.stages for p in s.metrics}
        files += [replace(read_metrics(root, "", p), listed_in=f) for f, p in top_level(root, declared)]
    bad = [f for f in files if f.status == "error"]
    if as_json:
        grouped: dict[str, dict[str, Any]] = {}
        unowned: dict[str, Any] = {}
        for f in files:
            if f.status == "ok":
                (grouped.setdefault(f.stage, {}) if f.stage else unowned)[f.path] = f.data
        # `files` only when a dvc.yaml lists some: other projects' output stays as it was.
        extra = {"files": unowned} if any(f.listed_in for f in files) else {}
        click.echo(dumps({
            "stages": grouped,
            **extra,
            "missing": [{"stage": f.stage or None, "path": f.path} for f in files if f.status == "missing"],
            "errors": [{"stage": f.stage or None, "path": f.path, "error": f.error} for f in bad],
        }, indent=2, default=str))
    else:
        for warning in manifest.warnings:
            click.echo(f"warning: {warning}", err=True)
        rows = []
        for f in files:
            if f.status == "missing":
                rows.append([f.owner, f.path, f"(missing: run `pivot repro {f.stage}`)" if f.stage else "(missing)"])
            elif f.status == "ok":
                rows += [[f.owner, f.path, key or "-", _show(v)] for key, v in flatten(f.data)]
        for line in table(rows):
            click.echo(line)
        if not files:
            click.echo("none of these stages declares metrics" if stages else "no stage declares metrics")
    for f in bad:
        click.echo(f"error: {f.path} ({f.where()}): {f.error}", err=True)
    return 2 if bad else 0


@metrics.command()
@stages_argument
@click.option("--rev", default="HEAD", show_default=True, help="The git revision to compare with.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--md", "as_md", is_flag=True, help="Print a Markdown table (for a pull request).")
def diff(stages: tuple[str, ...], rev: str, as_json: bool, as_md: bool) -> int:
    """Compare the metrics of STAGES (default: all, and dvc.yaml's top-level metrics
    files) now with those at a git revision.

    As `dvc metrics diff`: a metrics file at REV is read from git if it was committed,
    else from .pivot/cache by the hash REV's lock file records. One row per value that
    differs: file, key, old, new and the change of a number. Exit code 0; 2 when REV
    is no revision or a file cannot be parsed.
    """
    from dataclasses import replace

    from pivot.cli.revision import Revision

    root, manifest, graph = load_pipeline()
    names = select(stages, graph.order)
    then = Revision(root, rev)
    rows: list[dict[str, Any]] = []
    bad: list[MetricsFile] = []
    # (stage, dvc.yaml, path): a stage's files, then the top-level ones of dvc.yaml (no
    # stage, no lock: read from git at REV only).
    compared = [(name, "", path) for name in names for path in manifest.by_name[name].metrics]
    if not stages:
        declared = {p for s in manifest.stages for p in s.metrics}
        compared += [("", file, path) for file, path in top_level(root, declared)]
    for name, listed_in, path in compared:
        now = replace(read_metrics(root, name, path), listed_in=listed_in)
        raw = then.output(name, path) if name else then.read(path)
        old = replace(parse_metrics(name, path, raw.decode("utf-8", "replace")), listed_in=listed_in) \
            if raw is not None else None
        bad += [f for f in (now, old) if f is not None and f.status == "error"]
        before = dict(flatten(old.data)) if old is not None and old.status == "ok" else {}
        after = dict(flatten(now.data)) if now.status == "ok" else {}
        for key in [*before, *(k for k in after if k not in before)]:
            a, b = before.get(key), after.get(key)
            if a != b:
                rows.append({"path": path, "key": key or "-", "old": a, "new": b, "change": _change(a, b)})
    if as_json:
        grouped: dict[str, dict[str, Any]] = {}
        for r in rows:
            grouped.setdefault(r["path"], {})[r["key"]] = {"old": r["old"], "new": r["new"], "diff": r["change"]}
        click.echo(dumps(grouped, indent=2, default=str))
    elif as_md:
        click.echo("| Path | Metric | " + rev + " | workspace | Change |")
        click.echo("|---|---|---|---|---|")
        for r in rows:
            click.echo(f"| {r['path']} | {r['key']} | {_cell(r['old'])} | {_cell(r['new'])} | {_cell(r['change'])} |")
    else:
        lines = table([["Path", "Metric", rev, "workspace", "Change"]]
                      + [[r["path"], r["key"], _cell(r["old"]), _cell(r["new"]), _cell(r["change"])] for r in rows])
        for line in lines if rows else [] if bad else ["no metrics changed"]:  # an unreadable file: not "unchanged"
            click.echo(line)
    for path in then.lost:
        click.echo(f"warning: {path} at {rev}: not committed to git, and the cache no longer has the "
                   "version its lock records (removed by `pivot gc`?); shown as absent", err=True)
    for f in bad:
        click.echo(f"error: {f.path} ({f.where()}): {f.error}", err=True)
    return 2 if bad else 0


def _change(old: Any, new: Any) -> Any:
    numbers = (int, float)
    if isinstance(old, numbers) and isinstance(new, numbers) and not isinstance(old, bool) and not isinstance(new, bool):
        return round(new - old, 12)
    return None


def _cell(value: Any) -> str:
    return "-" if value is None else _show(value)
