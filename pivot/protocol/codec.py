"""msgpack codec with a versioned envelope. Strict on decode, never pickles.

Wire form of every message, a msgpack map:
    {"v": version, "k": kind tag, "id": message id, "p": parent id or None,
     "s": sender, "n": sequence number, "t": unix time, "b": {field: value, ...}}
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import time
import types
import typing
from collections.abc import Callable
from typing import Any

import msgpack

from pivot.errors import ProtocolError
from pivot.protocol.messages import MESSAGES, Message, Refused
from pivot.protocol.record import Record, record

__all__ = ["PROTOCOL_VERSION", "Envelope", "VersionMismatch", "decode", "encode", "new_id"]

PROTOCOL_VERSION = 16
FROZEN_KIND = Refused.TAG


class VersionMismatch(ProtocolError):
    """A message of another protocol version: `version` (as sent), `kind`, `sender`."""

    def __init__(self, message: str, version: object, kind: str, sender: str) -> None:
        super().__init__(message)
        self.version = version
        self.kind = kind
        self.sender = sender
_ENVELOPE_KEYS = frozenset({"v", "k", "id", "p", "s", "n", "t", "b"})


def _build_registry() -> dict[str, type[Message]]:
    registry: dict[str, type[Message]] = {}
    for cls in MESSAGES:
        if not cls.TAG:
            raise TypeError(f"message class {cls.__name__} has no TAG")
        if cls.TAG in registry:
            raise TypeError(f"duplicate wire tag {cls.TAG!r}: {cls.__name__} and {registry[cls.TAG].__name__}")
        registry[cls.TAG] = cls
    return registry


_REGISTRY = _build_registry()


@record
class _Layout(Record):
    """A kind's fields with their types, and those whose values hold records (fixed-length
    tuples, or record classes such as StageView sent as maps): only these are converted,
    the others are taken as they come, which keeps encoding and decoding cheap."""

    cls: type[Message]
    fields: dict[str, Any]
    records: frozenset[str]
    checks: dict[str, Callable[[Any], bool]]
    names: frozenset[str]


@functools.cache
def _layout(kind: str) -> _Layout:
    # Per kind and on first use: resolving every message's type hints at import cost
    # every process a few ms of its start.
    cls = _REGISTRY[kind]
    hints = typing.get_type_hints(cls)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    records = frozenset(n for n, hint in fields.items() if _holds_record(hint))
    return _Layout(
        cls, fields, records, {name: _checker(hint) for name, hint in fields.items()}, frozenset(fields),
    )


def _is_record(hint: Any) -> bool:
    """A record class (StageView), or a message's class as a field's type (the snapshot's
    last `wave_finished`): a map of its fields on the wire."""
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _holds_record(hint: Any) -> bool:
    if typing.get_origin(hint) is tuple or _is_record(hint):
        return True
    return any(_holds_record(arg) for arg in typing.get_args(hint))


_ids = itertools.count(1)
_ID_PREFIX = f"{os.getpid():x}-{int(time.time() * 1000) & 0xFFFFFF:x}"


def new_id() -> str:
    """A message id unique across processes for the life of a run."""
    return f"{_ID_PREFIX}-{next(_ids):x}"


@record
class Envelope(Record):
    msg: Message
    id: str
    parent: str | None
    sender: str
    seq: int
    ts: float


def encode(
    msg: Message,
    *,
    sender: str,
    seq: int = 0,
    parent: str | None = None,
    msg_id: str | None = None,
    ts: float | None = None,
) -> bytes:
    layout = _layout(msg.TAG)
    records = layout.records
    body = {
        name: _plain(getattr(msg, name)) if name in records else getattr(msg, name)
        for name in layout.fields  # (in the fields' order, as dataclasses.fields gives them)
    }
    wire = {
        "v": PROTOCOL_VERSION,
        "k": msg.TAG,
        "id": msg_id if msg_id is not None else new_id(),
        "p": parent,
        "s": sender,
        "n": seq,
        "t": time.time() if ts is None else ts,
        "b": body,
    }
    packed: bytes = msgpack.packb(wire, use_bin_type=True)
    return packed


def decode(data: bytes) -> Envelope:
    try:
        wire = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"not a msgpack message: {exc}") from exc
    if not isinstance(wire, dict):
        raise ProtocolError(f"envelope is a {type(wire).__name__}, not a map")
    if wire.keys() != _ENVELOPE_KEYS:  # (a display reads 10,000 events in a no-op wave)
        keys = set(wire)
        missing = sorted(_ENVELOPE_KEYS - keys)
        extra = sorted(str(k) for k in keys - _ENVELOPE_KEYS)
        raise ProtocolError(f"bad envelope: missing {missing}, extra {extra}")
    version = wire["v"]
    kind = wire["k"]
    # `refused` is frozen across versions: it tells a peer of another version why.
    if (type(version) is not int or version != PROTOCOL_VERSION) and kind != FROZEN_KIND:
        raise VersionMismatch(
            f"protocol version {wire['v']!r}, expected {PROTOCOL_VERSION}: "
            "every Pivot process of one stack must be the same version",
            version,
            kind if isinstance(kind, str) else "",
            wire["s"] if isinstance(wire["s"], str) else "",
        )
    if not isinstance(kind, str) or kind not in _REGISTRY:
        raise ProtocolError(f"unknown message kind {kind!r}")
    layout = _layout(kind)
    fields = layout.fields
    _check_envelope(wire)
    body = wire["b"]
    if not isinstance(body, dict):
        raise ProtocolError(f"{kind}: body is a {type(body).__name__}, not a map")
    if body.keys() != layout.names:
        missing = sorted(set(fields) - set(body))
        extra = sorted(str(k) for k in set(body) - set(fields))
        raise ProtocolError(f"{kind}: missing fields {missing}, extra fields {extra}")
    for name, check in layout.checks.items():
        if not check(body[name]):
            raise ProtocolError(
                f"{kind}.{name}: expected {_describe(fields[name])}, got {_shape(body[name])}"
            )
    for name in layout.records:
        body[name] = _typed(body[name], fields[name])
    msg = layout.cls(**body)
    return Envelope(msg, wire["id"], wire["p"], wire["s"], wire["n"], float(wire["t"]))


def _check_envelope(wire: dict[str, Any]) -> None:
    checks = (
        ("id", str),
        ("s", str),
        ("n", int),
        ("t", (int, float)),
    )
    for key, typ in checks:
        if not isinstance(wire[key], typ) or isinstance(wire[key], bool):
            raise ProtocolError(f"bad envelope field {key!r}: {wire[key]!r}")
    if wire["p"] is not None and not isinstance(wire["p"], str):
        raise ProtocolError(f"bad envelope field 'p': {wire['p']!r}")


def _matches(value: Any, hint: Any) -> bool:
    return _checker(hint)(value)


@functools.cache
def _checker(hint: Any) -> Callable[[Any], bool]:
    """The check of a value against `hint`, built once per type: reading the hint at
    every value (typing.get_origin, get_args) was most of decoding an event."""
    if hint is Any:
        return lambda value: True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if len(args) == 2 and type(None) in args:  # X | None, the usual one: no generator
            (other,) = (_checker(arg) for arg in args if arg is not type(None))
            return lambda value: value is None or other(value)
        checks = tuple(_checker(arg) for arg in args)
        return lambda value: any(check(value) for check in checks)
    if hint is type(None):
        return lambda value: value is None
    if hint is bool:
        return lambda value: isinstance(value, bool)
    if hint is int:
        return lambda value: isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (str, bytes):
        return lambda value: isinstance(value, hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        check = _checker(item)
        return lambda value: isinstance(value, list) and all(check(v) for v in value)
    if origin is tuple:
        # A fixed-length record such as a (stream, line) pair: msgpack sends a list of
        # exactly that length, each item of its own type.
        checks = tuple(_checker(t) for t in typing.get_args(hint))
        return lambda value: (
            isinstance(value, (list, tuple))
            and len(value) == len(checks)
            and all(check(v) for check, v in zip(checks, value, strict=True))
        )
    if origin is dict:
        key_hint, item_hint = typing.get_args(hint)
        key, item = _checker(key_hint), _checker(item_hint)
        if item_hint is Any:  # (details maps: their values are not looked at)
            return lambda value: isinstance(value, dict) and all(key(k) for k in value)
        return lambda value: isinstance(value, dict) and all(key(k) and item(v) for k, v in value.items())
    if _is_record(hint):  # a map with exactly the record's fields, each of its type
        fields = {k: _checker(t) for k, t in _record_fields(hint).items()}
        names = set(fields)
        return lambda value: (
            isinstance(value, dict) and set(value) == names and all(check(value[k]) for k, check in fields.items())
        )
    raise TypeError(f"unsupported field type {hint!r} in a message")


def _typed(value: Any, hint: Any) -> Any:
    """`value` (already checked against `hint`) with its records built: fixed-length
    tuples, and record classes from their maps."""
    if _is_record(hint):
        fields = _record_fields(hint)
        return hint(**{k: _typed(value[k], t) for k, t in fields.items()})
    origin = typing.get_origin(hint)
    if origin is tuple:
        return tuple(value)
    if origin is list:
        (item,) = typing.get_args(hint)
        return [_typed(v, item) for v in value] if _holds_record(item) else value
    if origin is dict:
        _, item = typing.get_args(hint)
        return {k: _typed(v, item) for k, v in value.items()} if _holds_record(item) else value
    if origin in (typing.Union, types.UnionType) and value is not None:
        return next((_typed(value, a) for a in typing.get_args(hint) if _matches(value, a)), value)
    return value


def _plain(value: Any) -> Any:
    """What goes on the wire for a value holding records: maps for record classes."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@functools.cache
def _record_fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _shape(value: Any) -> str:
    """What a wrong value looks like, for the error: its type, and a bad item's."""
    if isinstance(value, list):
        for item in value:
            if isinstance(item, (list, dict)):
                return f"list holding {_shape(item)}"
        return f"list of {len(value)}"
    return type(value).__name__


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is not None:
        return str(hint)
    return getattr(hint, "__name__", None) or str(hint)
