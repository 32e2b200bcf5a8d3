"""Stage params: keyword defaults, overridden by stage(params=...), then by params.yaml."""

from __future__ import annotations

import contextlib
import functools
import re
import weakref
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pivot.errors import PipelineError
from pivot.pipeline.stage import signature_of

if TYPE_CHECKING:
    import yaml

__all__ = ["PARAMS_FILE", "BadYaml", "defaults_of", "load_params_file", "load_yaml", "resolve", "top_level_sections"]

PARAMS_FILE = "params.yaml"
_SCALARS = (bool, int, float, str)

# YAML 1.1 (PyYAML) wants a dot and a signed exponent in a float: `1e-3` and `1.0e3` load
# as strings. YAML 1.2 and every user reading `lr: 1e-3` say float; this resolver adds
# exactly the exponent forms, so ints, dotted floats and quoted strings keep their meaning.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


# func -> its defaults: a loop registering one function as 10,000 stages asks 10,000 times.
_defaults: weakref.WeakKeyDictionary[Callable[..., Any], dict[str, Any]] = weakref.WeakKeyDictionary()


def defaults_of(stage_name: str, func: Callable[..., Any]) -> dict[str, Any]:
    """The function's params: every parameter must have a default (that is its value)."""
    try:
        known = _defaults.get(func)
    except TypeError:  # not weakly referenceable, or unhashable
        known = None
    if known is not None:
        return dict(known)
    result = _defaults_of(stage_name, func)
    with contextlib.suppress(TypeError):
        _defaults[func] = result
    return dict(result)


def _defaults_of(stage_name: str, func: Callable[..., Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for p in signature_of(func).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            raise PipelineError(
                f"stage {stage_name!r}: parameter {p.name!r} of {func.__qualname__}() has no "
                "default; stage parameters are params and need a default value"
            )
        _check_value(stage_name, p.name, p.default, "default")
        result[p.name] = _plain(p.default)
    return result


def command_defaults(stage_name: str, params: dict[str, Any]) -> dict[str, Any]:
    """A command stage's params: the dict it declared is every param, with its default."""
    result: dict[str, Any] = {}
    for key, value in params.items():
        if not isinstance(key, str) or not key:
            raise PipelineError(f"stage {stage_name!r}: param names must be strings, got {key!r}")
        _check_value(stage_name, key, value, "default")
        result[key] = _plain(value)
    return result


@functools.cache
def _yaml_loader() -> type[yaml.SafeLoader]:
    """A SafeLoader that also reads exponent floats (`1e-3`) as floats. Built on first use:
    only the processes that read YAML pay for importing it."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+.0123456789"))
    return Loader


class BadYaml(ValueError):
    """A YAML text that does not parse, said in one line: where, and what is wrong."""


def load_yaml(text: str) -> Any:
    """Safe-load YAML, with `1e-3`-style floats as floats. Raises BadYaml."""
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader: no Python objects
    except yaml.YAMLError as exc:
        raise BadYaml(_yaml_problem(exc)) from None


def _yaml_problem(exc: Exception) -> str:
    # PyYAML's own message spans several lines (the text quoted with a caret under it);
    # an error must be one line, and its line and column are what a user needs.
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem
    if context:
        text += f" ({context})"
    return " ".join(text.split())


def load_params_file(root: Path, sections: Collection[str] | None = None) -> dict[str, dict[str, Any]]:
    """params.yaml as {stage: {param: value}}; an empty entry (`fit:`) means no overrides.
    With `sections`, only those entries are Pivot's (its stages'): the others belong to
    stages that read params.yaml by key path (dvc.yaml's), whatever their values."""
    path = root / PARAMS_FILE
    if not path.exists():
        return {}
    try:
        data = load_yaml(path.read_text())
    except BadYaml as exc:
        raise PipelineError(f"{PARAMS_FILE}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PipelineError(
            f"{PARAMS_FILE}: expected a mapping of stage name -> {{param: value}}, "
            f"got {type(data).__name__}"
        )
    result: dict[str, dict[str, Any]] = {}
    for name, values in data.items():
        if sections is not None and name not in sections:
            continue
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise PipelineError(
                f"{PARAMS_FILE}: entry {name!r} must be a mapping of param -> value, "
                f"got {type(values).__name__}"
            )
        result[name] = values
    return result


def top_level_sections(root: Path) -> list[str]:
    """params.yaml's top-level keys whose values are mappings: what could be a stage's
    section (none if it is missing or not a mapping). A plain value (`seed: 1`, a list a
    foreach reads) is a value of its own, never a misspelt stage's params."""
    try:
        data = load_yaml((root / PARAMS_FILE).read_text())
    except (OSError, BadYaml):  # missing; a YAML error is said by load_params_file
        return []
    return [str(k) for k, v in data.items() if isinstance(v, dict)] if isinstance(data, dict) else []


def resolve(
    stage_name: str,
    defaults: dict[str, Any],
    overrides: dict[str, Any],
    from_file: dict[str, Any] | None,
) -> dict[str, Any]:
    resolved = dict(defaults)
    for source, values in (("stage(params=...)", overrides), (PARAMS_FILE, from_file or {})):
        for key, value in values.items():
            if key not in defaults:
                known = ", ".join(sorted(defaults)) or "none"
                raise PipelineError(
                    f"{source}: stage {stage_name!r} has no param {key!r} (its params: {known})"
                )
            _check_value(stage_name, key, value, source)
            resolved[key] = _coerce(stage_name, key, defaults[key], _plain(value), source)
    return resolved


def _coerce(stage_name: str, key: str, default: Any, value: Any, source: str) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(default) is not type(value):
        raise PipelineError(
            f"{source}: stage {stage_name!r} param {key!r} expects {type(default).__name__} "
            f"(the default is {default!r}), got {type(value).__name__} {value!r}"
        )
    return value


def _plain(value: Any) -> Any:
    """Tuples become lists: params travel as msgpack and are compared with lock files."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _check_value(stage_name: str, key: str, value: Any, source: str) -> None:
    if type(value) is int and not -(2**63) <= value < 2**64:
        # Params travel between Pivot's processes as msgpack, whose integers are 64-bit:
        # one wider lost the pool at the first run (exit code 1, nothing said).
        raise PipelineError(
            f"{source}: stage {stage_name!r} param {key!r} = {value} is wider than 64 bits; "
            "give it as a string (or a float) and convert it in the stage"
        )
    if type(value) is str and not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:  # (a file name of other bytes: msgpack refused it, as above)
            raise PipelineError(
                f"{source}: stage {stage_name!r} param {key!r} = {value!r} is not UTF-8 text "
                "(a file name of bytes of another encoding?); rename the file or pass another value"
            ) from None
    if value is None or isinstance(value, _SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_value(stage_name, key, item, source)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                break
            _check_value(stage_name, key, item, source)
        else:
            return
    raise PipelineError(
        f"{source}: stage {stage_name!r} param {key!r} = {value!r} is a "
        f"{type(value).__name__}; params must be int, float, str, bool, None, "
        "or lists / str-keyed maps of those"
    )
