"""A DVC project's `dvc.yaml` as a pipeline source (issue 13): its stages become command
stages (pivot/runtime/command.py), beside any in pipeline.py.

Read as DVC reads it: `stages` with `cmd` (a string, or a list of commands run one after
another), `deps`, `outs`, `metrics`, `plots`, `params`, `wdir`, `vars`, `foreach`/`do`,
`matrix`, and the keys that change nothing here (`desc`, `meta`); top-level `vars`,
`params`, `metrics`, `plots` and `artifacts`. `${...}` is resolved when the file is
loaded, from params.yaml, then `vars` (files or inline maps), then a `foreach` item
(`${item}`, `${key}`) or a `matrix` combination (`${item.NAME}`). A stage's params are
the params.yaml keys it lists (dotted paths, whole sections, or `{FILE: [keys]}` for
another file), with their values: it runs again exactly when one of those changes.
Paths are relative to the stage's `wdir` (default: the folder of dvc.yaml).

Top-level `metrics` (files no stage owns) are read by `pivot metrics` (top_level_metrics).
`frozen: true` stages never run, `always_changed: true` ones run every time (never
restored from the run cache), `persist: true` outputs stay in place before a run and
after a failure, and `cache: false` outputs are hashed but never stored (nor listed in
Pivot's .gitignore block: they stay in git). A dvc.yaml below the root names its stages
`FOLDER/dvc.yaml:NAME` (pivot/state/lock.py escapes the `/` in file names). Any other key
is an error naming the file, the stage and the key, never a silent skip.

`pivot import-dvc` (pivot/pipeline/dvcimport.py) reads the same files with
`symbolic=True`: a `${...}` of a cmd that comes from the default params file is kept (as
`${KEY}`, or `${FILE:KEY}` below the root), for the stage to resolve when it runs.
`tracked_params` is also how pipeline.py's list-form params are read (stage.py).
"""

from __future__ import annotations

import itertools
import posixpath
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pivot.errors import PipelineError
from pivot.pipeline.params import PARAMS_FILE
from pivot.pipeline.project import DVC_FILE

__all__ = ["DvcStage", "ParamFiles", "load_dvc_stages", "param_label", "top_level_metrics", "tracked_params",
           "with_refs"]

_TOP_KEYS = {"stages", "vars", "params", "metrics", "plots", "artifacts", "datasets"}
_STAGE_KEYS = {"cmd", "deps", "outs", "metrics", "plots", "params", "wdir", "vars", "desc", "meta", "frozen",
               "always_changed"}
_GENERATOR_KEYS = {"foreach", "do", "matrix"}
# Keys of an output that say nothing about running it (DVC's remote, plot styling).
_IGNORED_FLAGS = {"desc", "remote", "push", "type", "labels", "meta", "x", "y", "title", "template", "x_label",
                  "y_label"}
_PLACEHOLDER = re.compile(r"(?<!\\)\$\{\s*([^}]*?)\s*\}")  # `\${` is DVC's escape for `${`
_SKIP_DIRS = {".git", ".dvc", ".pivot", "node_modules", "__pycache__", ".venv", "venv"}


class DvcStage:
    """One stage of dvc.yaml, resolved: paths relative to the project root."""

    warm = True  # `meta: {pivot: {warm: false}}`: its script always starts a fresh interpreter
    # What `pivot import-dvc` writes besides (pivot/pipeline/dvcimport.py):
    file = DVC_FILE  # the dvc.yaml it comes from
    desc = ""
    declared: tuple[Any, ...] = ()  # its `params` entries as written (resolved), relative to its wdir
    refs: tuple[str, ...] = ()  # keys its cmd still names as ${...} (symbolic=True), from:
    refs_file = PARAMS_FILE  # its dvc.yaml's default params file

    def __init__(self, name: str, cmd: str, wdir: str, deps: list[str], outs: list[str], metrics: list[str],
                 params: dict[str, Any], persist: list[str], uncached: list[str], frozen: bool, always: bool) -> None:
        self.persist = persist
        self.uncached = uncached
        self.frozen = frozen
        self.always = always
        self.name = name
        self.cmd = cmd
        self.wdir = wdir
        self.deps = deps
        self.outs = outs
        self.metrics = metrics
        self.params = params


def load_dvc_stages(
    root: Path, *, symbolic: bool = False, files: ParamFiles | None = None, below_pipeline: bool = False,
) -> list[DvcStage]:
    """The stages of every dvc.yaml of the project (none without ROOT/dvc.yaml), the
    root's first: a file below the root names its stages `FOLDER/dvc.yaml:NAME`, reads
    FOLDER/params.yaml, and its paths start from FOLDER (or its `wdir` below FOLDER).
    `symbolic`: keep the ${...} of a cmd that come from the default params file (refs).
    `below_pipeline`: ROOT holds pipeline.py, and the dvc.yaml files below it are read even
    without one at the root, found by git only (a walk of a project's data on every load
    would cost too much)."""
    at_root = (root / DVC_FILE).is_file()
    if not at_root and not below_pipeline:
        return []
    found: list[DvcStage] = []
    files = files or ParamFiles(root)
    for rel in dvc_files(root, walk=at_root):
        found += _load_file(root, rel, files, symbolic)
    return found


def top_level_metrics(root: Path, *, below_pipeline: bool = False) -> list[tuple[str, str]]:
    """(dvc.yaml, path from the root) for each file a top-level `metrics:` lists (metrics
    no stage owns, as DVC allows), from the dvc.yaml files load_dvc_stages reads; a path
    starts from its dvc.yaml's folder."""
    at_root = (root / DVC_FILE).is_file()
    if not at_root and not below_pipeline:
        return []
    found: list[tuple[str, str]] = []
    for rel in dvc_files(root, walk=at_root):
        data = _read_yaml(root / rel, rel)
        listed = data.get("metrics") if isinstance(data, dict) else None
        if listed is None:
            continue
        if not isinstance(listed, list):
            raise PipelineError(f"{rel}: top-level `metrics` must be a list of files, got {type(listed).__name__}")
        place = _Place(rel, posixpath.dirname(rel) or ".")
        for entry in listed:
            if not isinstance(entry, str) or not entry:
                raise PipelineError(f"{rel}: top-level `metrics` holds {entry!r}, expected a file path")
            found.append((rel, _from_wdir(place.folder, entry, f"{rel}: top level", "metrics")))
    return found


def dvc_files(root: Path, *, walk: bool = True) -> list[str]:
    """Every dvc.yaml below ROOT (project-relative), the root's first: git's files and
    untracked ones it does not ignore, or outside a repository, a walk (`walk`; else
    none but the root's)."""
    names: list[str] | None = None
    # git is asked only inside a repository: its start is ~3 ms of every pipeline load
    # (pipeline.py's too, which looks for dvc.yaml files below it), subprocess's import
    # ~3 ms more.
    if in_git_repo(root):
        import subprocess

        try:
            listed = subprocess.run(
                ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", DVC_FILE, f"*/{DVC_FILE}"],
                cwd=root, capture_output=True, text=True, timeout=30,
            )
            names = listed.stdout.split("\n") if listed.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            pass
    if names is None:
        names = [p.relative_to(root).as_posix() for p in _walk(root)] if walk else []
    found = {n for n in names if n and (n == DVC_FILE or n.endswith("/" + DVC_FILE)) and (root / n).is_file()}
    if (root / DVC_FILE).is_file():
        found.add(DVC_FILE)
    return sorted(found, key=lambda n: (n != DVC_FILE, n))


def in_git_repo(root: Path) -> bool:
    """Whether git would find a repository for ROOT: GIT_DIR names one, or ROOT or a
    folder above it holds `.git` (a folder, or a worktree's file)."""
    import os

    if os.environ.get("GIT_DIR"):
        return True
    folder = os.path.abspath(root)
    while True:
        if os.path.lexists(os.path.join(folder, ".git")):
            return True
        parent = os.path.dirname(folder)
        if parent == folder:
            return False
        folder = parent


def _walk(root: Path) -> list[Path]:
    import os

    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".")]
        if DVC_FILE in names:
            found.append(Path(folder) / DVC_FILE)
    return found


def _load_file(root: Path, rel: str, files: ParamFiles, symbolic: bool) -> list[DvcStage]:
    folder = posixpath.dirname(rel) or "."
    prefix = "" if rel == DVC_FILE else f"{rel}:"
    data = _read_yaml(root / rel, rel)
    if data is None:
        return []
    if not isinstance(data, dict):
        raise PipelineError(f"{rel}: expected a map with `stages`, got {type(data).__name__}")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise PipelineError(f"{rel}: unknown top-level key {unknown[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    place = _Place(rel, folder)
    default = place.path(PARAMS_FILE)
    context = dict(files.get(default))
    origin = dict.fromkeys(context, default)  # each top-level name: the file it comes from
    context.update(_vars(place, data.get("vars"), files, f"{rel}: vars", origin))
    stages = data.get("stages") or {}
    if not isinstance(stages, dict):
        raise PipelineError(f"{rel}: `stages` must be a map of stage names")
    found: list[DvcStage] = []
    for name, body in stages.items():
        if not isinstance(body, dict):
            raise PipelineError(f"{rel}: stage {name!r} must be a map (cmd, deps, outs, ...)")
        for item_name, item_context, item_body in _expand(place, str(name), body, context):
            kept = _Kept(default, origin) if symbolic else None
            if kept is not None and item_context is not context:  # a foreach item or matrix combination
                kept.update({"item": "", "key": ""})
            found.append(_stage(place, prefix + item_name, item_body, item_context, files, kept))
            found[-1].file = rel
    return found


class _Kept:
    """The `${...}` of a cmd left as they are (load_dvc_stages(symbolic=True)): those whose
    top-level name comes from the default params file, its keys then read as the stage's
    params. Below the root they become `${FILE:KEY}`, as the stage's params name them."""

    def __init__(self, file: str, origin: dict[str, str]) -> None:
        self.file = file
        self.names: set[str] = set()
        self.refs: list[str] = []
        self.update(origin)

    def update(self, origin: dict[str, str]) -> None:
        """Names now defined by these sources (a file, or "" for a map or an item)."""
        for name, source in origin.items():
            if source == self.file:
                self.names.add(name)
            else:
                self.names.discard(name)

    def keeps(self, name: str) -> bool:
        return name.split(".")[0] in self.names

    def placeholder(self, name: str) -> str:
        if name not in self.refs:
            self.refs.append(name)
        return "${" + param_label(self.file, name) + "}"


class _Place:
    """A dvc.yaml: its project path, and the folder its relative paths start from."""

    def __init__(self, rel: str, folder: str) -> None:
        self.rel = rel
        self.folder = folder

    def path(self, name: str) -> str:
        return posixpath.normpath(posixpath.join(self.folder, name))


def _read_yaml(path: Path, shown: str) -> Any:
    from pivot.pipeline.params import load_yaml

    try:
        return load_yaml(path.read_text())
    except OSError as exc:
        raise PipelineError(f"{shown}: cannot read it: {exc.strerror or exc}") from None
    except Exception as exc:  # a YAML error: its message says where
        raise PipelineError(f"{shown}: not valid YAML: {exc}") from None


class ParamFiles:
    """Params files, read once each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.read: dict[str, dict[str, Any]] = {}
        # The `vars:` files among them: their values are written into the stages as they
        # load (commands, deps, outs), so they are the pipeline's code, as dvc.yaml is.
        self.vars_files: set[str] = set()

    def get(self, name: str, *, required: bool = False, reader: str = "a dvc.yaml") -> dict[str, Any]:
        if name not in self.read:
            path = self.root / name
            if not path.is_file():
                if required:
                    raise PipelineError(f"params file {name} does not exist (read by {reader})")
                self.read[name] = {}
            else:
                try:
                    data = _read_params(path, name)
                except PipelineError as exc:  # say who reads it: the stage to fix
                    raise PipelineError(f"{exc} (read by {reader})") from None
                if data is not None and not isinstance(data, dict):
                    raise PipelineError(f"{name}: expected a map of params, got {type(data).__name__} (read by {reader})")
                self.read[name] = data or {}
        return self.read[name]


def _read_params(path: Path, shown: str) -> Any:
    """A params or vars file by its extension, as DVC reads them: TOML, JSON, else YAML."""
    suffix = path.suffix.lower()
    if suffix == ".py":
        raise PipelineError(
            f"{shown}: Python params files are not supported yet (DVC reads their constants); "
            "write them as YAML, JSON or TOML"
        )
    if suffix not in (".toml", ".json"):
        return _read_yaml(path, shown)
    import json
    import tomllib

    try:
        text = path.read_text()
        return tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except OSError as exc:
        raise PipelineError(f"{shown}: cannot read it: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise PipelineError(f"{shown}: not valid {suffix[1:].upper()}: {exc}") from None


def _vars(place: _Place, given: Any, files: ParamFiles, where: str, origin: dict[str, str]) -> dict[str, Any]:
    """`vars:` entries merged: inline maps, or files (`FILE` or `FILE:key1,key2`). `origin`
    gets each name's source: the file, or "" for a map."""
    merged: dict[str, Any] = {}
    if given is not None and not isinstance(given, list):
        raise PipelineError(f"{where}: expected a list of files and maps, got {given!r}")
    for entry in given or []:
        if isinstance(entry, dict):
            merged.update(entry)
            origin.update(dict.fromkeys(entry, ""))
        elif isinstance(entry, str):
            name, _, keys = entry.partition(":")
            files.vars_files.add(place.path(name))
            content = files.get(place.path(name), required=True, reader=where)
            if keys:
                for key in keys.split(","):
                    merged[key.strip()] = _lookup(content, key.strip(), f"{where}: {entry}")
                    origin[key.strip()] = place.path(name)
            else:
                merged.update(content)
                origin.update(dict.fromkeys(content, place.path(name)))
        else:
            raise PipelineError(f"{where}: an entry must be a file name or a map, got {entry!r}")
    return merged


def _expand(
    place: _Place, name: str, body: dict[str, Any], context: dict[str, Any],
) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """A stage, or the stages its `foreach` or `matrix` makes, with their contexts."""
    where = f"{place.rel}: stage {name!r}"
    if "foreach" in body:
        extra = sorted(set(body) - {"foreach", "do"})
        if extra or not isinstance(body.get("do"), dict):
            raise PipelineError(f"{where}: `foreach` goes with `do` (a stage) and nothing else")
        items = _resolve_value(body["foreach"], context, where)
        named = _namer(body["foreach"])
        out = []
        if isinstance(items, dict):
            for key, item in items.items():
                out.append((f"{name}@{named(key)}", {**context, "key": key, "item": item}, body["do"]))
        elif isinstance(items, list):
            # DVC's names: the items themselves, unless one is a map or a list; then every
            # variant is named by its index. Items that print alike make one variant (the last).
            composite = any(isinstance(item, dict | list) for item in items)
            variants = {named(index if composite else item): (index, item) for index, item in enumerate(items)}
            for label, (index, item) in variants.items():
                out.append((f"{name}@{label}", {**context, "key": index, "item": item}, body["do"]))
        else:
            raise PipelineError(f"{where}: `foreach` must be a list or a map")
        return out
    if "do" in body:
        raise PipelineError(f"{where}: `do` without `foreach`")
    if "matrix" in body:
        matrix = body["matrix"]
        if not isinstance(matrix, dict) or not matrix:
            raise PipelineError(f"{where}: `matrix` must be a map of names to lists")
        axes = []
        namers = {}
        for key, raw in matrix.items():
            values = _resolve_value(raw, context, where)
            if not isinstance(values, list) or not values:
                raise PipelineError(f"{where}: matrix {key!r} must be a non-empty list")
            axes.append([(key, i, v) for i, v in enumerate(values)])
            namers[key] = _namer(raw)
        stage_body = {k: v for k, v in body.items() if k != "matrix"}
        out = []
        for combo in itertools.product(*axes):
            labels = [f"{k}{i}" if isinstance(v, dict | list) else namers[k](v) for k, i, v in combo]
            item = {k: v for k, _, v in combo}
            out.append((f"{name}@{'-'.join(labels)}", {**context, "item": item}, stage_body))
        return out
    return [(name, context, body)]


def _dvc_str(value: Any) -> str:
    """A variant's name part as DVC writes it (its to_str): `true`/`false`, `None`, str()."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _namer(raw: Any) -> Callable[[Any], str]:
    """How DVC names the variants of a `foreach` or matrix axis written as `raw`: values
    written in dvc.yaml itself by its to_str (`true`), values a `${...}` took from params
    or vars by Python's str (`True`): `dvc stage list` says `fl@True` for `foreach:
    ${flags}` and `fl@true` for `foreach: [true]`, and stages are addressed by name."""
    return str if isinstance(raw, str) and "${" in raw else _dvc_str


def _stage(
    place: _Place, name: str, body: dict[str, Any], context: dict[str, Any], files: ParamFiles, kept: _Kept | None,
) -> DvcStage:
    where = f"{place.rel}: stage {name!r}"
    unknown = sorted(set(body) - _STAGE_KEYS - _GENERATOR_KEYS)
    if unknown:
        raise PipelineError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_STAGE_KEYS))})")
    for flag in ("frozen", "always_changed"):
        if not isinstance(body.get(flag, False), bool):
            raise PipelineError(f"{where}: {flag} must be true or false, got {body[flag]!r}")
    if "vars" in body:
        origin: dict[str, str] = {}
        given_vars = _resolve_value(body["vars"], context, where)
        context = {**context, **_vars(place, given_vars, files, f"{where}: vars", origin)}
        if kept is not None:
            kept.update(origin)
    warm = _warm(body.get("meta"), where)
    desc = body.get("desc")
    body = {k: v for k, v in body.items() if k not in ("vars", "desc", "meta")}
    resolved = _resolve_value(body, context, where)
    # A map in a cmd becomes command options, as DVC writes it (command.cmd_text).
    cmd = _resolve_value(body.get("cmd"), context, where, kept, in_cmd=True)
    if isinstance(cmd, list):
        if not cmd or not all(isinstance(c, str) and c.strip() for c in cmd):
            raise PipelineError(f"{where}: cmd must be a command or a list of commands")
        cmd = " && ".join(f"( {c} )" if len(cmd) > 1 else c for c in cmd)  # one after another, as DVC
    if not isinstance(cmd, str) or not cmd.strip():
        raise PipelineError(f"{where}: cmd is missing (every stage needs a command)")
    given_wdir = resolved.get("wdir", ".")
    if not isinstance(given_wdir, str) or given_wdir.startswith("/") \
            or place.path(given_wdir).startswith(".."):
        raise PipelineError(f"{where}: wdir {given_wdir!r} must be a folder inside the project")
    wdir = place.path(given_wdir)

    persist: list[str] = []
    uncached: list[str] = []

    def paths(key: str) -> list[str]:
        found = []
        for entry in resolved.get(key) or []:
            if isinstance(entry, dict) and len(entry) == 1:
                [(path, flags)] = entry.items()
                if flags is not None and not isinstance(flags, dict):
                    raise PipelineError(f"{where}: {key}: {path}: expected its options (cache:, persist:, ...), "
                                        f"got {flags!r}")
                for flag, value in (flags or {}).items():
                    if flag in _IGNORED_FLAGS:
                        continue
                    if flag == "cache" and value is False:
                        uncached.append(_from_wdir(wdir, str(path), where, key))
                    elif flag == "persist" and value is True:
                        persist.append(_from_wdir(wdir, str(path), where, key))
                    elif flag not in ("cache", "persist") or not isinstance(value, bool):
                        raise PipelineError(f"{where}: {key}: {path}: unknown key or value {flag}: {value!r}")
            elif isinstance(entry, str):
                path = entry
            else:
                raise PipelineError(f"{where}: {key} holds {entry!r}, expected a path")
            found.append(_from_wdir(wdir, str(path), where, key))
        return found

    deps, outs, metrics, plots = paths("deps"), paths("outs"), paths("metrics"), paths("plots")
    params = tracked_params(resolved.get("params"), files, where, wdir)
    found = DvcStage(name, cmd, wdir, deps, outs + plots, metrics, params, persist, uncached,
                     bool(resolved.get("frozen")), bool(resolved.get("always_changed")))
    found.warm = warm
    found.desc = desc if isinstance(desc, str) else ""
    found.declared = tuple(resolved.get("params") or ())
    if kept is not None:
        found.refs, found.refs_file = tuple(kept.refs), kept.file
    return found


def _warm(meta: Any, where: str) -> bool:
    """`meta: {pivot: {warm: false}}`: the one key of `meta` Pivot reads."""
    ours = meta.get("pivot") if isinstance(meta, dict) else None
    if ours is None:
        return True
    if not isinstance(ours, dict) or set(ours) - {"warm"} or not isinstance(ours.get("warm", True), bool):
        raise PipelineError(f"{where}: meta: pivot: holds {ours!r}; Pivot reads only `warm: true|false` there")
    return bool(ours.get("warm", True))


def _from_wdir(wdir: str, path: str, where: str, key: str) -> str:
    joined = posixpath.normpath(posixpath.join(wdir, path))
    if joined.startswith("..") or path.startswith("/"):
        raise PipelineError(f"{where}: {key}: {path} is outside the project")
    return joined


def with_refs(s: DvcStage, files: ParamFiles) -> tuple[list[Any], dict[str, Any]]:
    """A symbolic stage's params (load_dvc_stages(symbolic=True)): its dvc.yaml entries
    (relative to its wdir) then every key its cmd still names as ${...} that they do not
    already give it (a whole section gives its keys), and all their values, as the stage
    reads them: so a params.yaml edit is a params change, and the stage runs with the new
    value (its cmd is resolved when it runs: pivot/runtime/command.py)."""
    from pivot.runtime.command import interpolate

    # `- other.yaml:` (no keys: all of them) as a list, the form stage() documents
    entries = [{k: v or [] for k, v in e.items()} if isinstance(e, dict) else e for e in s.declared]
    values = dict(s.params)
    where = f"{s.file}: stage {s.name!r}"
    own = s.refs_file == posixpath.normpath(posixpath.join(s.wdir, PARAMS_FILE))
    added: list[str] = []
    for ref in s.refs:
        try:
            interpolate(s.name, "${" + param_label(s.refs_file, ref) + "}", values)
            continue  # one of its params already, or inside one
        except PipelineError:
            pass
        entry: Any = ref if own else {posixpath.relpath(s.refs_file, s.wdir): [ref]}
        values.update(tracked_params([entry], files, where, s.wdir))
        if own:
            entries.append(ref)
        else:
            added.append(ref)
    if added:
        entries.append({posixpath.relpath(s.refs_file, s.wdir): added})
    return entries, values


def param_label(file: str, key: str) -> str:
    """How a stage's params name a key of a params file (FILE from the project root):
    `key` for the root's params.yaml, `FILE:key` for another file."""
    return key if file == PARAMS_FILE else f"{file}:{key}"


def tracked_params(given: Any, files: ParamFiles, where: str, wdir: str) -> dict[str, Any]:
    """The params a stage lists (DVC's form: `key`, `dotted.key`, `section`, or
    `{FILE: [keys]}`, an empty list for all of FILE), with their values, named by
    param_label. Files are found from the stage's wdir, as DVC does."""
    tracked: dict[str, Any] = {}
    default = posixpath.normpath(posixpath.join(wdir, PARAMS_FILE))
    for entry in given or []:
        if isinstance(entry, str):
            value = _lookup(files.get(default), entry, f"{where}: params: {entry} ({default})")
            tracked[param_label(default, entry)] = value
        elif isinstance(entry, dict):
            for name, keys in entry.items():
                file = posixpath.normpath(posixpath.join(wdir, str(name)))
                if keys is not None and not isinstance(keys, list):
                    raise PipelineError(f"{where}: params: {name}: expected a list of keys, got {keys!r}")
                content = files.get(file, required=True, reader=where)
                for key in keys or sorted(content):
                    value = _lookup(content, str(key), f"{where}: params: {key} ({file})")
                    tracked[param_label(file, str(key))] = value
        else:
            raise PipelineError(f"{where}: params holds {entry!r}, expected a key or {{FILE: [keys]}}")
    return tracked


def _lookup(data: Any, dotted: str, where: str) -> Any:
    value = data
    for key in dotted.split("."):
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            raise PipelineError(f"{where}: no such key {dotted!r}")
    return value


def _resolve_value(
    value: Any, context: dict[str, Any], where: str, kept: _Kept | None = None, *, in_cmd: bool = False,
) -> Any:
    """`${...}` resolved in every string of `value` (a whole-string `${x}` keeps x's type);
    those `kept` keeps are checked, and left for the stage to resolve when it runs, as is
    the escape `\\${` of a kept cmd (command.interpolate writes it as `${`). `in_cmd`: a
    map is written as command options."""
    if isinstance(value, dict):
        return {_resolve_value(k, context, where, kept, in_cmd=in_cmd): _resolve_value(v, context, where, kept, in_cmd=in_cmd)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_value(v, context, where, kept, in_cmd=in_cmd) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = _PLACEHOLDER.fullmatch(value)
    if whole:
        found = _lookup(context, whole.group(1), f"{where}: ${{{whole.group(1)}}}")
        if kept is not None and kept.keeps(whole.group(1)):
            return kept.placeholder(whole.group(1))
        return _as_cmd(found, where, whole.group(0)) if in_cmd else found

    def sub(match: re.Match[str]) -> str:
        from pivot.runtime.command import as_text

        found = _lookup(context, match.group(1), f"{where}: ${{{match.group(1)}}}")
        if kept is not None and kept.keeps(match.group(1)):
            return kept.placeholder(match.group(1))
        return _as_cmd(found, where, match.group(0)) if in_cmd else as_text(found)

    resolved = _PLACEHOLDER.sub(sub, value)
    return resolved if kept is not None else resolved.replace("\\${", "${")


def _as_cmd(value: Any, where: str, placeholder: str) -> str:
    from pivot.runtime.command import cmd_text

    try:
        return cmd_text(value)
    except ValueError as exc:
        raise PipelineError(f"{where}: {placeholder} in cmd: {exc}") from None
