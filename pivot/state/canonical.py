"""Canonical, stable text for plain values and code objects (parts of code fingerprints).

Stable across processes and machines: no `hash()`, no addresses, sets sorted, and the
project root inside strings replaced, so moving the project changes nothing.
"""

from __future__ import annotations

import types
from typing import Any

import xxhash

from pivot.state.codeindex import digest_text

__all__ = ["canonical", "code_digest", "code_names", "constant"]

_CONSTANT_TYPES = (
    type(None), bool, int, float, complex, str, bytes, tuple, list, dict, set, frozenset,
)  # fmt: skip
_MAX_DEPTH = 64


def constant(value: Any, roots: tuple[str, ...]) -> str | None:
    """'=' + hash of a plain value's canonical form, or None when it is not plain data."""
    if not isinstance(value, _CONSTANT_TYPES):
        return None
    text = canonical(value, roots, 0)
    return None if text is None else "=" + digest_text(text)


def canonical(value: Any, roots: tuple[str, ...], depth: int) -> str | None:
    """Exact types only: an IntEnum or numpy float is not plain data. Sets are sorted, so
    the result does not depend on PYTHONHASHSEED; the project root inside strings is
    replaced, so moving the project does not change it."""
    kind = type(value)
    if depth > _MAX_DEPTH:
        return None
    if value is None or kind is bool:
        return repr(value)
    if kind in (int, float, complex, bytes):
        return f"{kind.__name__}:{value!r}" if kind is not int else f"int:{value:x}"
    if kind is str:
        for root in roots:
            value = value.replace(root, "<root>")
        return "str:" + repr(value)
    if kind in (tuple, list, set, frozenset):
        texts = []
        for v in value:
            if type(v) is str and depth < _MAX_DEPTH:  # inline: a 10,000-row table of paths
                for root in roots:
                    v = v.replace(root, "<root>")
                texts.append("str:" + repr(v))
                continue
            text = canonical(v, roots, depth + 1)
            if text is None:
                return None
            texts.append(text)
        if kind in (set, frozenset):
            texts.sort()
        return f"{kind.__name__}({','.join(texts)})"
    if kind is dict:
        pairs = []
        for k, v in value.items():  # insertion order is part of a dict's behaviour
            ck, cv = canonical(k, roots, depth + 1), canonical(v, roots, depth + 1)
            if ck is None or cv is None:
                return None
            pairs.append(f"{ck}:{cv}")
        return f"dict({','.join(pairs)})"
    return None


def code_digest(code: types.CodeType, roots: tuple[str, ...]) -> str:
    """Bytecode, constants and names; not the file, name or line numbers."""
    h = xxhash.xxh3_128()
    h.update(code.co_code)
    h.update(code.co_exceptiontable)
    shape = (
        code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags,
        code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars,
    )  # fmt: skip
    h.update(repr(shape).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            h.update(f"code:{code_digest(const, roots)}".encode())
        else:
            h.update((canonical(const, roots, 0) or repr(const)).encode())
    return h.hexdigest()


def code_names(code: types.CodeType) -> set[str]:
    """Global and attribute names a code object and its nested code objects use."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= code_names(const)
    return names
