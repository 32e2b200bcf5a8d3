"""The loader: a fresh interpreter that imports the user's pipeline and reports a manifest.

    python -P -m pivot.runtime.loader ROOT --result-fd FD

Writes one msgpack map to FD: {"ok": True, "manifest": {...}} or
{"ok": False, "message": ..., "detail": <the user's traceback>}. User code may print
anything to stdout/stderr while importing; the result travels on its own pipe.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pivot.errors import PipelineError
from pivot.gcpause import paused
from pivot.pipeline import params as params_mod
from pivot.pipeline.manifest import Manifest, new_spec
from pivot.pipeline.paths import normalize
from pivot.pipeline.project import DVC_FILE, PIPELINE_FILE
from pivot.pipeline.stage import StageDecl, clear_registry, register_dvc_stage, registered
from pivot.runtime.freshcode import guard_project_bytecode, imported_source, keep_sources
from pivot.runtime.preload import imported_tops, third_party
from pivot.runtime.usertb import user_traceback
from pivot.state.fingerprint import CodeFingerprint, Fingerprinter, command_fingerprint
from pivot.state.scripts import script_code

__all__ = ["PIPELINE_MODULE", "build_manifest", "forked_main", "import_pipeline", "main"]

PIPELINE_MODULE = PIPELINE_FILE.removesuffix(".py")
FINGERPRINT_CACHE = "fingerprints.msgpack"


_loaded: list[Path] = []  # the project whose stages this process registered
_vars_files: set[str] = set()  # the dvc.yaml files' `vars:` files it read


def import_pipeline(root: Path) -> None:
    """Import the user's pipeline module and read the project's dvc.yaml files
    (registering their stages), with root as cwd; once per process."""
    os.chdir(root)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if _loaded == [root]:
        return
    guard_project_bytecode(str(root))  # (its bytecode of one second may be another version's)
    clear_registry()
    if (root / PIPELINE_FILE).is_file() or not (root / DVC_FILE).is_file():
        try:
            importlib.import_module(PIPELINE_MODULE)
        except PipelineError:
            raise
        except BaseException as exc:
            # A SyntaxError's own message names the file and line; the traceback adds the rest.
            raise PipelineError(
                f"{PIPELINE_FILE} failed to import: {type(exc).__name__}: {exc}",
                detail=user_traceback(exc),
            ) from None
    has_pipeline = (root / PIPELINE_FILE).is_file()
    if has_pipeline or (root / DVC_FILE).is_file():
        from pivot.pipeline.dvcyaml import ParamFiles, load_dvc_stages, with_refs

        # Symbolic: a cmd's ${...} from params.yaml is resolved when the stage runs, its
        # key a param of the stage; so editing it is a params change, not a code one.
        files = ParamFiles(root)
        for s in load_dvc_stages(root, symbolic=True, files=files, below_pipeline=has_pipeline):
            _, params = with_refs(s, files)
            register_dvc_stage(s.name, s.cmd, s.wdir, s.deps, s.outs, s.metrics, params, s.persist, s.uncached,
                               s.frozen, s.always, s.warm)
        _vars_files.clear()
        _vars_files.update(files.vars_files)
    _loaded[:] = [root]


def build_manifest(root: Path, pivots: set[str] | None = None, code: bool = True) -> Manifest:
    """`pivots`: the top-level modules Pivot imported before the pipeline (by default,
    all imported so now), left out of the modules to preload. Without `code`, function
    stages get no code fingerprint (`fingerprint` "", no `code_parts`) and nothing is
    preloaded: their declarations only, for a listing."""
    pivots = imported_tops() if pivots is None else pivots
    keep_sources()  # fingerprints of the code imported, not of the files a moment later
    # Pivot's and a preloading server's modules: no project module is among them.
    preexisting = set(sys.modules)
    import_pipeline(root)
    with paused():  # 10,000 stages: ~100,000 new containers (pivot/gcpause.py)
        return _manifest(root, pivots, preexisting, code)


_NO_CODE = CodeFingerprint("", {}, ())


def _manifest(root: Path, pivots: set[str], preexisting: set[str], with_code: bool = True) -> Manifest:
    from pivot.pipeline.settings import check_settings

    check_settings(root)  # [tool.pivot] in pyproject.toml: a misspelt setting is never ignored
    decls = registered()
    if not decls:
        if not (root / PIPELINE_FILE).exists():  # a DVC project's (its root is its dvc.yaml's)
            raise PipelineError("dvc.yaml declares no stages: add some under `stages:`")
        raise PipelineError(f"{PIPELINE_FILE} declares no stages; decorate functions with @stage")
    dvc = [d for d in decls.values() if d.dvc]
    # Stages that read params.yaml by key path (dvc.yaml's, list-form params) own every
    # top-level key that names no other stage, whatever it holds (`seed: 1`).
    from_file = params_mod.load_params_file(root, [d.name for d in decls.values() if not d.dvc] if dvc else None)
    fingerprinter = Fingerprinter(root, root / ".pivot" / "tmp" / FINGERPRINT_CACHE, imported_source)
    sources = set(_project_sources(root, preexisting))
    script_externals: set[str] = set()  # what the scripts of command stages import
    stages = []
    for decl in decls.values():
        deps = decl.deps
        if decl.cmd is not None:
            if decl.dvc:  # its params are the values of the keys it reads, as they are now
                resolved = dict(decl.params)
            else:
                defaults = params_mod.command_defaults(decl.name, decl.params)
                resolved = params_mod.resolve(decl.name, defaults, {}, from_file.get(decl.name))
                # Here only: its module's subprocess import (~3 ms) is no Python stage's.
                from pivot.runtime.command import interpolate

                interpolate(decl.name, decl.cmd, resolved)  # every ${name} is a param: said now
            script = script_code(decl.cmd, root / decl.wdir, root)
            code = command_fingerprint(decl.cmd, decl.wdir, script.parts if script else None,
                                       script.files if script else (), script.digests if script else None)
            if script is not None:  # its files are its code now, not deps compared by bytes
                script_externals |= script.externals
                deps = tuple(d for d in deps if normalize(decl.name, "deps", d) not in script.files)
            func = f"$ {decl.cmd if isinstance(decl.cmd, str) else ' '.join(decl.cmd)}"
        else:
            defaults = params_mod.defaults_of(decl.name, decl.func)
            resolved = params_mod.resolve(decl.name, defaults, decl.params, from_file.get(decl.name))
            code = fingerprinter.stage(decl.func) if with_code else _NO_CODE
            func = f"{decl.func.__module__}.{decl.func.__qualname__}"
        sources.update(code.sources)
        stages.append(
            new_spec(
                name=decl.name,
                module=PIPELINE_MODULE,
                func=func,
                deps=_unique(decl.name, "deps", deps),
                outs=_unique(decl.name, "outs", decl.outs),
                metrics=_normal(decl.name, "metrics", decl.metrics),
                params=resolved,
                fingerprint=code.digest,
                code_parts=code.parts,
                code_sources=code.digests,
                tags=decl.tags,
                persist=_normal(decl.name, "outs", decl.persist),
                uncached=_normal(decl.name, "outs", decl.uncached),
                frozen=decl.frozen,
                always=decl.always,
                keyed=decl.dvc,
            )
        )
    # Only into an existing .pivot/ (made, with its .gitignore, by commands that run or
    # check stages): inspecting a project must not leave files in it.
    if with_code and (root / ".pivot").is_dir():
        try:
            fingerprinter.save()
        except OSError as exc:  # a read-only project still loads; the next load re-parses
            print(f"pivot: could not save the fingerprint cache: {exc}", file=sys.stderr)

    if dvc:
        # dvc.yaml is the pipeline's code, as are the params files its stages read
        # (params.yaml is watched as params anyway); params.yaml's other top-level keys
        # are DVC sections, not typos of stage names.
        from pivot.pipeline.dvcyaml import dvc_files

        sources.update([*dvc_files(root), *(f for f in _dvc_param_files(dvc) if f != params_mod.PARAMS_FILE),
                        *_vars_files])
    warnings: tuple[str, ...] = ()
    if not (root / DVC_FILE).is_file():
        # Without a dvc.yaml, a section no stage reads is a typo of a stage's name.
        listed = {key.partition(".")[0] for d in dvc for key in d.params if ":" not in key}
        names = params_mod.top_level_sections(root) if dvc else list(from_file)
        warnings = tuple(_unknown_params_stage(name, list(decls)) for name in names
                         if name not in decls and name not in listed)
    # After every stage was fingerprinted: that is when the fingerprinter learns its externals.
    preload, preload_key = third_party({*fingerprinter.externals, *script_externals}, pivots,
                                       fingerprinter.external_modules) if with_code else ((), "")
    return Manifest(tuple(stages), tuple(sorted(sources)), warnings, preload, preload_key)


def _dvc_param_files(decls: list[StageDecl]) -> list[str]:
    return sorted({key.partition(":")[0] for d in decls for key in d.params if ":" in key})


def _normal(stage: str, field: str, paths: tuple[str, ...]) -> tuple[str, ...]:
    return tuple([normalize(stage, field, p) for p in paths]) if paths else ()


def _unique(stage: str, field: str, paths: tuple[str, ...]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for p in paths:
        seen.setdefault(normalize(stage, field, p), None)
    return tuple(seen)


def _project_sources(root: Path, preexisting: set[str]) -> tuple[str, ...]:
    """Project-local module files imported while loading (the watcher's "code"), not
    looking at the `preexisting` modules (thousands, when a server preloaded scipy)."""
    found = set()
    real_dirs: dict[str, str] = {}  # a big library's hundreds of modules share few folders
    # Names first: a fork of a preloading server copies the page of each module it
    # touches (pivot/runtime/heapfreeze.py), and all but a few are the server's.
    modules = sys.modules
    for name in [n for n in modules if n not in preexisting]:
        mod = modules.get(name)
        # Not getattr: a lazily loading package's __getattr__ would import (scipy's do).
        file = getattr(mod, "__dict__", {}).get("__file__")
        if not isinstance(file, str) or not file:
            continue
        folder, name = os.path.split(file)
        real = real_dirs.get(folder)
        if real is None:
            real = real_dirs[folder] = os.path.realpath(folder)
        path = Path(os.path.realpath(file) if os.path.islink(file) else os.path.join(real, name))
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        if any(part in {".venv", "venv", "site-packages", ".pivot"} for part in rel.parts):
            continue
        found.add(rel.as_posix())
    return tuple(sorted(found))


def _unknown_params_stage(name: str, known: list[str]) -> str:
    """The warning for a params.yaml section that names no stage, with the closest name."""
    import difflib

    groups = {k.partition("@")[0]: [v for v in known if v.startswith(k.partition("@")[0] + "@")]
              for k in known if "@" in k}
    close = difflib.get_close_matches(name, [*known, *groups], n=1)
    guess = ""
    if close and close[0] in known:
        guess = f" (did you mean {close[0]!r}?)"
    elif close:  # a variant group: its sections are the variants' names
        guess = f" (did you mean one of {', '.join(map(repr, groups[close[0]]))}?)"
    return f"{params_mod.PARAMS_FILE}: no stage named {name!r}{guess}; its params are ignored"


def _result(
    root: Path, pivots: set[str] | None = None, view: Callable[[Manifest], Any] | None = None, wire: bool = True,
) -> dict[str, Any]:
    """The loader's answer; its manifest as `Manifest.to_wire` makes it, or (not `wire`)
    the Manifest itself, for a pickle read by the process this one was forked from."""
    try:
        manifest = build_manifest(root, pivots, code=view is None)
        if view is not None:  # (of declarations: spawn.run_view)
            return {"ok": True, "view": view(manifest)}
    except PipelineError as exc:
        return {"ok": False, "message": str(exc), "detail": exc.detail}
    return {"ok": True, "manifest": manifest.to_wire() if wire else manifest}


def forked_main(
    root: str, result_path: str, output_path: str, preloaded: tuple[str, ...],
    view: Callable[[Manifest], Any] | None = None,
) -> None:
    """The loader forked from the pool's preloading server (pivot/launch/spawn.py): what
    `main` does in a fresh interpreter. The server never imports project code, so the
    pipeline is imported here for the first time, as in a fresh interpreter. Of what
    the server imported, all but its third-party `preloaded` modules are Pivot's.
    `view`: answer `view(manifest)` instead of the manifest (spawn.run_view).

    The answer is a pickle: its reader is this process's parent (or the pool whose
    server it was forked from), the same code; at 10,000 stages pickling and reading the
    Manifest take 0.08-0.11 s, its wire form's pack, unpack, checks and records
    0.13-0.35 s, on the way of every `status`, `repro` and pool load."""
    import pickle

    pivots = imported_tops() - set(preloaded)

    try:
        out = os.open(output_path, os.O_WRONLY | os.O_TRUNC)
    except FileNotFoundError:
        # Its asker gave up on it and is gone (a `pivot repro` refused because another
        # engine runs): its files were removed with it. Nothing to say, nor anyone to
        # say it to; a traceback here would land on that command's terminal.
        os._exit(1)
    null = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((0, null), (1, out), (2, out)):
        os.dup2(target, fd)
    os.close(out)
    os.close(null)
    result = _result(Path(root), pivots, view, wire=False)
    with open(result_path, "wb") as f:
        pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[1] != "--result-fd":
        print("usage: python -m pivot.runtime.loader ROOT --result-fd FD", file=sys.stderr)
        return 2
    root, fd = Path(args[0]).resolve(), int(args[2])
    result = _result(root)
    import msgpack

    with os.fdopen(fd, "wb") as out:
        out.write(msgpack.packb(result, use_bin_type=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
