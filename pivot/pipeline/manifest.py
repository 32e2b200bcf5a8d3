"""The manifest: what the loader learns from the user's pipeline, sent to the broker.

It is plain data (no functions), so the broker and the pool can plan, decide and
schedule without ever importing user code.
"""

from __future__ import annotations

from dataclasses import field, fields
from typing import Any

from pivot.errors import ProtocolError
from pivot.gcpause import paused
from pivot.protocol.record import Record, record

__all__ = ["Manifest", "StageSpec", "new_spec", "spec_difference"]


@record
class StageSpec(Record):
    name: str
    module: str  # importable module that registers the stage (e.g. "pipeline")
    func: str  # qualified name of the function, for messages
    deps: tuple[str, ...]
    outs: tuple[str, ...]  # every declared output, metrics included
    metrics: tuple[str, ...]
    params: dict[str, Any]  # resolved: defaults, then stage(params=), then params.yaml
    fingerprint: str
    # qualified name -> hash for every piece of code the fingerprint covers
    code_parts: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = field(default=(), compare=False)  # only pools with all of them run it
    # dvc.yaml's: outputs kept in place before a run and after a failure (the stage
    # appends or resumes); never run (frozen); always run (always_changed).
    persist: tuple[str, ...] = ()
    uncached: tuple[str, ...] = ()  # dvc.yaml's cache: false: hashed, never stored, not git-ignored
    frozen: bool = False
    always: bool = False
    # Its params are key paths of params files (dvc.yaml's form), named `key` for params.yaml
    # and `FILE:key` for another; else param names, overridden by params.yaml's section of
    # its name. Says where `pivot params show` found each value.
    keyed: bool = False
    # Each project file the fingerprint read -> the digest of its content then: a worker
    # runs the stage only if the code it imported is that (pivot/runtime/freshcode.py).
    # Not compared: a save that changes no code (a comment) changes only these.
    code_sources: dict[str, str] = field(default_factory=dict, compare=False)


@record
class Manifest(Record):
    stages: tuple[StageSpec, ...]  # registration order
    sources: tuple[str, ...] = ()  # project-local source files the stages depend on
    warnings: tuple[str, ...] = ()
    # Third-party modules the workers' forkserver imports, and a key over their files
    # (pivot/runtime/preload.py).
    preload: tuple[str, ...] = ()
    preload_key: str = ""
    by_name: dict[str, StageSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {s.name: s for s in self.stages})

    def __getstate__(self) -> dict[str, Any]:
        # What a process made of it (its producer index: pivot/pipeline/producers.py)
        # is made again where it is read.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def to_wire(self) -> dict[str, Any]:
        """Plain data for msgpack: a row per stage (`ROW`'s fields in order) and each
        distinct `code_parts` (`code_sources`) map once, in `code_parts` (`code_sources`),
        a row naming it by index. At
        10,000 stages, maps with their field names were 3.3 MB and ~0.1 s to unpack and
        check at each hop (loader -> pool -> broker); rows are 1.2 MB and ~0.02 s."""
        with paused():
            return self._to_wire()

    def _to_wire(self) -> dict[str, Any]:
        index: dict[tuple[tuple[str, str], ...], int] = {}
        files: dict[tuple[tuple[str, str], ...], int] = {}
        rows = []
        for s in self.stages:
            parts = index.setdefault(tuple(s.code_parts.items()), len(index))
            sources = files.setdefault(tuple(s.code_sources.items()), len(files))
            rows.append([
                s.name, s.module, s.func, list(s.deps), list(s.outs), list(s.metrics), s.params,
                s.fingerprint, parts, list(s.tags), list(s.persist), list(s.uncached), s.frozen, s.always, s.keyed,
                sources,
            ])
        return {
            "stages": rows,
            "code_parts": [dict(items) for items in index],
            "code_sources": [dict(items) for items in files],
            "sources": list(self.sources),
            "warnings": list(self.warnings),
            "preload": list(self.preload),
            "preload_key": self.preload_key,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Manifest:
        with paused():
            return cls._from_wire(d)

    @classmethod
    def _from_wire(cls, d: dict[str, Any]) -> Manifest:
        try:
            parts = [_str_map(p) for p in _list(d["code_parts"])]
            files = [_str_map(f) for f in _list(d["code_sources"])]
            stages = []
            for i, row in enumerate(_list(d["stages"])):
                try:
                    stages.append(_spec(row, parts, files))
                except (IndexError, TypeError, ValueError) as exc:
                    raise ProtocolError(f"malformed stage {i} in manifest: {exc!r}") from exc
            return cls(
                tuple(stages), _strs(d["sources"]), _strs(d["warnings"]), _strs(d["preload"]),
                _str(d["preload_key"]),
            )
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"malformed manifest: {exc!r}") from exc


def spec_difference(ours: StageSpec, theirs: StageSpec | None) -> str:
    """How `theirs` differs from `ours`, for a message: the fields that differ, and for
    code the pieces by name (which function or constant another loader saw otherwise)."""
    if theirs is None:
        return "it has no such stage"
    shown = []
    for f in fields(StageSpec):
        if not f.compare or getattr(ours, f.name) == getattr(theirs, f.name):
            continue
        if f.name == "code_parts":
            a, b = ours.code_parts, theirs.code_parts
            pieces = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            shown.append("code of " + ", ".join(pieces[:5]) + (" ..." if len(pieces) > 5 else ""))
        elif f.name != "fingerprint":  # (it follows from code_parts)
            shown.append(f"{f.name} {getattr(theirs, f.name)!r}, not {getattr(ours, f.name)!r}")
    return "; ".join(shown) or "its code fingerprint"


# A stage's row on the wire: StageSpec's fields in this order, `code_parts` and
# `code_sources` indexes.
ROW = ("name", "module", "func", "deps", "outs", "metrics", "params", "fingerprint", "code_parts",
       "tags", "persist", "uncached", "frozen", "always", "keyed", "code_sources")


def _spec(row: Any, parts: list[dict[str, str]], files: list[dict[str, str]]) -> StageSpec:
    """A StageSpec from its row, checked field by field without dataclass's __init__
    (a frozen dataclass sets each field through object.__setattr__: 3x slower here)."""
    if type(row) is not list:
        raise TypeError(f"expected a list, got {type(row).__name__}")
    (name, module, func, deps, outs, metrics, params, fingerprint, part, tags, persist, uncached, frozen, always,
     keyed, sources) = row
    for v in (name, module, func, fingerprint):
        _str(v)
    if type(part) is not int or not 0 <= part < len(parts):
        raise ValueError(f"code_parts index {part!r} out of range")
    if type(sources) is not int or not 0 <= sources < len(files):
        raise ValueError(f"code_sources index {sources!r} out of range")
    return new_spec(
        name=name, module=module, func=func, deps=_strs(deps), outs=_strs(outs), metrics=_strs(metrics),
        params=_map(params), fingerprint=fingerprint, code_parts=parts[part], tags=_strs(tags),
        persist=_strs(persist), uncached=_strs(uncached), frozen=_bool(frozen), always=_bool(always),
        keyed=_bool(keyed), code_sources=files[sources],
    )


def new_spec(**fields: Any) -> StageSpec:
    """StageSpec(**fields) given every field, without dataclass's __init__ (a frozen
    dataclass sets each field through object.__setattr__: 3x slower; 10,000 a load)."""
    spec = object.__new__(StageSpec)
    spec.__dict__.update(fields)
    return spec


def _str(v: Any) -> str:
    if type(v) is not str:
        raise TypeError(f"expected str, got {type(v).__name__}")
    return v


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise TypeError(f"expected bool, got {type(v).__name__}")
    return v


def _map(v: Any) -> dict[str, Any]:
    if type(v) is not dict:
        raise TypeError(f"expected a str-keyed map, got {type(v).__name__}")
    for k in v:
        if type(k) is not str:
            raise TypeError(f"expected a str-keyed map, got the key {k!r}")
    return v


def _list(v: Any) -> list[Any]:
    if type(v) is not list:
        raise TypeError(f"expected list, got {type(v).__name__}")
    return v


def _strs(v: Any) -> tuple[str, ...]:
    for x in _list(v):
        if type(x) is not str:
            raise TypeError(f"expected str, got {type(x).__name__}")
    return tuple(v)


def _str_map(v: Any) -> dict[str, str]:
    for k, x in _map(v).items():
        if type(x) is not str:
            raise TypeError(f"expected str for {k!r}, got {type(x).__name__}")
    return v
