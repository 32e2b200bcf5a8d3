"""Code fingerprints: a hash over all the code a stage function reaches, piece by piece.

    Fingerprinter.stage(func)
        _Stage(func) ----> _Def (project function or class)
                      |--> _Binding (a module-level name: constant by value, else the
                      |              statements that assign it)
                      |--> _Module (a project module used as a value)
                      `--> third-party / stdlib: a version part, never descended into
        walk (visited set, so cycles end) -> parts {qualified name: hash}
        digest = hash over the sorted parts

A node's own parts and the nodes it leads to are computed once per Fingerprinter and
shared by every stage, so 300 stages over one helper module resolve each helper once.
Source comes from the per-file index in codeindex.py, located through a function's
`__code__.co_filename` and `co_qualname`; inspect.getsource is never called.

What cannot be seen statically (getattr with a computed name, eval/exec, attributes
assigned at runtime) is listed with workarounds in docs/fingerprints.md.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import inspect
import logging
import os
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import field
from pathlib import Path
from typing import Any

import xxhash

from pivot.protocol.record import MutableRecord, Record, mutable_record, record
from pivot.state.canonical import code_digest, code_names, constant
from pivot.state.codeindex import BodyImport, DefInfo, FileIndex, Imported, ParseCache, digest_text
from pivot.state.locality import ProjectFiles
from pivot.state.versions import VersionCache

__all__ = ["CodeFingerprint", "Fingerprinter", "command_fingerprint", "function_fingerprint"]

logger = logging.getLogger(__name__)

# Changes every digest when the rules change, so old lock files read as "code changed".
_FORMAT = "pivot-code-2"
# The digest files the stage's own part under this label: renaming or moving the stage
# function is not a code change (its key in `parts` still shows the real name).
_STAGE_LABEL = "<stage>"
_PYTHON = "python"
# What platform.python_version() gives (it parses sys.version), without importing
# platform: ~3 ms of every loader's start.
_PYTHON_VERSION = sys.version.split()[0]

_STDLIB_NAMES = frozenset(sys.stdlib_module_names) | frozenset(sys.builtin_module_names)
_BUILTIN_NAMES = frozenset(vars(builtins))
# Set by the import system, not by the user's code (and __file__ is an absolute path).
_IMPORT_DUNDERS = frozenset(
    {
        "__annotations__", "__builtins__", "__cached__", "__doc__", "__file__",
        "__loader__", "__name__", "__package__", "__path__", "__spec__",
    }
)  # fmt: skip
_MAX_DEPTH = 64
_MAX_HELD = 10_000  # items of a container looked through for the functions it holds
_MISSING: Any = object()
_EXTERNAL: Any = object()  # a body import of a non-project module: its part is already added


@record
class CodeFingerprint(Record):
    digest: str  # hex hash over all parts (sorted), stable across processes and machines
    parts: dict[str, str]  # qualified name -> hash of that piece, or "<dist>==<version>"
    sources: tuple[str, ...]  # sorted project-relative POSIX paths of the files reached
    # Each of those files -> the digest of the content read (pivot/runtime/freshcode.py
    # checks a worker's imported code against it); a file that could not be parsed has none.
    digests: dict[str, str] = field(default_factory=dict, compare=False)


# -- walk targets: what a node is about; `key` identifies it in the memo -------------------


class _Stage:
    __slots__ = ("func",)

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func

    @property
    def key(self) -> tuple[object, ...]:
        return ("stage", id(self.func))


class _Def:
    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    @property
    def key(self) -> tuple[object, ...]:
        return ("def", id(self.obj))


class _Binding:
    __slots__ = ("here", "name", "ns", "value")

    def __init__(self, ns: dict[str, Any], name: str, value: Any, *, here: bool = False) -> None:
        self.ns = ns
        self.name = name
        self.value = value
        # The statements of `ns` itself that change an object imported from another
        # module (`Model.predict = _predict`), not those of the module that assigns it.
        self.here = here

    @property
    def key(self) -> tuple[object, ...]:
        return ("bind", id(self.ns), self.name, self.here)


class _Module:
    __slots__ = ("module",)

    def __init__(self, module: types.ModuleType) -> None:
        self.module = module

    @property
    def key(self) -> tuple[object, ...]:
        return ("module", id(self.module))


_Target = _Stage | _Def | _Binding | _Module


@mutable_record
class _Node(MutableRecord):
    parts: dict[str, str] = field(default_factory=dict)
    sources: set[str] = field(default_factory=set)
    children: list[_Target] = field(default_factory=list)


class Fingerprinter:
    """Fingerprints stage functions of one project; reuse one instance for all stages.

    `root` decides what is project code (files under it, minus virtual environments,
    installed packages and pivot itself). `cache_file` persists the per-file parse
    index between runs (None: memory only); call save() when done. `imported`: the
    source this process imported a file from, taken over the file as it is now.
    """

    def __init__(self, root: Path, cache_file: Path | None, imported: Imported | None = None) -> None:
        self.root = root
        self._root = os.path.realpath(root)
        # Spellings of the root to blank out of string constants (longest first).
        spellings = {self._root, os.path.abspath(root)} - {os.sep}
        self._roots = tuple(sorted(spellings, key=len, reverse=True))
        self._cache = ParseCache(cache_file, imported)
        self._nodes: dict[tuple[object, ...], _Node] = {}
        self._targets: list[_Target] = []  # keeps the objects whose id() is in a key alive
        self._stages: dict[int, tuple[Callable[..., Any], CodeFingerprint]] = {}
        self._file_digests: dict[tuple[str, ...], dict[str, str]] = {}
        self._files = ProjectFiles(self._root)
        self.externals: set[str] = set()  # third-party top-level modules the stages use
        self.external_modules: set[str] = set()  # ... and the modules themselves (dotted)
        self._dists = VersionCache(
            cache_file.with_name(cache_file.name + ".versions") if cache_file else None, self._root,
        )

    @property
    def parsed_files(self) -> int:
        """Files this instance ran ast.parse on (zero when the cache was warm)."""
        return self._cache.parsed_files

    def save(self) -> None:
        """Write the parse and version caches if they changed; raises OSError when it cannot."""
        self._cache.save()
        self._dists.save()

    def stage(self, func: Callable[..., Any]) -> CodeFingerprint:
        hit = self._stages.get(id(func))
        if hit is not None and hit[0] is func:
            return hit[1]
        result = self._walk(func)
        self._stages[id(func)] = (func, result)
        return result

    # -- the walk ----------------------------------------------------------------------

    def _walk(self, func: Callable[..., Any]) -> CodeFingerprint:
        start = _Stage(func)
        # A recursive stage reaches itself as a plain function; its stage form is enough.
        seen = {start.key, _Def(func).key, _Def(_unwrap(func)).key}
        stack: list[_Target] = [start]
        found: dict[str, set[str]] = {}
        sources: set[str] = set()
        while stack:
            node = self._node(stack.pop())
            for key, value in node.parts.items():
                found.setdefault(key, set()).add(value)
            sources |= node.sources
            for child in node.children:
                if child.key not in seen:
                    seen.add(child.key)
                    stack.append(child)
        parts = {key: _one(values) for key, values in found.items()}
        files = tuple(sorted(sources))
        return CodeFingerprint(_digest(parts, _stage_key(func)), parts, files, self._digests_of(files))

    def _digests_of(self, files: tuple[str, ...]) -> dict[str, str]:
        """The content digests of `files`, one map per set of files (shared by stages)."""
        known = self._file_digests.get(files)
        if known is None:
            known = {}
            for rel in files:
                digest = self._cache.digest(os.path.join(self._root, rel))
                if digest is not None:
                    known[rel] = digest
            self._file_digests[files] = known
        return known

    def _node(self, target: _Target) -> _Node:
        node = self._nodes.get(target.key)
        if node is not None:
            return node
        node = _Node()
        if isinstance(target, _Stage):
            self._function_into(
                node, _unwrap(target.func), _stage_key(target.func), stage_form=True
            )
        elif isinstance(target, _Def):
            if isinstance(target.obj, type):
                self._class_into(node, target.obj)
            else:
                self._function_into(node, target.obj, _function_key(target.obj))
        elif isinstance(target, _Binding):
            self._binding_into(node, target)
        else:
            self._module_into(node, target.module)
        self._nodes[target.key] = node
        self._targets.append(target)
        return node

    # -- node builders -----------------------------------------------------------------

    def _function_into(self, node: _Node, func: Any, key: str, stage_form: bool = False) -> None:
        code = getattr(func, "__code__", None)
        if not isinstance(code, types.CodeType):
            node.parts[key] = f"<{_type_name(func)}>"
            return
        info = self._def_info(code, stage_form)
        if info is None:
            # No source (exec, a REPL, a file edited into invalid syntax): the bytecode.
            digest = "code:" + code_digest(code, self._roots)
            if not stage_form:  # a stage's defaults are params, tracked elsewhere
                digest += self._defaults_suffix(node, func)
            refs: Iterable[str] = sorted(code_names(code))
            imports: tuple[BodyImport, ...] = ()
        else:
            digest, refs, imports = info.digest, info.refs, info.imports
            self._add_source(node, code.co_filename)
        closure = self._closure(node, func)
        if closure:
            digest = digest_text("\n".join([digest, *closure]))
        node.parts[key] = digest
        self._follow_refs(node, refs, imports, func.__globals__)

    def _def_info(self, code: types.CodeType, stage_form: bool) -> DefInfo | None:
        index = self._cache.get(self._files.realpath(code.co_filename))
        if index is None:
            return None
        # Nested functions and methods are part of their top-level definition's AST.
        top = code.co_qualname.partition(".")[0]
        if stage_form and top == code.co_qualname and top in index.stage_defs:
            return index.stage_defs[top]
        return index.defs.get(top)

    def _class_into(self, node: _Node, cls: type) -> None:
        key = f"{cls.__module__}.{cls.__qualname__}"
        module = sys.modules.get(cls.__module__)
        ns = vars(module) if module is not None else {}
        index = self._index_of(ns)
        info = index.defs.get(cls.__qualname__.partition(".")[0]) if index else None
        if info is None:
            node.parts[key] = self._class_without_source(node, cls)
            return
        node.parts[key] = info.digest
        self._add_source(node, ns.get("__file__"))
        self._follow_refs(node, info.refs, info.imports, ns)

    def _class_without_source(self, node: _Node, cls: type) -> str:
        """Built by type() or exec: its methods' bytecode and its plain values stand in."""
        pieces = [f"base={_type_name(b)}" for b in cls.__bases__]
        for base in cls.__bases__:
            if base is not object:
                self._follow_definition(node, base)
        for attr, value in sorted(vars(cls).items()):
            if attr in {"__dict__", "__weakref__", "__doc__", "__module__", "__qualname__"}:
                continue
            func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if isinstance(func, types.FunctionType):
                pieces.append(f"{attr}=code:{code_digest(func.__code__, self._roots)}")
                self._follow_refs(node, sorted(code_names(func.__code__)), (), func.__globals__)
            else:
                pieces.append(f"{attr}={self._loose_value(node, value)}")
        return "code:" + digest_text("\n".join(pieces))

    def _binding_into(self, node: _Node, target: _Binding) -> None:
        ns, name = (target.ns, target.name) if target.here else self._origin(target.ns, target.name, target.value)
        key = f"{ns.get('__name__') or '<unknown>'}.{name}"
        by_value = constant(target.value, self._roots)
        if by_value is not None and not target.here:
            node.parts[key] = by_value
            self._add_source(node, ns.get("__file__"))
            return
        index = self._index_of(ns)
        bindings = index.assigns.get(name, ()) if index else ()
        # A def or class statement that made the object without being it (@contextmanager,
        # @functools.singledispatch, a decorator returning an instance or a partial).
        made = index.defs.get(name) if index and not target.here else None
        if made is not None and self._is_made_by(_definition(target.value), ns, name):
            made = None
        if bindings or made is not None:
            digest = digest_text("\n".join(b.digest for b in bindings)) if bindings else ""
            if made is not None:
                digest = made.digest if not digest else digest_text(f"{digest}\ndef {made.digest}")
                self._follow_refs(node, made.refs, made.imports, ns)
            held = self._held_definitions(node, target.value)
            node.parts[key] = digest if held is None else digest_text(f"{digest}\nholds {held}")
            self._add_source(node, ns.get("__file__"))
            for binding in bindings:
                self._follow_refs(node, binding.refs, (), ns)
            return
        imported = index.imports.get(name) if index else None
        if imported is not None:  # `from numpy import array`: third-party, by version
            self._add_external(node, self._absolute(imported.module, imported.level, ns) or "")
            return
        # Bound at runtime (setattr, `global`, a loop): only its type is known.
        node.parts[key] = f"<{_type_name(target.value)}>"
        self._follow_definition(node, type(target.value))

    def _module_into(self, node: _Node, module: types.ModuleType) -> None:
        """A project module used as a value: all of its code counts."""
        ns = vars(module)
        index = self._index_of(ns)
        if index is None:
            node.parts[module.__name__] = "<no source>"
            return
        node.parts[module.__name__] = index.module_digest
        self._add_source(node, ns.get("__file__"))
        for name in sorted({*index.defs, *index.assigns}):
            value = ns.get(name, _MISSING)
            if value is not _MISSING:
                self._follow_value(node, ns, name, value)

    # -- following references -----------------------------------------------------------

    def _follow_refs(
        self,
        node: _Node,
        refs: Iterable[str],
        imports: tuple[BodyImport, ...],
        ns: dict[str, Any],
    ) -> None:
        local = self._body_imports(node, imports, ns) if imports else {}
        for ref in refs:
            self._follow_ref(node, ref, ns, local)

    def _follow_ref(
        self,
        node: _Node,
        ref: str,
        ns: dict[str, Any],
        local: dict[str, tuple[dict[str, Any], str, Any]],
    ) -> None:
        """Resolve `a.b.c`: through project modules attribute by attribute, then follow."""
        head, *attrs = ref.split(".")
        if head in local:
            if local[head] is _EXTERNAL:
                return
            ns, name, value = local[head]
        elif head in ns and head not in _IMPORT_DUNDERS:
            name, value = head, ns[head]
        elif head in _BUILTIN_NAMES:
            node.parts[_PYTHON] = _PYTHON_VERSION
            return
        else:
            return  # a local variable, or a name that does not exist (yet)
        for attr in attrs:
            if not (isinstance(value, types.ModuleType) and self._is_project_module(value)):
                break
            ns = vars(value)
            nxt = ns.get(attr, _MISSING)
            if nxt is _MISSING:
                nxt = sys.modules.get(f"{value.__name__}.{attr}", _MISSING)
            if nxt is _MISSING:
                # Usually a local variable named like a module; a helper added later
                # shows up as a new part anyway.
                return
            name, value = attr, nxt
        self._follow_value(node, ns, name, value)

    def _follow_value(self, node: _Node, ns: dict[str, Any], name: str, value: Any) -> None:
        """Follow what the module-level name `name` in `ns` is bound to."""
        if isinstance(value, types.ModuleType):
            self._follow_module(node, value)
            return
        origin_ns, origin_name = self._origin(ns, name, value)
        if origin_ns is not ns:
            local = self._index_of(ns)
            if local is not None and local.assigns.get(name):  # `Model.predict = _predict` here
                node.children.append(_Binding(ns, name, value, here=True))
        obj = _definition(value)
        if obj is None:
            node.children.append(_Binding(ns, name, value))
            return
        index = self._index_of(origin_ns)
        assigned = bool(index and index.assigns.get(origin_name))
        # A lambda, a namedtuple() or type() class has no definition of its own: the
        # assignment that makes it is its code.
        if not (assigned and not self._has_definition(obj)):
            self._follow_definition(node, obj)
        # e.g. `clean = make_cleaner(re.compile("x"))`: the call counts too; or a def
        # statement made it, wrapped in code of elsewhere (`@contextmanager`).
        if assigned or (index is not None and origin_name in index.defs
                        and not self._is_made_by(obj, origin_ns, origin_name)):
            node.children.append(_Binding(origin_ns, origin_name, value))

    def _is_made_by(self, obj: Any, ns: dict[str, Any], name: str) -> bool:
        """Whether `obj` is the function or class that the top-level def or class
        statement `name` of the module `ns` makes (not a wrapper around it)."""
        if isinstance(obj, type):
            return obj.__module__ == ns.get("__name__") and obj.__qualname__ == name
        if not isinstance(obj, types.FunctionType):
            return False
        file = ns.get("__file__")
        code = obj.__code__
        return (code.co_qualname == name and isinstance(file, str)
                and self._files.realpath(code.co_filename) == self._files.realpath(file))

    def _held_definitions(self, node: _Node, value: Any) -> str | None:
        """For a dict, list, tuple or set that holds project functions or classes (a
        registry filled by a decorator, `REGISTRY.update(...)`): follows each of them and
        returns what it holds (keys by value, functions and classes by name); None when
        it holds none, or is not such a container."""
        if not isinstance(value, (dict, list, tuple, set, frozenset)) or len(value) > _MAX_HELD:
            return None
        items = list(value.values() if isinstance(value, dict) else value)
        held = {id(item): obj for item in items
                if (obj := _definition(item)) is not None and self._is_project_definition(obj)}
        if not held:  # checked first: a big table of data is not described item by item
            return None
        for obj in held.values():
            self._follow_definition(node, obj)

        def describe(item: Any) -> str:
            obj = held.get(id(item))
            if obj is not None:
                return f"def {_module_name(obj)}.{obj.__qualname__}"
            by_value = constant(item, self._roots)
            return by_value if by_value is not None else f"<{_type_name(item)}>"

        if isinstance(value, dict):
            pieces = [f"{describe(k)}: {describe(v)}" for k, v in value.items()]
        else:
            pieces = [describe(item) for item in items]
            if isinstance(value, (set, frozenset)):
                pieces.sort()
        return digest_text("\n".join(pieces))

    def _has_definition(self, obj: Any) -> bool:
        """Whether a project def/class statement (or one enclosing it) makes obj."""
        if isinstance(obj, type):
            module = sys.modules.get(obj.__module__)
            index = self._index_of(vars(module)) if module is not None else None
            qualname = obj.__qualname__
        else:
            code = obj.__code__
            file = code.co_filename
            local = os.path.isabs(file) and self._files.is_local(file)
            index = self._cache.get(self._files.realpath(file)) if local else None
            qualname = code.co_qualname
        return index is not None and qualname.partition(".")[0] in index.defs

    def _follow_definition(self, node: _Node, obj: Any) -> None:
        if self._is_project_definition(obj):
            node.children.append(_Def(obj))
        else:
            self._add_external(node, _module_name(obj) or "")

    def _follow_module(self, node: _Node, module: types.ModuleType) -> None:
        if self._is_project_module(module):
            node.children.append(_Module(module))
        else:
            self._add_external(node, module.__name__)

    def _loose_value(self, node: _Node, value: Any) -> str:
        """A value with no module-level name (a closure cell): constants fold into the
        owner's hash, anything else is followed and folds in by type."""
        by_value = constant(value, self._roots)
        if by_value is not None:
            return by_value
        if isinstance(value, types.ModuleType):
            self._follow_module(node, value)
            return f"<module {value.__name__}>"
        obj = _definition(value)
        self._follow_definition(node, obj if obj is not None else type(value))
        return f"<{_type_name(value)}>"

    def _closure(self, node: _Node, func: Any) -> list[str]:
        cells = getattr(func, "__closure__", None) or ()
        found = []
        for name, cell in zip(func.__code__.co_freevars, cells, strict=False):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell: the variable is not assigned yet
                continue
            found.append(f"{name}={self._loose_value(node, value)}")
        return found

    def _defaults_suffix(self, node: _Node, func: Any) -> str:
        defaults = (getattr(func, "__defaults__", None), getattr(func, "__kwdefaults__", None))
        return f" defaults={self._loose_value(node, defaults)}" if any(defaults) else ""

    def _origin(self, ns: dict[str, Any], name: str, value: Any) -> tuple[dict[str, Any], str]:
        """Follow `from helpers import X` re-exports to the project module that assigns X."""
        for _ in range(_MAX_DEPTH):
            index = self._index_of(ns)
            imported = index.imports.get(name) if index else None
            if imported is None or imported.name is None:
                break
            source = sys.modules.get(self._absolute(imported.module, imported.level, ns) or "")
            if source is None or not self._is_project_module(source):
                break
            if vars(source).get(imported.name, _MISSING) is not value:
                break
            ns, name = vars(source), imported.name
        return ns, name

    # -- imports inside function bodies -------------------------------------------------

    def _body_imports(
        self, node: _Node, imports: tuple[BodyImport, ...], ns: dict[str, Any]
    ) -> dict[str, Any]:
        """The names a definition's own import statements bind, resolved."""
        bound: dict[str, Any] = {}
        for imp in imports:
            absname = self._absolute(imp.module, imp.level, ns)
            if absname is None:
                continue
            if not self._is_project_name(absname):
                self._add_external(node, absname)
                bound[imp.bound] = _EXTERNAL
                continue
            module = self._import_project(node, absname)
            if module is None:
                continue
            if imp.name is None:
                top = absname.partition(".")[0]
                value = sys.modules.get(top, module) if imp.bound == top else module
                bound[imp.bound] = (ns, imp.bound, value)
            else:
                value = vars(module).get(imp.name, _MISSING)
                if value is _MISSING:  # `from pkg import submodule`
                    value = self._import_project(node, f"{absname}.{imp.name}") or _MISSING
                if value is not _MISSING:
                    bound[imp.bound] = (vars(module), imp.name, value)
        return bound

    def _is_project_name(self, absname: str) -> bool:
        module = sys.modules.get(absname)
        if module is not None:
            return self._is_project_module(module)
        top = absname.partition(".")[0]
        return not _is_pivot_name(absname) and self._is_project_location(top)

    def _import_project(self, node: _Node, absname: str) -> types.ModuleType | None:
        """A project module, imported if needed; None (and a part saying so) if that fails."""
        module = sys.modules.get(absname)
        if module is not None:
            return module
        try:
            return importlib.import_module(absname)
        except Exception as exc:  # user code: anything can go wrong while importing it
            logger.debug("cannot import %s while fingerprinting: %r", absname, exc)
            node.parts[absname] = f"<import failed: {type(exc).__name__}>"
            return None

    def _is_project_location(self, top: str) -> bool:
        loaded = sys.modules.get(top)
        if loaded is not None:
            return self._is_project_module(loaded)
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return False
        if spec is None:
            return False
        if spec.origin and os.path.isabs(spec.origin):
            return self._files.is_local(spec.origin)
        return any(self._files.is_local(p) for p in spec.submodule_search_locations or ())

    @staticmethod
    def _absolute(module: str, level: int, ns: dict[str, Any]) -> str | None:
        if not level:
            return module
        try:
            return importlib.util.resolve_name("." * level + module, ns.get("__package__"))
        except (ImportError, ValueError):
            return None

    # -- where code lives -------------------------------------------------------------

    def _is_project_definition(self, obj: Any) -> bool:
        if isinstance(obj, type):
            name = obj.__module__
            module = sys.modules.get(name)
            file = getattr(module, "__file__", None)
        else:
            globals_ = obj.__globals__
            name = globals_.get("__name__") or obj.__module__
            file = globals_.get("__file__") or obj.__code__.co_filename
        if not isinstance(name, str) or _is_pivot_name(name) or name == "builtins":
            return False
        if isinstance(file, str) and os.path.isabs(file):
            return self._files.is_local(file)
        # No file at all (exec into a fresh namespace): only its bytecode can count.
        return name.partition(".")[0] not in _STDLIB_NAMES

    def _is_project_module(self, module: types.ModuleType) -> bool:
        if _is_pivot_name(module.__name__):
            return False
        file = getattr(module, "__file__", None)
        if isinstance(file, str):
            return self._files.is_local(file)
        paths = getattr(module, "__path__", None) or ()  # a namespace package
        return any(isinstance(p, str) and self._files.is_local(p) for p in paths)

    def _index_of(self, ns: dict[str, Any]) -> FileIndex | None:
        file = ns.get("__file__")
        if not isinstance(file, str) or not self._files.is_local(file):
            return None
        return self._cache.get(self._files.realpath(file))

    def _add_source(self, node: _Node, file: Any) -> None:
        if not isinstance(file, str) or not self._files.is_local(file):
            return
        node.sources.add(self._files.relpath(file))

    # -- third-party and standard library ---------------------------------------------

    def _add_external(self, node: _Node, module_name: str) -> None:
        top = module_name.partition(".")[0]
        if not top:
            return
        if top in _STDLIB_NAMES:
            node.parts[_PYTHON] = _PYTHON_VERSION
        else:
            node.parts[top] = self._version(top)
            self.externals.add(top)
            self.external_modules.add(module_name)

    def _version(self, top: str) -> str:
        return self._dists.version(top)


def function_fingerprint(func: Callable[..., Any]) -> str:
    """The digest of one stage function, with the current directory as project root."""
    return Fingerprinter(Path.cwd(), None).stage(func).digest


# -- pure helpers -----------------------------------------------------------------------


def command_fingerprint(
    cmd: str | tuple[str, ...], wdir: str, script: dict[str, str] | None = None, files: tuple[str, ...] = (),
    digests: dict[str, str] | None = None,
) -> CodeFingerprint:
    """A command stage's code: its command line and where it runs, and the pieces of the
    Python script it runs (pivot/state/scripts.py: piece -> digest) and its `files` (with
    the `digests` of their bytes as read), if any; what else it runs is a declared
    dependency, compared by its bytes."""
    parts = {"cmd": digest_text(repr((cmd, wdir))), **(script or {})}
    return CodeFingerprint(_digest(parts, "cmd"), parts, tuple(sorted(files)), dict(digests or {}))


def _digest(parts: dict[str, str], stage_key: str) -> str:
    labelled = sorted((_STAGE_LABEL if k == stage_key else k, v) for k, v in parts.items())
    text = "".join(f"{k}\0{v}\n" for k, v in labelled)
    return xxhash.xxh3_128_hexdigest(f"{_FORMAT}\n{text}".encode())


def _one(values: set[str]) -> str:
    """Two different objects under one name (e.g. two closures of one factory): both count."""
    if len(values) == 1:
        return next(iter(values))
    return "multi:" + digest_text("\n".join(sorted(values)))


def _stage_key(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', None)}.{getattr(func, '__qualname__', repr(func))}"


def _function_key(func: Any) -> str:
    # co_qualname, not __qualname__: functools.wraps copies the wrapped function's name
    # onto a wrapper whose code lives elsewhere.
    module = func.__globals__.get("__name__") or func.__module__
    return f"{module}.{func.__code__.co_qualname}"


def _unwrap(func: Callable[..., Any]) -> Callable[..., Any]:
    try:
        return inspect.unwrap(func)
    except ValueError:  # a __wrapped__ cycle
        return func


def _definition(value: Any) -> Any:
    """The function or class behind a value (unwrapping decorators), or None."""
    for _ in range(_MAX_DEPTH):
        if isinstance(value, types.MethodType):
            value = value.__func__
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, (types.FunctionType, type)):
            return value
        try:
            # vars(), not getattr: a proxy object may answer any attribute name.
            value = vars(value).get("__wrapped__")
        except TypeError:
            return None
        if value is None:
            return None
    return None


def _module_name(obj: Any) -> str | None:
    if isinstance(obj, types.FunctionType):
        name = obj.__globals__.get("__name__") or obj.__module__
    else:
        name = getattr(obj, "__module__", None)
    return name if isinstance(name, str) else None


def _is_pivot_name(name: str) -> bool:
    return name == "pivot" or name.startswith("pivot.")


def _type_name(value: Any) -> str:
    kind = value if isinstance(value, type) else type(value)
    return f"{kind.__module__}.{kind.__qualname__}"
