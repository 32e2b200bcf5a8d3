"""Per-file code index and its on-disk cache: the parsing half of code fingerprints.

    source file --ast.parse--> FileIndex --msgpack--> .pivot/tmp/fingerprints.msgpack
                                  |
    Fingerprinter (fingerprint.py) reads FileIndex entries by top-level name

A FileIndex holds, per top-level definition, the hash of its normalized AST (comments,
docstrings, positions and its own name do not count), the names and dotted attribute
chains its code refers to, and the imports inside its body. Module-level assignments
are indexed by the names they bind, and module-level imports by the name they bind.

ParseCache maps absolute paths to FileIndex entries, validated by (inode, size,
mtime_ns) and then by a content hash, so a warm run parses nothing. A file whose mtime
is too recent to trust (a later edit could keep the same stamp) is stored without its
stat, which forces a content check next time.
"""

from __future__ import annotations

import ast
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import field
from pathlib import Path
from typing import Any

import msgpack
import xxhash

from pivot.protocol.record import MutableRecord, Record, mutable_record, record
from pivot.state.atomic import write_atomic

__all__ = [
    "Binding",
    "BodyImport",
    "DefInfo",
    "FileIndex",
    "ModuleImport",
    "ParseCache",
    "parse_source",
]

logger = logging.getLogger(__name__)

# Bump when the shape of a FileIndex or any hashing rule changes. The AST dump format
# follows the interpreter, so entries are only valid for the Python that wrote them.
CACHE_FORMAT = 3
_CACHE_STAMP = f"{CACHE_FORMAT}:{sys.implementation.name}:{sys.version}"

# Coarse file systems keep mtime in 1-2 s steps; within that window a second edit can
# leave (inode, size, mtime) unchanged, so such a stat cannot vouch for the content.
_RACY_NS = 2_000_000_000

# The stage decorator's dotted names; see _is_stage_decorator.
_STAGE_DECORATORS = frozenset({"pivot.stage", "pivot.pipeline.stage.stage"})


@record
class BodyImport(Record):
    """An import statement inside a definition: `import module` or `from module import name`."""

    module: str  # as written, without the leading dots
    level: int  # leading dots of a relative import
    name: str | None  # None for `import module`
    bound: str  # the local name the statement binds


@record
class DefInfo(Record):
    digest: str
    refs: tuple[str, ...]  # sorted names and dotted attribute chains read by the code
    imports: tuple[BodyImport, ...]


@record
class Binding(Record):
    """A module-level statement that assigns a name."""

    digest: str
    refs: tuple[str, ...]


@record
class ModuleImport(Record):
    module: str
    level: int
    name: str | None


@record
class FileIndex(Record):
    defs: dict[str, DefInfo]  # top-level function/class name -> info
    # Stage form of top-level functions that differ from their plain form: the @stage
    # decorator dropped and default values blanked (both are tracked elsewhere).
    stage_defs: dict[str, DefInfo]
    assigns: dict[str, tuple[Binding, ...]]
    imports: dict[str, ModuleImport]  # module-level imports by bound name
    module_digest: str
    # The module without its top-level defs' bodies (their names and order stay): with
    # `defs`, what tells which piece of a script changed (pivot/state/scripts.py).
    # Not kept in the fingerprint cache.
    outline_digest: str = field(default="", compare=False)


def digest_text(text: str) -> str:
    return xxhash.xxh3_128_hexdigest(text.encode())


# -- parsing --------------------------------------------------------------------------


def parse_source(data: bytes, filename: str = "<source>") -> FileIndex:
    """Index one module's source. Raises SyntaxError or ValueError for unparsable input."""
    tree = ast.parse(data, filename)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            _strip_docstring(node)
    imports = _module_imports(tree.body)
    defs: dict[str, DefInfo] = {}
    stage_defs: dict[str, DefInfo] = {}
    assigns: dict[str, list[Binding]] = {}
    stmt_digests: list[str] = []
    outline: list[str] = []
    containers: dict[int, tuple[str, tuple[str, ...]]] = {}  # top-level container -> digest, refs
    for stmt, top in _module_statements(tree.body):
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = stmt.name
            info = _def_info(stmt)
            stmt_digests.append(f"def {name} {info.digest}")
            outline.append(f"def {name}")
            if top is not stmt:
                # `if FAST: def f` / `else: def f`: which one is bound depends on the test.
                info = _in_container(info, *containers[id(top)])
            _merge_into(defs, name, info)
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                staged = _stage_form(stmt, imports)
                if staged is not None:
                    _merge_into(stage_defs, name, staged if top is stmt else _in_container(staged, *containers[id(top)]))
            for target in _decorated_objects(stmt, imports):
                # `@show.register(int)`, `@app.route("/")`: the object is changed in place.
                assigns.setdefault(target, []).append(Binding(f"def {name} {info.digest}", info.refs))
            continue
        # A container's inner statements come again on their own; hashing the whole
        # container too keeps its header (an `if` test, a `for` target) in the digest.
        digest = digest_text(ast.dump(stmt))
        stmt_digests.append(digest)
        outline.append(digest)
        found = None
        if stmt is top and isinstance(stmt, _CONTAINERS):
            found = _collect(stmt)
            containers[id(stmt)] = (digest, found.refs)
        names = _bound_names(stmt)
        if names:
            binding = Binding(digest, (found or _collect(stmt)).refs)
            for name in names:
                assigns.setdefault(name, []).append(binding)
    return FileIndex(
        defs=defs,
        stage_defs=stage_defs,
        assigns={name: tuple(b) for name, b in assigns.items()},
        imports=imports,
        module_digest=digest_text("\n".join(stmt_digests)),
        outline_digest=digest_text("\n".join(outline)),
    )


# Module-level compound statements whose bodies still run at module level.
_CONTAINERS = (ast.If, ast.Try, ast.TryStar, ast.With, ast.For, ast.While)


def _module_statements(body: Iterable[ast.stmt], top: ast.stmt | None = None) -> Iterator[tuple[ast.stmt, ast.stmt]]:
    """Module-level statements, descending into if/try/with/for/while but not into defs,
    each with the top-level statement it is in (itself at the top level).

    A container is yielded too (its header, e.g. a `for` target, binds names)."""
    for stmt in body:
        outer = stmt if top is None else top
        yield stmt, outer
        if isinstance(stmt, _CONTAINERS):
            inner: list[ast.stmt] = (
                [*stmt.body, *stmt.orelse] if hasattr(stmt, "orelse") else [*stmt.body]
            )
            if isinstance(stmt, (ast.Try, ast.TryStar)):
                inner += stmt.finalbody
                for handler in stmt.handlers:
                    inner += handler.body
            yield from _module_statements(inner, outer)


def _in_container(info: DefInfo, digest: str, refs: tuple[str, ...]) -> DefInfo:
    """A definition inside a module-level if/try/with/for/while: the whole statement
    counts with it (its test, the other branch), and the names that statement reads."""
    return DefInfo(digest_text(f"{info.digest}\nin {digest}"), tuple(sorted({*info.refs, *refs})), info.imports)


def _decorated_objects(
    node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, imports: dict[str, ModuleImport],
) -> set[str]:
    """The module-level names a definition's decorators are methods of (`@show.register`,
    `@app.route(...)`): the decorator adds the definition to that object. A module
    imported as a whole (`@functools.wraps`) is not such an object."""
    names = set()
    for decorator in node.decorator_list:
        chain = _chain(decorator.func if isinstance(decorator, ast.Call) else decorator)
        if chain is None or "." not in chain:
            continue
        head = chain.partition(".")[0]
        imported = imports.get(head)
        if imported is None or imported.name is not None:
            names.add(head)
    return names


def _strip_docstring(
    node: ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef,
) -> None:
    body = node.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        node.body = body[1:] or [ast.Pass()]


def _def_info(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> DefInfo:
    name, node.name = node.name, ""  # a definition's key carries its name; the hash does not
    try:
        if isinstance(node, ast.ClassDef):
            found = _collect(node)
            return DefInfo(digest_text(ast.dump(node)), found.refs, found.imports)
        # Its parameters are its body's own names: `for size in SIZES: stage(...)(report)`
        # beside `def report(size)` made every variant re-run when one was added. Its
        # decorators and defaults are read where it is defined: they keep every name.
        outside = _RefCollector()
        for part in (*node.decorator_list, node.args):
            outside.visit(part)
        inside = _RefCollector()
        for stmt in node.body:
            inside.visit(stmt)
        local = _parameters(node.args) - {n for s in ast.walk(node) if isinstance(s, ast.Global) for n in s.names}
        refs = outside.refs | {r for r in inside.refs if r.partition(".")[0] not in local}
        return DefInfo(digest_text(ast.dump(node)), tuple(sorted(refs)), (*outside.imports, *inside.imports))
    finally:
        node.name = name


def _parameters(args: ast.arguments) -> set[str]:
    found = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)}
    found.update(a.arg for a in (args.vararg, args.kwarg) if a is not None)
    return found


def _stage_form(
    node: ast.FunctionDef | ast.AsyncFunctionDef, imports: dict[str, ModuleImport]
) -> DefInfo | None:
    decorators = [d for d in node.decorator_list if not _is_stage_decorator(d, imports)]
    args = node.args
    if (
        len(decorators) == len(node.decorator_list)
        and not args.defaults
        and not any(args.kw_defaults)
    ):
        return None
    saved = (node.decorator_list, args.defaults, args.kw_defaults)
    # Keep "has a default" (the call shape) but not the value: values are params.
    node.decorator_list = decorators
    args.defaults = [ast.Constant(...) for _ in args.defaults]
    args.kw_defaults = [None if d is None else ast.Constant(...) for d in args.kw_defaults]
    try:
        return _def_info(node)
    finally:
        node.decorator_list, args.defaults, args.kw_defaults = saved


def _is_stage_decorator(node: ast.expr, imports: dict[str, ModuleImport]) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    chain = _chain(target)
    if chain is None:
        return False
    head, _, rest = chain.partition(".")
    imported = imports.get(head)
    if imported is None:
        return chain == "stage" or chain in _STAGE_DECORATORS  # e.g. `from pivot import *`
    if imported.level:
        return False
    if imported.name is not None:
        base = f"{imported.module}.{imported.name}"
    elif imported.module.partition(".")[0] == head:
        base = head  # `import pivot.pipeline.stage` binds `pivot`
    else:
        base = imported.module  # `import pivot.pipeline.stage as s`
    return (f"{base}.{rest}" if rest else base) in _STAGE_DECORATORS


def _merge_into(defs: dict[str, DefInfo], name: str, info: DefInfo) -> None:
    """Conditional definitions (`if ...: def f` / `else: def f`) share a name: count all."""
    old = defs.get(name)
    if old is None:
        defs[name] = info
        return
    defs[name] = DefInfo(
        digest_text(f"{old.digest}\n{info.digest}"),
        tuple(sorted({*old.refs, *info.refs})),
        old.imports + info.imports,
    )


def _module_imports(body: list[ast.stmt]) -> dict[str, ModuleImport]:
    found: dict[str, ModuleImport] = {}
    for stmt, _ in _module_statements(body):
        for imp in _imports_of(stmt):
            found[imp.bound] = ModuleImport(imp.module, imp.level, imp.name)
    return found


def _imports_of(stmt: ast.stmt) -> list[BodyImport]:
    if isinstance(stmt, ast.Import):
        # `import a.b` binds `a` but must still import a.b: keep the full name.
        return [
            BodyImport(a.name, 0, None, a.asname or a.name.partition(".")[0]) for a in stmt.names
        ]
    if isinstance(stmt, ast.ImportFrom):
        return [
            BodyImport(stmt.module or "", stmt.level, a.name, a.asname or a.name)
            for a in stmt.names
            if a.name != "*"
        ]
    return []


def _bound_names(stmt: ast.stmt) -> set[str]:
    """Names a module-level statement (re)binds or mutates in place (`X.a = 1`, `X[k] = v`),
    also with `:=` (in a container, in its header only: its body comes on its own)."""
    targets: list[ast.expr] = []
    if isinstance(stmt, ast.Assign):
        targets = list(stmt.targets)
    elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign, ast.For)):
        targets = [stmt.target]
    elif isinstance(stmt, ast.With):
        targets = [item.optional_vars for item in stmt.items if item.optional_vars is not None]
    names: set[str] = set()
    for target in targets:
        for node in ast.walk(target):
            if isinstance(node, ast.Name):
                names.add(node.id)
    for part in _header(stmt):
        for node in ast.walk(part):
            if isinstance(node, ast.NamedExpr) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return names


def _header(stmt: ast.stmt) -> list[ast.AST]:
    """What of a module-level statement runs as part of it, not as a statement of its body."""
    if isinstance(stmt, (ast.If, ast.While)):
        return [stmt.test]
    if isinstance(stmt, ast.For):
        return [stmt.iter]
    if isinstance(stmt, ast.With):
        return [item.context_expr for item in stmt.items]
    if isinstance(stmt, (ast.Try, ast.TryStar)):
        return [h.type for h in stmt.handlers if h.type is not None]
    return [stmt]


def _chain(node: ast.expr) -> str | None:
    """`a.b.c` for a pure attribute chain on a name, else None."""
    attrs: list[str] = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(attrs)])


@mutable_record
class _Found(MutableRecord):
    refs: tuple[str, ...]
    imports: tuple[BodyImport, ...]


def _collect(node: ast.AST) -> _Found:
    collector = _RefCollector()
    collector.visit(node)
    return _Found(tuple(sorted(collector.refs)), tuple(collector.imports))


class _RefCollector(ast.NodeVisitor):
    """Names and attribute chains the code reads, skipping annotations (not run)."""

    def __init__(self) -> None:
        self.refs: set[str] = set()
        self.imports: list[BodyImport] = []

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.refs.add(node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = _chain(node)
        if chain is None:
            self.generic_visit(node)
        else:
            self.refs.add(chain)

    def visit_arg(self, node: ast.arg) -> None:
        pass  # only an annotation below

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._visit_def(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._visit_def(node)

    def _visit_def(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for child in [*node.decorator_list, node.args, *node.body]:
            self.visit(child)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.visit(node.target)
        if node.value is not None:
            self.visit(node.value)

    def visit_Import(self, node: ast.Import) -> None:
        self.imports += _imports_of(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.imports += _imports_of(node)


# -- wire form --------------------------------------------------------------------------


def _def_to_wire(info: DefInfo) -> list[Any]:
    imports = [[i.module, i.level, i.name, i.bound] for i in info.imports]
    return [info.digest, list(info.refs), imports]


def index_to_wire(index: FileIndex) -> dict[str, Any]:
    return {
        "defs": {k: _def_to_wire(v) for k, v in index.defs.items()},
        "stage": {k: _def_to_wire(v) for k, v in index.stage_defs.items()},
        "assigns": {k: [[b.digest, list(b.refs)] for b in v] for k, v in index.assigns.items()},
        "imports": {k: [v.module, v.level, v.name] for k, v in index.imports.items()},
        "module": index.module_digest,
    }


class _BadEntry(ValueError):
    pass


def _expect(value: Any, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(value, kind):
        raise _BadEntry(f"expected {kind}, got {type(value).__name__}")
    return value


def _strs(value: Any) -> tuple[str, ...]:
    return tuple(_expect(v, str) for v in _expect(value, list))


def _opt_str(value: Any) -> str | None:
    return None if value is None else _expect(value, str)


def _def_from_wire(raw: Any) -> DefInfo:
    digest, refs, imports = _expect(raw, list)
    return DefInfo(
        _expect(digest, str),
        _strs(refs),
        tuple(
            BodyImport(_expect(m, str), _expect(lvl, int), _opt_str(n), _expect(b, str))
            for m, lvl, n, b in (_expect(i, list) for i in _expect(imports, list))
        ),
    )


def _map(raw: Any) -> dict[str, Any]:
    found = _expect(raw, dict)
    for key in found:
        _expect(key, str)
    return found


def index_from_wire(raw: Any) -> FileIndex:
    """Raises ValueError when raw is not what index_to_wire writes."""
    try:
        d = _map(raw)
        return FileIndex(
            defs={k: _def_from_wire(v) for k, v in _map(d["defs"]).items()},
            stage_defs={k: _def_from_wire(v) for k, v in _map(d["stage"]).items()},
            assigns={
                k: tuple(Binding(_expect(dg, str), _strs(r)) for dg, r in _expect(v, list))
                for k, v in _map(d["assigns"]).items()
            },
            imports={
                k: ModuleImport(_expect(m, str), _expect(lvl, int), _opt_str(n))
                for k, (m, lvl, n) in _map(d["imports"]).items()
            },
            module_digest=_expect(d["module"], str),
        )
    except (KeyError, TypeError) as exc:  # missing keys, wrong arity on unpacking
        raise _BadEntry(str(exc)) from exc


# -- the cache ----------------------------------------------------------------------------

Stat = tuple[int, int, int]


# A process's own copy of a file's source, by real path: (its digest, its bytes), or None.
Imported = Callable[[str], tuple[str, bytes] | None]


@record
class _Entry(Record):
    stat: Stat | None  # None: too recent to trust, check the content hash
    content: str
    index: FileIndex


def _entry_from_wire(raw: Any) -> _Entry:
    d = _map(raw)
    stat_raw = d.get("stat")
    stat: Stat | None = None
    if stat_raw is not None:
        ino, size, mtime = (_expect(v, int) for v in _expect(stat_raw, list))
        stat = (ino, size, mtime)
    return _Entry(stat, _expect(d.get("hash"), str), index_from_wire(d.get("index")))


class ParseCache:
    """FileIndex by absolute path, persisted in one msgpack file.

    Counters: `parsed_files` (ast.parse calls) and `read_files` (files read to check or
    parse); a warm cache with unchanged files leaves both at zero.
    """

    def __init__(self, cache_file: Path | None, imported: Imported | None = None) -> None:
        self.cache_file = cache_file
        self._imported = imported
        self.parsed_files = 0
        self.read_files = 0
        self._stored: dict[str, Any] = _load(cache_file) if cache_file else {}
        self._memo: dict[str, FileIndex | None] = {}
        self._dirty = False

    def get(self, path: str) -> FileIndex | None:
        """The index of the file at absolute path, or None when unreadable or unparsable."""
        if path in self._memo:
            return self._memo[path]
        index = self._lookup(path)
        self._memo[path] = index
        return index

    def _lookup(self, path: str) -> FileIndex | None:
        kept = self._imported(path) if self._imported is not None else None
        if kept is not None:  # the source this process's code came from: not the file now
            entry, (content, data) = self._cached_entry(path), kept
            known = entry is not None and entry.content == content
            return self._index(path, entry.stat if entry is not None and known else None, entry, content, data)
        try:
            st = os.stat(path)
        except OSError:
            return None
        stat = (st.st_ino, st.st_size, st.st_mtime_ns)
        entry = self._cached_entry(path)
        if entry is not None and entry.stat == stat:
            return entry.index
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        self.read_files += 1
        trusted = stat if st.st_mtime_ns < time.time_ns() - _RACY_NS else None
        return self._index(path, trusted, entry, xxhash.xxh3_128_hexdigest(data), data)

    def _index(self, path: str, trusted: Stat | None, entry: _Entry | None, content: str, data: bytes) -> FileIndex | None:
        """The index of `data` (the file's bytes, digest `content`), kept under `path`
        with the stat it can be trusted by (None: check the content hash)."""
        if entry is not None and entry.content == content:
            index = entry.index
        else:
            try:
                index = parse_source(data, path)
            except (SyntaxError, ValueError) as exc:
                # The imported module compiled, so the file changed since; the caller
                # falls back to the bytecode it has.
                logger.warning("cannot parse %s for its code fingerprint: %s", path, exc)
                return None
            finally:
                self.parsed_files += 1
        if entry is None or entry.stat != trusted or entry.index is not index:
            self._stored[path] = {
                "stat": list(trusted) if trusted else None,
                "hash": content,
                "index": index_to_wire(index),
            }
            self._dirty = True
        return index

    def digest(self, path: str) -> str | None:
        """The digest of the content `get(path)` indexed (of the file's bytes, as
        pivot/runtime/freshcode.py takes it); None when it has none."""
        if self.get(path) is None:
            return None
        raw = self._stored.get(path)
        digest = raw.get("hash") if isinstance(raw, dict) else None
        return digest if isinstance(digest, str) else None

    def _cached_entry(self, path: str) -> _Entry | None:
        raw = self._stored.get(path)
        if raw is None:
            return None
        try:
            return _entry_from_wire(raw)
        except ValueError as exc:
            logger.warning("ignoring a malformed fingerprint cache entry for %s: %s", path, exc)
            del self._stored[path]
            return None

    def save(self) -> None:
        """Write the cache if anything changed: a temp file in the same folder, then replace.

        Raises OSError when it cannot be written; no temp file is left behind then."""
        if self.cache_file is None or not self._dirty:
            return
        # Files not reached this run stay while they exist: another pipeline may use them.
        files = {p: e for p, e in self._stored.items() if p in self._memo or os.path.exists(p)}
        payload = msgpack.packb({"stamp": _CACHE_STAMP, "files": files}, use_bin_type=True)
        write_atomic(self.cache_file, payload)
        self._dirty = False


def _load(cache_file: Path) -> dict[str, Any]:
    """The stored entries by path; empty when missing, corrupt or from another Python."""
    try:
        data = cache_file.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        logger.warning("ignoring the unreadable fingerprint cache %s: %s", cache_file, exc)
        return {}
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
        top = _map(raw)
        if top.get("stamp") != _CACHE_STAMP:
            return {}
        return _map(top.get("files"))
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        logger.warning("ignoring the corrupt fingerprint cache %s: %s", cache_file, exc)
        return {}
