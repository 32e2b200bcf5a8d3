"""A project's own settings, committed with it: `[tool.pivot]` in its pyproject.toml.

    [tool.pivot]
    warm = false   # every script stage in a fresh interpreter (docs/dvc.md, warm scripts)

The loader checks them at every load (a misspelt key or a wrong type is a pipeline error
naming the file); where they take effect (a worker about to run a script) they are read
again, leniently, so an edit applies to the next run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pivot.errors import PipelineError

__all__ = ["FILE", "KNOWN", "check_settings", "setting"]

FILE = "pyproject.toml"
KNOWN: dict[str, type] = {"warm": bool}


def _section(root: Path) -> dict[str, Any]:
    """[tool.pivot] as written; {} without one. Raises PipelineError for a file that
    does not parse or a section that is no table."""
    try:
        text = (root / FILE).read_text()
    except OSError:
        return {}
    if "pivot" not in text:  # most projects: no parse at all
        return {}
    import tomllib

    try:
        tool = tomllib.loads(text).get("tool", {})
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{FILE}: not valid TOML: {exc}") from None
    section = tool.get("pivot", {}) if isinstance(tool, dict) else {}
    if not isinstance(section, dict):
        raise PipelineError(f"{FILE}: [tool.pivot] must be a table of settings, got {type(section).__name__}")
    return section


def check_settings(root: Path) -> None:
    """PipelineError for a setting Pivot does not know or of the wrong type."""
    for key, value in _section(root).items():
        wanted = KNOWN.get(key)
        if wanted is None:
            import difflib

            close = difflib.get_close_matches(key, list(KNOWN), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(KNOWN))})"
            raise PipelineError(f"{FILE}: [tool.pivot] has no setting {key!r}{hint}")
        if type(value) is not wanted:
            raise PipelineError(
                f"{FILE}: [tool.pivot] {key} must be {wanted.__name__} (true or false), got {value!r}"
            )


def setting(root: Path, key: str, default: Any) -> Any:
    """One setting as it is now; `default` when unset or unreadable (the loader says why)."""
    try:
        value = _section(root).get(key, default)
    except PipelineError:
        return default
    return value if type(value) is KNOWN[key] else default
