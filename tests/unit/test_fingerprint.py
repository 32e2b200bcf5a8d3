"""Unit tests for code fingerprints (pivot.state.fingerprint.function_fingerprint).

Each variant is written as a real module under tmp_path and imported, because
inspect.getsource needs the function's file.
"""

from __future__ import annotations

import importlib
import itertools
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pivot.state.fingerprint import function_fingerprint

_counter = itertools.count()

Loader = Callable[..., Callable[..., Any]]


@pytest.fixture
def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Loader]:
    """load(source, name="f") -> the function `name` from a fresh module of `source`."""
    monkeypatch.syspath_prepend(str(tmp_path))
    imported: list[str] = []

    def _load(source: str, name: str = "f") -> Callable[..., Any]:
        mod_name = f"fp_variant_{uuid.uuid4().hex[:8]}_{next(_counter)}"
        (tmp_path / f"{mod_name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        module = importlib.import_module(mod_name)
        imported.append(mod_name)
        return getattr(module, name)

    yield _load
    for mod_name in imported:
        sys.modules.pop(mod_name, None)


def fp(load: Loader, source: str, name: str = "f") -> str:
    return function_fingerprint(load(source, name))


BASE = """
def f(x: int = 1) -> int:
    y = x * 2 + 3
    return round(y)
"""


def test_fingerprint_is_a_stable_string(load: Loader) -> None:
    func = load(BASE)
    first = function_fingerprint(func)
    assert isinstance(first, str) and first
    assert function_fingerprint(func) == first
    assert fp(load, BASE) == first  # same source in another module


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(
            """
            # A comment above.
            def f(x: int = 1) -> int:  # trailing comment
                # inside
                y = x * 2 + 3  # why three
                return round(y)
                # after
            """,
            id="comments",
        ),
        pytest.param(
            '''
            def f(x: int = 1) -> int:
                """Docstring that explains things."""
                y = x * 2 + 3
                return round(y)
            ''',
            id="docstring",
        ),
        pytest.param(
            """
            def f(x: int = 1) -> int:
                '''Another docstring,
                spanning lines.'''
                y = x * 2 + 3
                return round(y)
            """,
            id="multiline-docstring",
        ),
        pytest.param(
            """
            def f( x : int=1 )->int :
                y=(x*2)+3
                return round(
                    y,
                )
            """,
            id="formatting",
        ),
        pytest.param(
            """
            def f(x: int = 1) -> int:
                y = x \\
                    * 2 \\
                    + 3
                return round(y)
            """,
            id="line-continuations",
        ),
        pytest.param(
            """
            def f(x: int = 1) -> int:

                y = x * 2 + 3


                return round(y)
            """,
            id="blank-lines",
        ),
        pytest.param(
            """
            import os

            UNRELATED = 5



            def f(x: int = 1) -> int:
                y = x * 2 + 3
                return round(y)
            """,
            id="other-module-content-and-position",
        ),
        pytest.param(
            """
            def f(x: int = 0x1) -> int:
                y = x * 2 + 3
                return round(y)
            """,
            id="same-constant-other-spelling",
        ),
    ],
)
def test_ignored_differences(load: Loader, variant: str) -> None:
    assert fp(load, variant) == fp(load, BASE)


def test_function_name_is_ignored(load: Loader) -> None:
    renamed = BASE.replace("def f(", "def train_model(")
    assert fp(load, renamed, name="train_model") == fp(load, BASE)


def test_quote_style_is_ignored(load: Loader) -> None:
    single = "def f():\n    return 'text'\n"
    double = 'def f():\n    return "text"\n'
    assert fp(load, single) == fp(load, double)


def test_docstring_only_body_equals_pass(load: Loader) -> None:
    assert fp(load, 'def f():\n    """Nothing yet."""\n') == fp(load, "def f():\n    pass\n")


def test_nested_function_docstrings_are_ignored(load: Loader) -> None:
    plain = """
    def f():
        def inner():
            return 1
        class K:
            x = 2
        return inner() + K.x
    """
    documented = '''
    def f():
        """Outer."""
        def inner():
            """Inner."""
            return 1
        class K:
            """A class."""
            x = 2
        return inner() + K.x
    '''
    assert fp(load, plain) == fp(load, documented)


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(BASE.replace("+ 3", "+ 4"), id="constant"),
        pytest.param(BASE.replace("x * 2", "x + 2"), id="operator"),
        pytest.param(BASE.replace("round(y)", "abs(y)"), id="call"),
        pytest.param(BASE.replace("round(y)", "round(y, 1)"), id="call-arguments"),
        pytest.param(BASE.replace("y = x * 2 + 3", "y = x * (2 + 3)"), id="precedence"),
        pytest.param(
            BASE.replace("return round(y)", "print(y)\n    return round(y)"), id="added-statement"
        ),
        pytest.param(BASE.replace("x * 2 + 3", "x * 2 + 3.0"), id="int-to-float-constant"),
        pytest.param(
            BASE.replace("y = x", "z = x").replace("round(y)", "round(z)"), id="local-variable-name"
        ),
    ],
)
def test_code_changes_change_the_fingerprint(load: Loader, variant: str) -> None:
    assert variant != BASE
    assert fp(load, variant) != fp(load, BASE)


def test_string_constant_change(load: Loader) -> None:
    assert fp(load, "def f():\n    return 'a'\n") != fp(load, "def f():\n    return 'b'\n")


def test_non_docstring_string_statement_counts(load: Loader) -> None:
    # Only a leading string is a docstring; a later bare string is code.
    a = "def f():\n    x = 1\n    'note'\n    return x\n"
    b = "def f():\n    x = 1\n    return x\n"
    assert fp(load, a) != fp(load, b)


def test_async_function(load: Loader) -> None:
    a = 'async def f():\n    """Doc."""\n    return 1\n'
    b = "async def g():\n    return 1\n"
    c = "async def f():\n    return 2\n"
    assert fp(load, a) == fp(load, b, name="g")
    assert fp(load, a) != fp(load, c)


def test_function_without_source_falls_back_to_bytecode() -> None:
    def build(src: str) -> Callable[..., Any]:
        namespace: dict[str, Any] = {}
        exec(compile(src, "<no file>", "exec"), namespace)
        return namespace["f"]

    one = function_fingerprint(build("def f():\n    return 1\n"))
    again = function_fingerprint(build("def f():\n    return 1\n"))
    other = function_fingerprint(build("def f():\n    return 2\n"))
    assert one.startswith("b")
    assert one == again
    assert one != other
