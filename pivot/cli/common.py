"""What several commands share: loading the pipeline, checking stage names, tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pivot.pipeline.select import resolve_names

if TYPE_CHECKING:
    from pathlib import Path

    from pivot.pipeline.graph import StageGraph
    from pivot.pipeline.manifest import Manifest

__all__ = ["check_stage_names", "load_pipeline", "select", "table"]


def load_pipeline() -> tuple[Path, Manifest, StageGraph]:
    """The project root, its manifest (loaded in a fresh interpreter) and its graph."""
    from pivot.launch.spawn import run_loader
    from pivot.pipeline.graph import build_graph
    from pivot.pipeline.project import find_root

    root = find_root()
    manifest = run_loader(root)
    return root, manifest, build_graph(manifest)


def select(requested: Sequence[str], order: Sequence[str]) -> list[str]:
    """The requested stages (all when none; a variant group names its variants) in
    `order`; unknown names are a UserError."""
    return resolve_names(requested, order) if requested else list(order)


def table(rows: list[list[str]]) -> list[str]:
    """Rows as left-aligned columns two spaces apart; short rows end early."""
    columns = max((len(r) for r in rows), default=0)
    widths = [max(len(r[i]) for r in rows if len(r) > i) for i in range(columns)]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows]


def check_stage_names(requested: Sequence[str], known: Sequence[str]) -> None:
    """Raise a UserError naming every unknown stage (with a guess) and the known ones."""
    resolve_names(requested, known)
