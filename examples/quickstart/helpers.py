"""Small IO helpers shared by the quickstart stages (stdlib only).

Everything written here is deterministic: fixed float formatting, "\\n" line endings,
sorted JSON keys, no timestamps. Same input, same bytes.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

DIGITS = 6  # decimals written for every float in CSV files


def parse_floats(cells: list[str], width: int) -> list[float] | None:
    """The row as floats, or None if it is malformed (wrong width, not a finite number)."""
    if len(cells) != width:
        return None
    try:
        values = [float(c) for c in cells]
    except ValueError:
        return None
    if not all(math.isfinite(v) for v in values):
        return None
    return values


def read_csv(path: str) -> tuple[list[str], list[list[str]]]:
    """Header and raw string rows of a CSV file; blank lines are skipped."""
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row and any(c.strip() for c in row)]
    if not rows:
        raise ValueError(f"{path} is empty: expected a header line")
    return [c.strip() for c in rows[0]], rows[1:]


def read_table(path: str) -> tuple[list[str], list[list[float]]]:
    """A CSV file written by `write_csv`: header plus all-numeric rows (strict)."""
    header, rows = read_csv(path)
    table = []
    for n, cells in enumerate(rows, start=2):
        values = parse_floats(cells, len(header))
        if values is None:
            raise ValueError(f"{path}:{n}: malformed row {cells!r}")
        table.append(values)
    return header, table


def fmt(value: float, digits: int = DIGITS) -> str:
    text = f"{value:.{digits}f}"
    return "0." + "0" * digits if text == "-0." + "0" * digits else text  # no "-0.000000"


def write_csv(path: str, header: list[str], rows: list[list[float]]) -> None:
    _makedirs(path)
    with open(path, "w", newline="\n") as f:
        f.write(",".join(header) + "\n")
        for row in rows:
            f.write(",".join(fmt(v) for v in row) + "\n")


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def write_json(path: str, obj: Any) -> None:
    _makedirs(path)
    with open(path, "w", newline="\n") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def is_holdout(row_index: int) -> bool:
    """Deterministic train/test split shared by `fit` and `evaluate`: every 5th row is test."""
    return row_index % 5 == 4


def _makedirs(path: str) -> None:
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
