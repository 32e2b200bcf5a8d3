"""Code fingerprints: a hash of a stage function's normalized AST.

Comments, docstrings, formatting and the function's own name do not count. This first
version covers the stage function's own body; helpers it calls are not yet followed.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

import xxhash

__all__ = ["function_fingerprint"]


def function_fingerprint(func: Callable[..., Any]) -> str:
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):
        # No source (e.g. built in a REPL): fall back to the bytecode, still exact.
        code = getattr(func, "__code__", None)
        raw = repr(code.co_code + repr(code.co_consts).encode()) if code else repr(func)
        return "b" + xxhash.xxh3_64_hexdigest(raw.encode())
    tree = ast.parse(source)
    node = tree.body[0]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        node.name = ""
        _strip_docstring(node)
    for sub in ast.walk(tree):
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            _strip_docstring(sub)
    return xxhash.xxh3_64_hexdigest(ast.dump(tree, include_attributes=False).encode())


def _strip_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
    body = node.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        node.body = body[1:] or [ast.Pass()]
