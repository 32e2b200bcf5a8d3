"""`pivot status`: which stages are stale, and why."""

from __future__ import annotations

import json
from typing import Any

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def status(as_json: bool) -> None:
    """Show which stages `pivot repro` would run, with the reasons."""
    from pivot.pipeline.graph import build_graph
    from pivot.pipeline.project import find_root
    from pivot.runtime.spawn import run_loader
    from pivot.state.decide import Reason, decide

    root = find_root()
    manifest = run_loader(root)
    graph = build_graph(manifest, root)
    result: dict[str, dict[str, Any]] = {}
    for name in graph.order:
        decision = decide(root, manifest.by_name[name])
        reasons = [{"code": str(decision.code), "message": decision.message}] if decision.run else []
        stale_up = sorted(u for u in graph.upstream[name] if result[u]["stale"])
        if stale_up:
            reasons.append(
                {"code": str(Reason.UPSTREAM_STALE), "message": f"upstream stale: {', '.join(stale_up)}"}
            )
        result[name] = {"stale": bool(reasons), "reasons": reasons}
    if as_json:
        click.echo(json.dumps({"stages": result}, indent=2))
        return
    for warning in manifest.warnings:
        click.echo(f"warning: {warning}", err=True)
    stale = [n for n in graph.order if result[n]["stale"]]
    for name in graph.order:
        row = result[name]
        if row["stale"]:
            click.echo(f"{name}: stale ({'; '.join(r['message'] for r in row['reasons'])})")
        else:
            click.echo(f"{name}: up to date")
    click.echo(f"{len(stale)} of {len(graph.order)} stages stale" if stale else "everything is up to date")
