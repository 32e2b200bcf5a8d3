"""`pivot import-dvc`: a DVC project's dvc.yaml files written as an equivalent pipeline.py
of command stages (issue 13, point 5).

    dvc.yaml files --load_dvc_stages(symbolic=True)--> DvcStage list --render--> text

One `stage(name=..., cmd=..., ...)` call per stage as the loader expands them (foreach
and matrix variants included), in the loader's order, with its deps, outs, metrics (plots
are outs), wdir, persist, uncached (`cache: false`), frozen, always_changed, and its
params list as dvc.yaml wrote it (list-form params, read as dvc.yaml's are; `params=[]`
when it reads none, so that a params.yaml section of its name is not taken for its
params). In a cmd, a `${...}` that DVC resolves from the default params file stays
symbolic and its key joins the stage's params, so an edit of params.yaml runs the stage
with the new value; one from inline `vars`, another vars file, or a foreach/matrix item
is written out as its value.

Names: a stage of FOLDER/dvc.yaml, `FOLDER/dvc.yaml:NAME` to the loader, becomes
`FOLDER.NAME` (a '/' of FOLDER a '.'), any other character a name may not hold a '_';
two stages given one name are an error. No I/O here but reading the project.
"""

from __future__ import annotations

import json
import posixpath
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pivot.errors import PipelineError
from pivot.pipeline.dvcyaml import (
    DvcStage,
    ParamFiles,
    dvc_files,
    load_dvc_stages,
    top_level_metrics,
    with_refs,
)
from pivot.pipeline.project import DVC_FILE, PIPELINE_FILE

__all__ = ["Imported", "pipeline_name", "render", "verify"]

LINE = 88  # ruff format's default line length
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*")  # stage()'s names


@dataclass(frozen=True)
class Imported:
    text: str  # the pipeline.py
    files: tuple[str, ...]  # the dvc.yaml files read
    stages: tuple[str, ...]  # pipeline.py's names, in order
    renamed: tuple[tuple[str, str], ...]  # (dvc.yaml's name, pipeline.py's) where they differ
    rerun: tuple[str, ...]  # stages whose lock will not match: renamed
    # Top-level `metrics:` files no stage writes: pipeline.py has no place for them.
    unowned_metrics: tuple[str, ...] = ()


def render(root: Path) -> Imported:
    """The pipeline.py equivalent to ROOT's dvc.yaml files (a PipelineError as the loader
    raises it for a file it refuses)."""
    params_files = ParamFiles(root)
    stages = load_dvc_stages(root, symbolic=True, files=params_files)
    files = tuple(dvc_files(root))
    # A top-level `metrics:` file a stage writes becomes that stage's metrics= (what
    # `pivot metrics` reads in a pipeline.py); one no stage writes cannot be carried over.
    top = {path for _, path in top_level_metrics(root)}
    names = _names(stages)
    calls = []
    rerun = []
    for s in stages:
        name = names[s.name]
        calls.append(_call(s, name, _params(s, params_files), top))
        if name != s.name:
            rerun.append(name)
    renamed = tuple((s.name, names[s.name]) for s in stages if names[s.name] != s.name)
    written = {path for s in stages for path in (*s.outs, *s.metrics)}
    text = "\n\n".join([_header(files), "from pivot import stage", *calls]) + "\n"
    return Imported(text, files, tuple(names[s.name] for s in stages), renamed, tuple(rerun),
                    tuple(sorted(top - written)))


def pipeline_name(dvc_name: str, file: str) -> str:
    """A valid pipeline.py name for the stage `dvc_name` of `file` (a dvc.yaml)."""
    name = dvc_name
    if file != DVC_FILE and dvc_name.startswith(f"{file}:"):
        folder = posixpath.dirname(file)
        name = folder.replace("/", ".") + "." + dvc_name[len(file) + 1:]
    if _NAME_RE.fullmatch(name):
        return name
    name = re.sub(r"[^A-Za-z0-9_.@-]", "_", name)
    return name if _NAME_RE.fullmatch(name) else "_" + name


def _names(stages: list[DvcStage]) -> dict[str, str]:
    names: dict[str, str] = {}
    taken: dict[str, str] = {}
    for s in stages:
        name = pipeline_name(s.name, s.file)
        if name in taken:
            raise PipelineError(
                f"{s.file}: stage {s.name!r} and stage {taken[name]!r} would both be named {name!r} in "
                f"{PIPELINE_FILE}: rename one of them in its dvc.yaml"
            )
        taken[name] = s.name
        names[s.name] = name
    return names


def _params(s: DvcStage, files: ParamFiles) -> list[Any]:
    """The stage's params list: dvc.yaml's entries, then the keys its cmd still names as
    ${...} (dvcyaml.with_refs)."""
    entries, _ = with_refs(s, files)
    return entries


def _header(files: tuple[str, ...]) -> str:
    # Below a pipeline.py, Pivot still reads every dvc.yaml git knows (docs/dvc.md): each
    # one, not only the root's, must be moved away.
    moves = ", ".join(f"`git mv {f} {f}.bak`" for f in files)
    them = "it" if len(files) == 1 else "each of them"
    paragraphs = [
        f"Generated by `pivot import-dvc` from {', '.join(files)}: the same stages, as command "
        "stages (docs/dvc.md). A params list names the params.yaml keys a stage reads, as in "
        "dvc.yaml; ${...} in a cmd is one of them, read when the stage runs. Values from vars, "
        "foreach and matrix are written out as text.",
        f"Pivot refuses a stage declared both here and in a dvc.yaml, and reads every dvc.yaml "
        f"below this folder that git knows: move {them} away ({moves}; plain `mv` for a file git "
        "does not track), and delete them once `pivot repro` does what `dvc repro` did and nobody runs "
        "dvc on this project any more.",
    ]
    wrapped = []
    for text in paragraphs:
        text = re.sub(r"`[^`]*`", lambda m: m.group(0).replace(" ", "\0"), text)  # `a command` on one line
        lines = textwrap.wrap(text, LINE - 2, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)
        wrapped.append("\n".join(lines).replace("\0", " "))
    return "\n#\n".join(wrapped)


def _call(s: DvcStage, name: str, params: list[Any], top_metrics: set[str]) -> str:
    args: list[tuple[str, Any]] = [("name", name), ("cmd", s.cmd)]
    outs = [out for out in s.outs if out not in top_metrics]
    metrics = [*s.metrics, *(out for out in s.outs if out in top_metrics and out not in s.metrics)]
    for key, value in (("deps", s.deps), ("outs", outs), ("metrics", metrics)):
        if value:
            args.append((key, list(value)))
    # Even empty: a list makes it a dvc.yaml stage, whose params are never params.yaml's
    # section of its name (DVC's projects name sections after stages).
    args.append(("params", params))
    if s.wdir != ".":
        args.append(("wdir", s.wdir))
    for key, value in (("persist", s.persist), ("uncached", s.uncached)):
        if value:
            args.append((key, list(value)))
    for key, flag in (("frozen", s.frozen), ("always_changed", s.always)):
        if flag:
            args.append((key, True))
    if not s.warm:
        args.append(("warm", False))
    lines = [f"# {line}".rstrip() for line in s.desc.strip().splitlines()]
    lines.append("stage(")
    for key, value in args:
        lines += _expr(value, 4, f"{key}=", ",")
    lines.append(")")
    return "\n".join(lines)


def _expr(value: Any, indent: int, prefix: str, suffix: str) -> list[str]:
    """`prefix value suffix` at `indent`, on one line when it fits, else a list or dict
    one element a line with a trailing comma (as ruff format writes it)."""
    pad = " " * indent
    one = f"{pad}{prefix}{_literal(value)}{suffix}"
    if len(one) <= LINE or not value or not isinstance(value, list | dict):
        return [one]
    if isinstance(value, list):
        inner = [line for v in value for line in _expr(v, indent + 4, "", ",")]
        return [f"{pad}{prefix}[", *inner, f"{pad}]{suffix}"]
    inner = [line for k, v in value.items() for line in _expr(v, indent + 4, f"{_literal(k)}: ", ",")]
    return [f"{pad}{prefix}{{", *inner, f"{pad}}}{suffix}"]


def _literal(value: Any) -> str:
    if isinstance(value, str):
        # Double quotes unless single ones need fewer escapes (ruff format's choice).
        if value.count('"') > value.count("'"):
            return repr(value)
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def verify(imported: Imported, root: Path) -> None:
    """Register the text's stages as a load would (a fresh registry, ROOT the working
    folder): a stage() that refuses one, or stages other than those rendered, is a bug
    of render's, said as one."""
    import contextlib

    from pivot.errors import InfraError
    from pivot.pipeline.stage import clear_registry, registered

    clear_registry()
    try:
        with contextlib.chdir(root):
            exec(compile(imported.text, PIPELINE_FILE, "exec"), {"__name__": "pipeline"})
        got = tuple(registered())
    except PipelineError as exc:
        raise InfraError(f"the {PIPELINE_FILE} made from {DVC_FILE} does not load: {exc}") from exc
    finally:
        clear_registry()
    if got != imported.stages:
        raise InfraError(f"the {PIPELINE_FILE} made from {DVC_FILE} declares {got}, not {imported.stages}")
