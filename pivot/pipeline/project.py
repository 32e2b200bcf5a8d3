"""Where a project lives: the folder holding `pipeline.py`, and Pivot's state under it."""

from __future__ import annotations

from pathlib import Path

from pivot.errors import UserError

__all__ = ["DVC_FILE", "PIPELINE_FILE", "find_root", "pivot_dir", "project_id"]

PIPELINE_FILE = "pipeline.py"
DVC_FILE = "dvc.yaml"  # a DVC project's pipeline (pivot/pipeline/dvcyaml.py)
STATE_DIR = ".pivot"

_GITIGNORE = """\
# Written by `pivot init`: commit the lock files, keep the rest local.
/*
!/.gitignore
!/stages/
/stages/.*
"""


def find_root(start: Path | None = None) -> Path:
    """Walk up from `start` (the current directory) to the project root: the nearest
    folder with pipeline.py, else the top-most with a dvc.yaml (a DVC project)."""
    here = (start or Path.cwd()).resolve()
    top_dvc: Path | None = None
    for folder in (here, *here.parents):
        if (folder / PIPELINE_FILE).is_file():
            return folder
        if (folder / DVC_FILE).is_file():
            top_dvc = folder
    if top_dvc is not None:
        return top_dvc
    raise UserError(
        f"no {PIPELINE_FILE} (or {DVC_FILE}) found in {here} or any parent folder; "
        f"run Pivot inside a project, or create {PIPELINE_FILE} with @stage functions"
    )


def pivot_dir(root: Path) -> Path:
    """The project's `.pivot/` folder, created with its .gitignore on first use."""
    state = root / STATE_DIR
    (state / "stages").mkdir(parents=True, exist_ok=True)
    gitignore = state / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text(_GITIGNORE)
    return state


PROJECT_ID_FILE = "project-id"


def project_id(root: Path) -> str:
    """The id of this project's `.pivot/` (made on first use): processes that share one
    engine must see the same `.pivot/` (on other hosts, through a shared file system),
    and a broker refuses a pool whose id differs."""
    path = pivot_dir(root) / PROJECT_ID_FILE
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        found = ""
    if found:
        return found
    import os
    import uuid

    tmp = path.with_name(f".{PROJECT_ID_FILE}.{os.getpid()}")
    tmp.write_text(uuid.uuid4().hex + "\n")
    try:
        os.link(tmp, path)  # first writer wins; a racing process reads the winner's id
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()
