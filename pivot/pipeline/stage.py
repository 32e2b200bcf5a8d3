"""The stage decorator: the one API user pipelines import.

    @stage(deps=["data/raw.csv"], outs=["data/clean.csv"])
    def clean(threshold: float = 0.5) -> None: ...

    for size in ("small", "large"):
        stage(name=f"train@{size}", params={"size": size}, deps=[...], outs=[...])(train)

    stage(name="fit", cmd="python src/fit.py --lr ${lr}", params={"lr": 0.1},
          deps=["src/fit.py", "data/clean.csv"], outs=["model.pkl"])

    stage(name="train", cmd="python src/train.py --lr ${train.lr}", params=["train.lr"],
          deps=[...], outs=["model.pkl"])  # dvc.yaml's form: the params.yaml keys it reads

Registration only records the declaration; validation that needs the whole pipeline
(graph, params.yaml) happens in the loader, except that list-form params are read here
(pivot/pipeline/dvcyaml.py), as a dvc.yaml stage's are. Kept free of heavy imports:
every worker and user module imports this.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import field
from pathlib import Path
from typing import Any, TypeVar

from pivot.errors import PipelineError
from pivot.protocol.record import Record, record


@functools.cache
def _cached_signature(func: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(func)


def signature_of(func: Callable[..., Any]) -> inspect.Signature:
    """inspect.signature, once per function: a loop registering one function as many
    stages would otherwise pay for it twice per stage."""
    try:
        return _cached_signature(func)
    except TypeError:  # an unhashable callable
        return inspect.signature(func)

__all__ = ["StageDecl", "clear_registry", "register_dvc_stage", "registered", "stage"]

F = TypeVar("F", bound=Callable[..., Any])

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*")
_DVC_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@/:-]*")  # `sub/dvc.yaml:train`, as DVC names them


@record
class StageDecl(Record):
    name: str
    func: Callable[..., Any]  # a command stage's is `_command_stage` (never called)
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    metrics: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)  # overrides of the defaults (a command's: all)
    tags: tuple[str, ...] = ()  # it runs only on pools with every one of these
    cmd: str | tuple[str, ...] | None = None  # a command stage's command (pivot/runtime/command.py)
    wdir: str = "."  # where a command runs, relative to the project root
    dvc: bool = False  # from dvc.yaml: `params` are the params.yaml keys it reads, with their values
    persist: tuple[str, ...] = ()  # dvc.yaml's persist: true outputs
    uncached: tuple[str, ...] = ()  # dvc.yaml's cache: false outputs
    frozen: bool = False
    always: bool = False
    warm: bool = True  # a `python script.py` command may run forked from its warm worker (pivot/runtime/warm.py)


# The fields a function stage leaves at their defaults.
_DECL_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(StageDecl) if f.default is not dataclasses.MISSING
}


def _command_stage() -> None:
    """Stands for the function of a command stage (it has none)."""


# Registration order matters (it is the pipeline's listing order). The loader and each
# worker are fresh processes, so one registry per process is exactly one pipeline.
_registry: dict[str, StageDecl] = {}


def registered() -> dict[str, StageDecl]:
    return _registry


def clear_registry() -> None:
    _registry.clear()
    _param_files.clear()


def stage(
    deps: Iterable[str] = (),
    outs: Iterable[str] = (),
    metrics: Iterable[str] = (),
    *,
    name: str | None = None,
    params: dict[str, Any] | list[Any] | None = None,
    tags: Iterable[str] = (),
    cmd: str | Iterable[str] | None = None,
    wdir: str = ".",
    persist: Iterable[str] = (),
    uncached: Iterable[str] = (),
    frozen: bool = False,
    always_changed: bool = False,
    warm: bool = True,
) -> Callable[[F], F]:
    """Declare a stage. Returns the function unchanged, so it stays callable.

    With `cmd` (a command line run by $SHELL, else /bin/sh, as DVC runs it; or a list of arguments run without a shell) it
    declares a command stage at once, named `name`, with no function: `params` are its
    params and their defaults, reaching the command as `${name}` in `cmd` and as
    environment variables; it runs in `wdir` (relative to the project root). A command
    that runs a Python script with Pivot's interpreter (`python src/train.py ...`) runs
    forked from a warm worker, its third-party imports done; `warm=False` starts a fresh
    interpreter for a script that needs one (docs/dvc.md).

    A command stage's `params` may instead be a list in dvc.yaml's form: the params.yaml
    keys it reads (`"train.lr"`, a whole section `"train"`; params.yaml is found from its
    `wdir`, as DVC does), `"FILE:key"` or `{"FILE": ["k1", "k2"]}` for another file. Their
    values are read as the pipeline loads; it runs again exactly when one changes, and
    `${train.lr}` in `cmd` is that value. Command stages also take dvc.yaml's flags:
    `persist` (outputs kept in place before a run and after a failure), `uncached`
    (outputs hashed but never stored: `cache: false`), `frozen` (never run) and
    `always_changed` (run every time); docs/dvc.md.

    `tags` (e.g. ["gpu"]) send the stage only to worker pools started with every one of
    them (`pivot workers --tag gpu`)."""
    if callable(deps):
        raise PipelineError(
            f"@stage on {getattr(deps, '__qualname__', deps)!r} needs parentheses: "
            "write @stage(deps=[...], outs=[...]) or @stage()"
        )
    dep_list = _paths("deps", deps, name)
    out_list = _paths("outs", outs, name)
    metric_list = _paths("metrics", metrics, name)
    tag_list = _tags(tags, name)
    persist_list = _paths("persist", persist, name)
    uncached_list = _paths("uncached", uncached, name)
    if cmd is not None:
        _register_command(name, cmd, wdir, params, dep_list, out_list, metric_list, tag_list)
        _command_flags(str(name), persist_list, uncached_list, frozen, always_changed)
        if warm is not True:
            if warm is not False:
                raise PipelineError(f"stage {name!r}: warm= is True or False, got {warm!r}")
            _registry[str(name)] = dataclasses.replace(_registry[str(name)], warm=False)
        return _not_a_decorator(name)
    if warm is not True:
        raise PipelineError(f"stage {name or '(a function)'!r}: warm= goes with cmd= (a function always runs in its worker)")
    if wdir != ".":
        raise PipelineError(f"stage {name or '(a function)'!r}: wdir= goes with cmd= (a function runs in the project root)")

    def register(func: F) -> F:
        stage_name = name if name is not None else getattr(func, "__name__", "")
        where = f"stage {stage_name!r}"
        if not callable(func) or not hasattr(func, "__code__"):
            raise PipelineError(f"{where}: @stage must decorate a function, got {func!r}")
        qualname = func.__qualname__
        if "<locals>" in qualname or "." in qualname or func.__name__ == "<lambda>":
            raise PipelineError(
                f"{where}: function {qualname!r} in {func.__module__} is not at module level; "
                "workers import stage functions by name, so define it at the top of a module"
            )
        if not isinstance(stage_name, str) or not _NAME_RE.fullmatch(stage_name):
            raise PipelineError(
                f"stage name {stage_name!r} is invalid: use letters, digits, '_', '-', '.', '@'"
            )
        if stage_name in _registry:
            first = _registry[stage_name].func
            raise PipelineError(
                f"duplicate stage name {stage_name!r}: {_where(first)} and {_where(func)}; "
                "give variants distinct names with stage(name=...)"
            )
        if isinstance(params, list):
            raise PipelineError(
                f"{where}: params as a list (params.yaml keys, dvc.yaml's form) goes with cmd=; "
                "a function stage takes params={name: value} overriding its defaults"
            )
        if persist_list or uncached_list or frozen is not False or always_changed is not False:
            raise PipelineError(f"{where}: persist=, uncached=, frozen= and always_changed= go with cmd= (command stages)")
        overrides = dict(params or {})
        _check_overrides(stage_name, func, overrides)
        # As StageDecl(...), without a frozen dataclass's setattr a field (10,000 stages).
        decl = object.__new__(StageDecl)
        decl.__dict__.update(
            _DECL_DEFAULTS, name=stage_name, func=func, deps=tuple(dep_list), outs=tuple(out_list + metric_list),
            metrics=tuple(metric_list), params=overrides, tags=tuple(tag_list),
        )
        _registry[stage_name] = decl
        return func

    return register


def _register_command(
    name: str | None, cmd: str | Iterable[str], wdir: str, params: dict[str, Any] | list[Any] | None,
    deps: list[str], outs: list[str], metrics: list[str], tags: list[str],
) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise PipelineError(f"a command stage needs a valid name=: got {name!r} (letters, digits, '_', '-', '.', '@')")
    where = f"stage {name!r}"
    if isinstance(cmd, str):
        command: str | tuple[str, ...] = cmd
        empty = not cmd.strip()
    else:
        command = tuple(cmd)
        if not all(isinstance(part, str) for part in command):
            raise PipelineError(f"{where}: cmd must be a string or a list of strings, got {cmd!r}")
        empty = not command
    if empty:
        raise PipelineError(f"{where}: cmd is empty")
    if not isinstance(wdir, str) or not wdir.strip() or wdir.startswith("/") or ".." in Path(wdir).parts:
        raise PipelineError(f"{where}: wdir {wdir!r} must be a folder inside the project, relative to its root")
    if params is not None and not isinstance(params, dict | list):
        raise PipelineError(
            f"{where}: params must be a dict of names to default values, or a list of params.yaml keys"
        )
    if name in _registry:
        raise PipelineError(f"duplicate stage name {name!r}: give each stage a distinct name=")
    if isinstance(params, list):  # dvc.yaml's form: registered as a dvc.yaml stage is
        values, listed = _listed_params(name, params, Path(wdir).as_posix(), command), True
    else:
        values, listed = dict(params or {}), False
    _registry[name] = StageDecl(
        name, _command_stage, tuple(deps), tuple(outs + metrics), tuple(metrics), values,
        tuple(tags), command, Path(wdir).as_posix(), dvc=listed,
    )


# Each params file read once per pipeline load (the registry's life) by list-form params.
_param_files: dict[Path, Any] = {}


def _listed_params(name: str, given: list[Any], wdir: str, command: str | tuple[str, ...]) -> dict[str, Any]:
    """A command stage's params=[...] in dvc.yaml's form, read as a dvc.yaml stage's
    (pivot/pipeline/dvcyaml.py): the keys it reads with their values now, from the
    project root's files. `"FILE:key"` is `{"FILE": ["key"]}`."""
    from pivot.pipeline.dvcyaml import ParamFiles, tracked_params
    from pivot.pipeline.project import find_root
    from pivot.runtime.command import interpolate

    root = find_root()
    files = _param_files.setdefault(root, ParamFiles(root))
    entries = [{e.partition(":")[0]: [e.partition(":")[2]]} if isinstance(e, str) and ":" in e else e for e in given]
    values = tracked_params(entries, files, f"stage {name!r}", wdir)
    interpolate(name, command, values)  # every ${...} of its cmd is one of them: said now
    return values


def _command_flags(name: str, persist: list[str], uncached: list[str], frozen: bool, always_changed: bool) -> None:
    """A command stage's persist=, uncached=, frozen= and always_changed= (dvc.yaml's
    `persist: true`, `cache: false`, `frozen`, `always_changed`)."""
    where = f"stage {name!r}"
    for flag, value in (("frozen", frozen), ("always_changed", always_changed)):
        if not isinstance(value, bool):
            raise PipelineError(f"{where}: {flag}= is True or False, got {value!r}")
    decl = _registry[name]
    declared = {posixpath.normpath(out): out for out in decl.outs}
    chosen: dict[str, list[str]] = {"persist": [], "uncached": []}
    for field_name, paths in (("persist", persist), ("uncached", uncached)):
        for path in paths:
            out = declared.get(posixpath.normpath(path))
            if out is None:
                raise PipelineError(f"{where}: {field_name}= names {path!r}, which is none of its outs or metrics")
            chosen[field_name].append(out)
    if persist or uncached or frozen or always_changed:
        _registry[name] = dataclasses.replace(
            decl, persist=tuple(chosen["persist"]), uncached=tuple(chosen["uncached"]), frozen=frozen,
            always=always_changed,
        )


def register_dvc_stage(
    name: str, cmd: str, wdir: str, deps: list[str], outs: list[str], metrics: list[str], params: dict[str, Any],
    persist: list[str], uncached: list[str], frozen: bool, always: bool, warm: bool = True,
) -> None:
    """A stage of dvc.yaml (pivot/pipeline/dvcyaml.py), as a command stage."""
    if not _DVC_NAME_RE.fullmatch(name):
        raise PipelineError(
            f"dvc.yaml: stage name {name!r} is not one Pivot can use (letters, digits, '_', '-', '.', '@', "
            "and '/' ':' from the file's path)"
        )
    if name in _registry:
        raise PipelineError(f"stage {name!r} is declared in both pipeline.py and dvc.yaml: rename one")
    _registry[name] = StageDecl(
        name, _command_stage, tuple(deps), tuple(outs + metrics), tuple(metrics), dict(params), (), cmd, wdir,
        dvc=True, persist=tuple(persist), uncached=tuple(uncached), frozen=frozen, always=always, warm=warm,
    )


def _not_a_decorator(name: str | None) -> Callable[[F], F]:
    def refuse(func: F) -> F:
        raise PipelineError(f"stage {name!r} has a cmd: it takes no function (drop the @ or the cmd=)")

    return refuse


def _tags(tags: Iterable[str], stage_name: str | None) -> list[str]:
    if tags == ():  # (the default: 10,000 stages call this)
        return []
    where = f"stage {stage_name!r}" if stage_name else "@stage"
    if isinstance(tags, str):
        raise PipelineError(f"{where}: tags must be a list of names, got the string {tags!r}; write tags=[{tags!r}]")
    found = []
    for tag in tags:
        if not isinstance(tag, str) or not _NAME_RE.fullmatch(tag):
            raise PipelineError(f"{where}: tag {tag!r} is invalid: use letters, digits, '_', '-', '.', '@'")
        if tag not in found:
            found.append(tag)
    return sorted(found)


def _where(func: Callable[..., Any]) -> str:
    code = getattr(func, "__code__", None)
    if code is None:
        return repr(func)
    return f"{func.__qualname__} ({code.co_filename}:{code.co_firstlineno})"


def _check_overrides(stage_name: str, func: Callable[..., Any], overrides: dict[str, Any]) -> None:
    if not overrides:
        return
    unknown = sorted(set(overrides) - signature_of(func).parameters.keys())
    if unknown:
        raise PipelineError(
            f"stage {stage_name!r}: params={unknown} are not parameters of {func.__qualname__}()"
        )


def _paths(field_name: str, paths: Iterable[str], stage_name: str | None) -> list[str]:
    if type(paths) is list or type(paths) is tuple:  # the usual, checked in a plain loop
        for p in paths:
            if type(p) is not str or not p.strip() or not p.isascii():
                break
        else:
            return list(paths)
    where = f"stage {stage_name!r}" if stage_name else "@stage"
    if isinstance(paths, str):
        raise PipelineError(f"{where}: {field_name} must be a list of paths, not the string {paths!r}")
    result = []
    for p in paths:
        if not isinstance(p, str) or not p.strip():
            raise PipelineError(f"{where}: {field_name} holds {p!r}, expected a path string")
        if not p.isascii():
            try:
                p.encode()
            except UnicodeEncodeError:  # a file name of other bytes, from os.listdir: locks, messages and
                # the state cache keep paths as UTF-8 text (it was a traceback of the state cache)
                raise PipelineError(
                    f"{where}: {field_name} holds {p!r}, a file name that is not UTF-8 (bytes of another "
                    "encoding); rename the file to a UTF-8 name"
                ) from None
        result.append(p)
    return result
