"""`pivot dag`: draw the stage graph as text, Graphviz dot, Mermaid or JSON.

Also home of what the read-only inspection commands (`dag`, `params`, `metrics`) share:
loading the pipeline, the unknown-stage check, and a plain text table.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import click

from pivot.cli.common import check_stage_names, load_pipeline
from pivot.cli.options import stages_argument

if TYPE_CHECKING:  # imported lazily at run time: `pivot --help` must stay fast

    from pivot.pipeline.manifest import Manifest

__all__ = ["dag", "to_ascii", "to_dot", "to_json", "to_mermaid"]

ASCII_WIDTH = 100  # upstream lists wrap at this width


@click.command()
@stages_argument
@click.option(
    "--format", "fmt", type=click.Choice(["ascii", "dot", "mermaid", "json"]), default="ascii",
    show_default=True,
    help="ascii: stages by level with their upstream; dot: Graphviz (`| dot -Tsvg`); "
    "mermaid: a flowchart for Markdown; json: stages, edges and the paths behind each edge.",
)
@click.option("--outs", is_flag=True,
              help="Draw the outputs instead of the stages (as `dvc dag --outs`): an edge "
              "A -> B means the stage writing B reads A.")
def dag(stages: tuple[str, ...], fmt: str, outs: bool) -> None:
    """Draw the stage graph: STAGES (default: all) and everything upstream of them.

    An edge A -> B means B depends on a path A writes. Stages are listed in run order.
    """
    _, manifest, graph = load_pipeline()
    check_stage_names(stages, graph.order)
    chosen = graph.with_upstream(list(stages)) if stages else set(graph.order)
    names = [n for n in graph.order if n in chosen]
    position = {name: i for i, name in enumerate(graph.order)}
    edges = sorted(
        ((u, d) for d in names for u in graph.upstream[d]),  # upstream of a chosen stage is chosen
        key=lambda e: (position[e[0]], position[e[1]]),
    )
    if outs:
        names, edges = _artifacts(manifest, names, edges)
        if fmt == "json":
            click.echo(json.dumps({"outs": names, "edges": [[a, b] for a, b in edges]}, indent=2))
            return
        upstream: dict[str, set[str]] = {n: set() for n in names}
        for a, b in edges:
            upstream[b].add(a)
        for warning in manifest.warnings if fmt == "ascii" else ():
            click.echo(f"warning: {warning}", err=True)
        drawn = {"ascii": lambda: to_ascii(names, upstream, "output"), "dot": lambda: to_dot(names, edges)}
        click.echo(drawn.get(fmt, lambda: to_mermaid(names, edges))())
        return
    if fmt == "json":
        click.echo(json.dumps(to_json(manifest, names, edges), indent=2))
        return
    if fmt != "ascii":
        click.echo(to_dot(names, edges) if fmt == "dot" else to_mermaid(names, edges))
        return
    for warning in manifest.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(to_ascii(names, graph.upstream))


def _artifacts(
    manifest: Manifest, stages: list[str], edges: list[tuple[str, str]]
) -> tuple[list[str], list[tuple[str, str]]]:
    """The outputs of `stages` (in run order) and the edges between them: A -> B when the
    stage writing B depends on A (or on a path inside folder A, or a folder holding A)."""
    from pivot.pipeline.producers import inside

    names = [out for s in stages for out in manifest.by_name[s].outs]
    found: list[tuple[str, str]] = []
    for u, d in edges:
        reads = manifest.by_name[d].deps
        for a in manifest.by_name[u].outs:
            if any(dep.rstrip("/") == a.rstrip("/") or inside(dep, a) or inside(a, dep) for dep in reads):
                found += [(a, b) for b in manifest.by_name[d].outs]
    return names, list(dict.fromkeys(found))


def to_ascii(names: list[str], upstream: Mapping[str, Iterable[str]], noun: str = "stage") -> str:
    """Stages grouped by level (longest path from a stage with no upstream), each with
    its upstream; long upstream lists wrap, so 300 stages stay readable.

    `names` is in topological order and holds the upstream of each of its stages.
    """
    position = {name: i for i, name in enumerate(names)}
    level: dict[str, int] = {}
    levels: list[list[str]] = []
    for name in names:  # topological: every upstream stage already has its level
        level[name] = 1 + max((level[u] for u in upstream[name]), default=-1)
        if level[name] == len(levels):
            levels.append([])
        levels[level[name]].append(name)
    lines: list[str] = []
    edges = 0
    for depth, row in enumerate(levels):
        width = min(max(len(n) for n in row), 40)
        lines.append(f"level {depth}")
        for name in row:
            ups = sorted(upstream[name], key=position.__getitem__)
            edges += len(ups)
            if not ups:
                lines.append(f"  {name}")
                continue
            head = f"  {name.ljust(width)}  <- "
            lines.extend(
                textwrap.wrap(
                    ", ".join(ups), width=max(ASCII_WIDTH, len(head) + 20),
                    initial_indent=head, subsequent_indent=" " * len(head),
                    break_on_hyphens=False, break_long_words=False,
                )
            )
    lines.append(f"{len(names)} {noun}{'s' * (len(names) != 1)}, {edges} edge{'s' * (edges != 1)}")
    return "\n".join(lines)


def _dot_id(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(names: list[str], edges: list[tuple[str, str]]) -> str:
    lines = ["digraph pivot {", "  rankdir=TB;", "  node [shape=box];"]
    lines += [f"  {_dot_id(n)};" for n in names]
    lines += [f"  {_dot_id(u)} -> {_dot_id(d)};" for u, d in edges]
    lines.append("}")
    return "\n".join(lines)


def to_mermaid(names: list[str], edges: list[tuple[str, str]]) -> str:
    """Node ids are s0, s1, ...: stage names hold '@', '.' and '-' (and may be `end`),
    which Mermaid ids cannot; the name is the quoted label."""
    ids = {name: f"s{i}" for i, name in enumerate(names)}
    lines = ["flowchart TD"]
    lines += [f'    {ids[n]}["{n.replace(chr(34), "#quot;")}"]' for n in names]
    lines += [f"    {ids[u]} --> {ids[d]}" for u, d in edges]
    return "\n".join(lines)


def to_json(manifest: Manifest, names: list[str], edges: list[tuple[str, str]]) -> dict[str, object]:
    from pivot.pipeline.producers import ProducerIndex

    index = ProducerIndex(manifest)
    links = []
    for u, d in edges:
        paths = [dep for dep in manifest.by_name[d].deps if u in index.producers_of(dep)]
        links.append({"from": u, "to": d, "paths": paths})
    return {"stages": names, "edges": [[u, d] for u, d in edges], "edge_paths": links}
