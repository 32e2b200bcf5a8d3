"""The manifest: what the loader learns from the user's pipeline, sent to the broker.

It is plain data (no functions), so the broker and the pool can plan, decide and
schedule without ever importing user code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pivot.errors import ProtocolError

__all__ = ["Manifest", "StageSpec"]


@dataclass(frozen=True)
class StageSpec:
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

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "func": self.func,
            "deps": list(self.deps),
            "outs": list(self.outs),
            "metrics": list(self.metrics),
            "params": self.params,
            "fingerprint": self.fingerprint,
            "code_parts": self.code_parts,
            "tags": list(self.tags),
            "persist": list(self.persist),
            "uncached": list(self.uncached),
            "frozen": self.frozen,
            "always": self.always,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> StageSpec:
        try:
            return cls(
                name=_str(d["name"]),
                module=_str(d["module"]),
                func=_str(d["func"]),
                deps=_strs(d["deps"]),
                outs=_strs(d["outs"]),
                metrics=_strs(d["metrics"]),
                params=_map(d["params"]),
                fingerprint=_str(d["fingerprint"]),
                code_parts={k: _str(v) for k, v in _map(d["code_parts"]).items()},
                tags=_strs(d.get("tags", [])),
                persist=_strs(d.get("persist", [])),
                uncached=_strs(d.get("uncached", [])),
                frozen=_bool(d.get("frozen", False)),
                always=_bool(d.get("always", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed stage in manifest: {exc!r}") from exc


@dataclass(frozen=True)
class Manifest:
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

    def to_wire(self) -> dict[str, Any]:
        return {
            "stages": [s.to_wire() for s in self.stages],
            "sources": list(self.sources),
            "warnings": list(self.warnings),
            "preload": list(self.preload),
            "preload_key": self.preload_key,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Manifest:
        try:
            stages = tuple(StageSpec.from_wire(s) for s in d["stages"])
            return cls(
                stages, _strs(d["sources"]), _strs(d["warnings"]), _strs(d["preload"]),
                _str(d["preload_key"]),
            )
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"malformed manifest: {exc!r}") from exc


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected str, got {type(v).__name__}")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected bool, got {type(v).__name__}")
    return v


def _map(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise TypeError(f"expected a str-keyed map, got {type(v).__name__}")
    return v


def _strs(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise TypeError(f"expected list, got {type(v).__name__}")
    return tuple(_str(x) for x in v)
