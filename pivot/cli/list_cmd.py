"""`pivot list`: the stages of the pipeline, in run order."""

from __future__ import annotations

import json

import click


@click.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def list_stages(as_json: bool) -> None:
    """List the pipeline's stages with their deps, outs and params."""
    from pivot.launch.spawn import run_loader
    from pivot.pipeline.graph import build_graph
    from pivot.pipeline.project import find_root

    root = find_root()
    manifest = run_loader(root)
    graph = build_graph(manifest)
    specs = [manifest.by_name[name] for name in graph.order]
    if as_json:
        rows = [
            {"name": s.name, "deps": list(s.deps), "outs": list(s.outs),
             "metrics": list(s.metrics), "params": s.params, "upstream": sorted(graph.upstream[s.name])}
            for s in specs
        ]
        click.echo(json.dumps({"stages": rows}, indent=2))
        return
    for warning in manifest.warnings:
        click.echo(f"warning: {warning}", err=True)
    lines = []
    for s in specs:
        lines.append(s.name)
        if s.deps:
            lines.append(f"  deps:   {', '.join(s.deps)}")
        if s.outs:
            lines.append(f"  outs:   {', '.join(s.outs)}")
        if s.params:
            lines.append("  params: " + ", ".join(f"{k}={v!r}" for k, v in s.params.items()))
    if lines:  # one write: click.echo asks the terminal about colours at every call
        click.echo("\n".join(lines))
