"""Dataclasses that are cheap to define: the messages, the broker's events, and the
other dataclasses a Pivot process imports as it starts.

`@dataclass(frozen=True)` compiles six methods per class from generated source
(`__init__`, `__repr__`, `__eq__`, `__hash__`, `__setattr__`, `__delattr__`). With ~50
messages that was 18 ms of every process's start (30-60 ms while the engine's processes
start together on two cores: docs/benchmarks.md); the ~20 other dataclasses a no-op
`pivot repro` imports took 1-3 ms each more. `@record` compiles only `__init__`, at the
class's first instance (most messages are never made in a given process); the rest are
shared methods of `Record`, which read the class's field names (those compared,
those shown, as `field(compare=..., repr=...)` says). A record is still a dataclass:
`dataclasses.fields`, `replace` and `is_dataclass` work on it, and type checkers treat
it as a frozen dataclass. `@mutable_record` on a `MutableRecord`: a plain (mutable,
unhashable) dataclass, made the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar, dataclass_transform

__all__ = ["MutableRecord", "Record", "mutable_record", "record"]

T = TypeVar("T", bound="Record")
M = TypeVar("M", bound="MutableRecord")
R = TypeVar("R", bound="Record")


class Record:
    """Equality, hashing, repr and immutability for `@record` classes: by value, over
    the fields, between instances of the same class only (as dataclasses do)."""

    _FIELDS: ClassVar[tuple[str, ...]] = ()
    _COMPARED: ClassVar[tuple[str, ...]] = ()  # (field(compare=False) left out)
    _SHOWN: ClassVar[tuple[str, ...]] = ()  # (field(repr=False) left out)

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._COMPARED)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((self.__class__, self._values()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._SHOWN)
        return f"{self.__class__.__qualname__}({inner})"

    def __setattr__(self, name: str, value: object) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


class MutableRecord(Record):
    """A `Record` whose fields may be assigned: equal by value, so unhashable (as a
    dataclass with eq and not frozen)."""

    __setattr__ = object.__setattr__  # type: ignore[assignment]  # (the C slot: no call a set)
    __delattr__ = object.__delattr__
    __hash__ = None  # type: ignore[assignment]


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, dataclasses.Field))
def record(cls: type[T]) -> type[T]:
    """Make `cls` (a subclass of `Record`) a frozen dataclass with one generated method."""
    if issubclass(cls, MutableRecord):
        raise TypeError(f"@record class {cls.__name__} is a MutableRecord: use @mutable_record")
    return _make(cls, "@record")


@dataclass_transform(field_specifiers=(dataclasses.field, dataclasses.Field))
def mutable_record(cls: type[M]) -> type[M]:
    """Make `cls` (a subclass of `MutableRecord`) a dataclass with one generated method."""
    if not issubclass(cls, MutableRecord):
        raise TypeError(f"@mutable_record class {cls.__name__} must subclass MutableRecord")
    return _make(cls, "@mutable_record")


def _make(cls: type[R], how: str) -> type[R]:
    if not issubclass(cls, Record):
        raise TypeError(f"{how} class {cls.__name__} must subclass Record")
    if not cls.__dict__.get("__doc__"):
        cls.__doc__ = cls.__name__  # else dataclass builds one with inspect.signature
    dataclasses.dataclass(init=False, repr=False, eq=False)(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    cls._FIELDS = tuple(f.name for f in fields)
    cls._COMPARED = tuple(f.name for f in fields if f.compare)
    cls._SHOWN = tuple(f.name for f in fields if f.repr)
    cls.__init__ = _first_init(cls, *_init_source(cls, fields))  # type: ignore[method-assign]
    return cls


def _first_init(cls: type, source: str, names: dict[str, Any]) -> Any:
    """An `__init__` that compiles the real one at the class's first instance and puts it
    in its place: most classes a process defines (messages it never receives) are never
    instantiated, and compiling each took ~0.15 ms of every process's start."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        namespace: dict[str, Any] = {}
        exec(source, names, namespace)
        init = namespace["__init__"]
        init.__qualname__ = f"{cls.__qualname__}.__init__"
        cls.__init__ = init  # type: ignore[misc]
        init(self, *args, **kwargs)

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    return __init__


def _init_source(cls: type, fields: tuple[dataclasses.Field[Any], ...]) -> tuple[str, dict[str, Any]]:
    """The source of `cls`'s `__init__` and the names it needs (checked now: a field
    without a default after one with a default is refused when the class is made)."""
    names: dict[str, Any] = {"__set": object.__setattr__, "__MISSING": dataclasses.MISSING}
    params: list[str] = []
    body: list[str] = []
    for f in fields:
        made = None  # the expression of its default value
        if f.default is not dataclasses.MISSING:
            names[f"__d_{f.name}"] = f.default
            made = f"__d_{f.name}"
        elif f.default_factory is not dataclasses.MISSING:
            names[f"__f_{f.name}"] = f.default_factory
            made = f"__f_{f.name}()"
        if not f.init:  # set as dataclass's __init__ does: its default, else left to __post_init__
            if made is not None:
                body.append(f"__set(self, {f.name!r}, {made})")
            continue
        if f.kw_only:
            raise TypeError(f"@record {cls.__name__}.{f.name}: keyword-only fields are not supported")
        if f.default is not dataclasses.MISSING:
            params.append(f"{f.name}={made}")
        elif made is not None:  # a factory: called for each instance not given one
            params.append(f"{f.name}=__MISSING")
            body.append(f"if {f.name} is __MISSING: {f.name} = {made}")
        else:
            if len(params) != sum(1 for p in params if "=" not in p):
                raise TypeError(f"@record {cls.__name__}: field {f.name!r} without a default follows one with a default")
            params.append(f.name)
        body.append(f"__set(self, {f.name!r}, {f.name})")
    if hasattr(cls, "__post_init__"):
        body.append("self.__post_init__()")
    return f"def __init__(self, {', '.join(params)}):\n    " + "\n    ".join(body or ["pass"]), names
