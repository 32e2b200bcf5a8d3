"""JSON text for users and their tools: strict JSON, as `jq` and browsers parse it.

Python writes a float NaN or infinity as a bare `NaN` / `Infinity`, which no strict
parser takes (a NaN param, a metric of a run that diverged): those are written as the
strings "NaN", "Infinity" and "-Infinity". Everything else costs one `json.dumps`, as
before.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps"]


def dumps(value: Any, **options: Any) -> str:
    """`json.dumps(value, **options)`, with non-finite floats as strings."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError:  # (a non-finite float somewhere: rare, so looked for only now)
        return json.dumps(_finite(value), allow_nan=False, **options)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
