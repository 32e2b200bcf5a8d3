"""Quickstart: a tiny linear-regression pipeline in pure Python.

    data/raw.csv --prepare--> data/clean.csv --features--> data/features.csv
        --fit--> model/model.json --evaluate--> metrics.json

Stages run with this folder as the working directory. Defaults below are the params;
params.yaml overrides them per stage name.
"""

from __future__ import annotations

import math

from helpers import (
    fmt,
    is_holdout,
    parse_floats,
    read_csv,
    read_json,
    read_table,
    write_csv,
    write_json,
)

from pivot import stage

COLUMNS = ["x1", "x2", "y"]
FEATURES = ["x1", "x2", "x1_sq", "x1_x2"]


@stage(deps=["data/raw.csv"], outs=["data/clean.csv"])
def prepare(min_rows: int = 5) -> None:
    """Keep the rows that parse as numbers; drop the rest (e.g. a stray `x,1` line)."""
    header, rows = read_csv("data/raw.csv")
    if header != COLUMNS:
        raise ValueError(f"data/raw.csv: expected header {','.join(COLUMNS)}, got {header}")
    kept = [v for v in (parse_floats(r, len(COLUMNS)) for r in rows) if v is not None]
    dropped = len(rows) - len(kept)
    if len(kept) < min_rows:
        raise ValueError(f"only {len(kept)} valid rows in data/raw.csv, need min_rows={min_rows}")
    write_csv("data/clean.csv", COLUMNS, kept)
    print(f"kept {len(kept)} rows, dropped {dropped} malformed")


@stage(deps=["data/clean.csv"], outs=["data/features.csv"])
def features(scale: float = 1.0) -> None:
    """Add x1^2 and x1*x2, standardise every feature, then multiply by `scale`."""
    _, rows = read_table("data/clean.csv")
    raw = [[x1, x2, x1 * x1, x1 * x2] for x1, x2, _ in rows]
    columns = list(zip(*raw, strict=True))
    stats = [(_mean(c), _std(c)) for c in columns]
    out = [
        [scale * (v - m) / s for v, (m, s) in zip(feats, stats, strict=True)] + [y]
        for feats, (_, _, y) in zip(raw, rows, strict=True)
    ]
    write_csv("data/features.csv", [*FEATURES, "y"], out)
    print(f"wrote {len(FEATURES)} features for {len(out)} rows (scale={scale})")


@stage(deps=["data/features.csv"], outs=["model/model.json"])
def fit(lr: float = 0.05, epochs: int = 200) -> None:
    """Linear regression by full-batch gradient descent on the training rows."""
    header, table = read_table("data/features.csv")
    train = [row for i, row in enumerate(table) if not is_holdout(i)]
    xs = [row[:-1] for row in train]
    ys = [row[-1] for row in train]
    n, k = len(xs), len(header) - 1
    weights, bias = [0.0] * k, 0.0
    for epoch in range(1, epochs + 1):
        errors = [_predict(weights, bias, x) - y for x, y in zip(xs, ys, strict=True)]
        for j in range(k):
            weights[j] -= lr * 2.0 / n * sum(e * x[j] for e, x in zip(errors, xs, strict=True))
        bias -= lr * 2.0 / n * sum(errors)
        if not all(math.isfinite(w) and abs(w) < 1e12 for w in [*weights, bias]):
            raise ValueError(f"gradient descent diverged at epoch {epoch}: lower lr (now {lr})")
    train_mse = _mse([_predict(weights, bias, x) for x in xs], ys)
    write_json(
        "model/model.json",
        {
            "features": header[:-1],
            "weights": [round(w, 6) for w in weights],
            "bias": round(bias, 6),
            "train_rows": n,
            "train_mse": round(train_mse, 6),
        },
    )
    print(f"fit {k} weights on {n} rows in {epochs} epochs: train mse {fmt(train_mse, 4)}")


@stage(deps=["model/model.json", "data/features.csv"], metrics=["metrics.json"])
def evaluate() -> None:
    """Score the model on the held-out rows (and on the training rows, for comparison)."""
    model = read_json("model/model.json")
    header, table = read_table("data/features.csv")
    if header[:-1] != model["features"]:
        raise ValueError(f"model features {model['features']} != data/features.csv {header[:-1]}")
    metrics: dict[str, float | int] = {}
    for split, holdout in (("test", True), ("train", False)):
        rows = [row for i, row in enumerate(table) if is_holdout(i) == holdout]
        preds = [_predict(model["weights"], model["bias"], row[:-1]) for row in rows]
        ys = [row[-1] for row in rows]
        prefix = "" if holdout else "train_"
        metrics[prefix + "mse"] = round(_mse(preds, ys), 4)
        metrics[prefix + "r2"] = round(_r2(preds, ys), 4)
        metrics[f"n_{split}"] = len(rows)
    write_json("metrics.json", metrics)
    print(f"test mse {fmt(metrics['mse'], 4)}, r2 {fmt(metrics['r2'], 4)}")


def _predict(weights: list[float], bias: float, x: list[float]) -> float:
    return bias + sum(w * v for w, v in zip(weights, x, strict=True))


def _mean(values: tuple[float, ...] | list[float]) -> float:
    return sum(values) / len(values)


def _std(values: tuple[float, ...]) -> float:
    m = _mean(values)
    var = sum((v - m) ** 2 for v in values) / len(values)
    return var**0.5 or 1.0  # a constant column stays constant instead of dividing by 0


def _mse(preds: list[float], ys: list[float]) -> float:
    return sum((p - y) ** 2 for p, y in zip(preds, ys, strict=True)) / len(ys)


def _r2(preds: list[float], ys: list[float]) -> float:
    m = _mean(ys)
    total = sum((y - m) ** 2 for y in ys)
    return 1.0 - _mse(preds, ys) * len(ys) / total if total else 0.0
