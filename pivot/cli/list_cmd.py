"""`pivot list`: the stages of the pipeline, in run order."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from pivot.display.strictjson import dumps

if TYPE_CHECKING:
    from pivot.pipeline.manifest import Manifest


@click.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def list_stages(as_json: bool) -> None:
    """List the pipeline's stages with their deps, outs and params."""
    from pivot.launch.spawn import run_view
    from pivot.pipeline.project import find_root

    # Made by the loader itself: 10,000 stages' manifest is not sent here to be read
    # again for a listing (~0.1 s).
    warnings, text = run_view(find_root(), _as_json if as_json else _as_text)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if text:  # one write: click.echo asks the terminal about colours at every call
        click.echo(text)


def _as_json(manifest: Manifest) -> tuple[list[str], str]:
    from pivot.pipeline.graph import build_graph

    graph = build_graph(manifest)
    rows = [
        {"name": s.name, "deps": list(s.deps), "outs": list(s.outs),
         "metrics": list(s.metrics), "params": s.params, "upstream": sorted(graph.upstream[s.name])}
        for s in (manifest.by_name[name] for name in graph.order)
    ]
    return [], dumps({"stages": rows}, indent=2)


def _as_text(manifest: Manifest) -> tuple[list[str], str]:
    from pivot.pipeline.graph import build_graph

    graph = build_graph(manifest)
    lines = []
    for s in (manifest.by_name[name] for name in graph.order):
        lines.append(s.name)
        if s.deps:
            lines.append(f"  deps:   {', '.join(s.deps)}")
        if s.outs:
            lines.append(f"  outs:   {', '.join(s.outs)}")
        if s.params:
            lines.append("  params: " + ", ".join(f"{k}={v!r}" for k, v in s.params.items()))
    return list(manifest.warnings), "\n".join(lines)
