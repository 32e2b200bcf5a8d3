"""The project bench/reload_study.py writes, and the edits it applies to it.

The project is a package `src/` (config, utils, features, registry, model) and a
`pipeline.py` of stage functions, shaped like small ML code: `from x import y` and
`import x.y as y` imports, a module-level cache and an `lru_cache`, a registry filled by a
class decorator, a dataclass, instances kept between stages, a callback list, and the
process set-up ML code does at import (logging, warnings filters, environment defaults).
Lines starting with "# @heavy: " are kept (without the mark) with --heavy and dropped
otherwise. Stage results are plain data, so a repr never shows an address.

Each edit is a list of text replacements (or a new file), applied to the baseline project
and undone after its trials, with what a fresh interpreter must then see: the stages whose
result changes, each with a text its new result must contain.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "EDITS",
    "ENTRY",
    "HEAVY",
    "PROJECT",
    "Change",
    "Edit",
    "module_name",
    "project_text",
    "third_party_imports",
]

HEAVY = ("numpy", "pandas", "sklearn")
ENTRY = "pipeline"
_HEAVY_MARK = "# @heavy: "

PROJECT: dict[str, str] = {
    "src/__init__.py": '''\
"""A small ML-ish package, written by bench/reload_study.py."""

VERSION = "1.0"
''',
    "src/config.py": '''\
"""Settings the other modules import by name."""

SCALE = 2.0
CLIP = 10.0
SEED = 7
THRESHOLD = 0.2
LABELS = ("neg", "pos")
''',
    "src/utils.py": '''\
"""Process set-up (logging, warnings, environment) and small helpers."""

import logging
import os
import warnings

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
warnings.simplefilter("ignore", FutureWarning)
os.environ.setdefault("PIPELINE_WORKERS", "2")

log = logging.getLogger("src")
HOOKS = []


def on_result(fn):
    """Call fn on every report's predictions."""
    HOOKS.append(fn)
    return fn


def mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


def rounded(x, nd=3):
    return round(x, nd)


def parse(line):
    return [float(tok) for tok in line.split(",") if tok.strip()]
''',
    "src/features.py": '''\
"""Feature helpers and a module-level cache of the parsed data."""

import functools
import random
import warnings

from src import utils
from src.config import CLIP, SCALE, SEED
from src.utils import mean
# @heavy: import numpy as np
# @heavy: import pandas as pd

RAW = {"train": "1,4,9,16,25,3,7", "test": "2,8,5,11"}
_CACHE = {}


def load(name):
    if name not in _CACHE:
        _CACHE[name] = utils.parse(RAW[name])
    return _CACHE[name]


@functools.lru_cache(maxsize=None)
def load_scaled(name):
    return tuple(x * SCALE for x in load(name))


def normalize(xs):
    m = mean(xs)
    span = (max(xs) - min(xs)) or 1.0
    return [(x - m) / span for x in xs]


def clip(xs, limit=CLIP):
    return [min(x, limit) for x in xs]


def shuffled(xs):
    out = list(xs)
    random.Random(SEED).shuffle(out)
    return out


def legacy_mean(xs):
    warnings.warn("legacy_mean is deprecated, use mean", FutureWarning, stacklevel=1)
    return mean(xs)


def feat_mean(xs):
    return mean(xs)


def feat_span(xs):
    return max(xs) - min(xs)


# @heavy: def frame_stats(xs):
# @heavy:     s = pd.Series(np.asarray(xs, dtype=float))
# @heavy:     return {"mean": float(s.mean()), "std": float(s.std())}


FEATURES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("feat_")}
''',
    "src/registry.py": '''\
"""Model classes by name, filled by a class decorator."""

REGISTRY = {}


def register(name):
    def deco(cls):
        REGISTRY[name] = cls
        return cls

    return deco
''',
    "src/model.py": '''\
"""Training parameters, a model class and its registered variants."""

from dataclasses import asdict, dataclass

import src.features as features
from src.registry import register
from src.utils import on_result, rounded
# @heavy: from sklearn.linear_model import LinearRegression


@dataclass
class Params:
    lr: float = 0.5
    epochs: int = 10


class Model:
    kind = "base"
    bias = 0.0

    def __init__(self, params=None):
        self.params = params or Params()
        self.w = 0.0

    def fit(self, xs, ys):
        for _ in range(self.params.epochs):
            grad = sum((self.w * x + self.bias - y) * x for x, y in zip(xs, ys)) / len(xs)
            self.w -= self.params.lr * grad
        return self

    def predict(self, xs):
        return [self.w * x + self.bias for x in xs]

    def describe(self):
        return {"kind": self.kind, **asdict(self.params)}


@register("linear")
class Linear(Model):
    kind = "linear"


@register("shifted")
class Shifted(Model):
    kind = "shifted"
    bias = 0.5


def postprocess(preds):
    return [rounded(p, 2) for p in features.clip(preds, 0.3)]


@on_result
def summarize(preds):
    return f"n={len(preds)}"


DEFAULT = Linear()
''',
    "pipeline.py": '''\
"""The stages: what a pipeline tool's workers run by name."""

import os

import src
import src.model as model
from src import utils
from src.config import LABELS, THRESHOLD
from src.features import FEATURES, clip, legacy_mean, load, load_scaled, normalize, shuffled
from src.registry import REGISTRY

_FITTED = {}


def fitted(name):
    """The model of that name trained on the training set, kept for the later stages."""
    if name not in _FITTED:
        xs = normalize(list(load_scaled("train")))
        ys = [2 * x + 1 for x in xs]
        _FITTED[name] = REGISTRY[name]().fit(xs, ys)
    return _FITTED[name]


def prepare():
    return [utils.rounded(x) for x in normalize(clip(load_scaled("train")))]


def featurize():
    xs = load("test")
    return {name: utils.rounded(fn(xs)) for name, fn in FEATURES.items()}


def split():
    return shuffled(load("train"))


def train():
    return {name: utils.rounded(fitted(name).predict([1.0])[0]) for name in sorted(REGISTRY)}


def evaluate():
    preds = fitted("linear").predict(normalize(list(load_scaled("test"))))
    post = getattr(model, "postprocess", None)
    if post is not None:
        preds = post(preds)
    return {"preds": [utils.rounded(p) for p in preds], "labels": [LABELS[p > THRESHOLD] for p in preds]}


def describe():
    return model.DEFAULT.describe()


def report():
    preds = evaluate()["preds"]
    utils.log.info("report, version %s", src.VERSION)
    return [hook(preds) for hook in utils.HOOKS] + [os.environ["PIPELINE_WORKERS"]]


def legacy():
    return utils.rounded(legacy_mean(load("test")))


# @heavy: def stats():
# @heavy:     return {k: utils.rounded(v) for k, v in src.features.frame_stats(load("test")).items()}
# @heavy:
# @heavy:
# @heavy: def sk_fit():
# @heavy:     xs = list(load_scaled("train"))
# @heavy:     reg = model.LinearRegression().fit([[x] for x in xs], [2 * x + 1 for x in xs])
# @heavy:     return [utils.rounded(float(reg.coef_[0])), utils.rounded(float(reg.intercept_))]


STAGES = {
    "prepare": prepare,
    "featurize": featurize,
    "split": split,
    "train": train,
    "evaluate": evaluate,
    "describe": describe,
    "report": report,
    "legacy": legacy,
}
# @heavy: STAGES.update(stats=stats, sk_fit=sk_fit)
''',
}


def project_text(rel: str, heavy: bool) -> str:
    lines = []
    for line in PROJECT[rel].splitlines(keepends=True):
        if line.startswith(_HEAVY_MARK):
            if heavy:
                lines.append(line[len(_HEAVY_MARK):] or "\n")
        else:
            lines.append(line)
    return "".join(lines)


def third_party_imports(heavy: bool) -> list[str]:
    """The modules of HEAVY (and their submodules) the project's files import by name."""
    found: set[str] = set()
    for rel in PROJECT:
        for node in ast.walk(ast.parse(project_text(rel, heavy))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
    return sorted(m for m in found if m.partition(".")[0] in HEAVY)



@dataclass(frozen=True)
class Change:
    path: str
    old: str  # "" with a path absent from the project: create the file with `new`
    new: str


@dataclass(frozen=True)
class Edit:
    key: str
    kind: str
    changes: tuple[Change, ...]
    # The stages whose result a fresh interpreter must see change, each with a text its new
    # result (repr or output) must contain; "*" for "the pipeline no longer imports".
    expect: Mapping[str, str] = field(default_factory=dict)
    expect_heavy: Mapping[str, str] = field(default_factory=dict)  # more, with --heavy

    def expected(self, heavy: bool) -> dict[str, str]:
        return {**self.expect, **(self.expect_heavy if heavy else {})}


def _c(path: str, old: str, new: str) -> Change:
    return Change(path, old, new)


F, U, C, M, P = "src/features.py", "src/utils.py", "src/config.py", "src/model.py", "pipeline.py"
_IMPORTS = "from src.features import FEATURES, clip, legacy_mean, load, load_scaled, normalize, shuffled\n"

EDITS: tuple[Edit, ...] = (
    Edit("helper-body", "helper body (callers use `from x import y`)",
         (_c(F, "    return [(x - m) / span for x in xs]", "    return [(x - m) / (2 * span) for x in xs]"),),
         {"prepare": "-0.375", "train": "'linear': 0.253", "evaluate": "-0.06"}),
    Edit("constant", "module constant read via `from x import y` at import",
         (_c(C, "SCALE = 2.0", "SCALE = 3.0"),), {"prepare": "0.163"}),
    Edit("add-function", "new function, called from another module",
         (_c(U, "def rounded(", "def median(xs):\n    return sorted(xs)[len(xs) // 2]\n\n\ndef rounded("),
          _c(F, "def feat_span(", "def feat_median(xs):\n    return utils.median(xs)\n\n\ndef feat_span(")),
         {"featurize": "'median': 8.0"}),
    Edit("rename", "function renamed with its callers",
         (_c(F, "def shuffled(", "def shuffle_copy("),
          _c(P, _IMPORTS, _IMPORTS.replace("shuffled", "shuffle_copy")),
          _c(P, "return shuffled(", "return shuffle_copy(")),
         {}),
    Edit("rename-scanned", "function renamed, found by a scan of the module's names",
         (_c(F, "def feat_span(", "def feat_range("),), {"featurize": "'range': 9.0}"}),
    Edit("method", "class method body",
         (_c(M, "self.w -= self.params.lr * grad", "self.w -= 2 * self.params.lr * grad"),),
         {"train": "'linear': 1.359", "evaluate": "0.23"}),
    Edit("default-arg", "default argument taken from another module's constant",
         (_c(C, "CLIP = 10.0", "CLIP = 6.0"),), {"prepare": "0.143"}),
    Edit("default-arg-local", "default argument of a helper",
         (_c(U, "def rounded(x, nd=3):", "def rounded(x, nd=2):"),),
         {"train": "'linear': 0.85,"}, {"stats": "'std': "}),
    Edit("registry-key", "decorator-registered entry renamed",
         (_c(M, '@register("shifted")', '@register("offset")'),), {"train": "'offset'"}),
    Edit("cache-content", "what a module-level cache holds",
         (_c(F, "_CACHE[name] = utils.parse(RAW[name])", "_CACHE[name] = sorted(utils.parse(RAW[name]))"),),
         {"prepare": "[-0.75, -0.25, 0.0", "split": "", "evaluate": "-0.14, 0.14"}),
    Edit("transitive", "helper behind another module's cache (transitive)",
         (_c(U, "[float(tok) for tok", "[float(tok) / 10 for tok"),),
         {"prepare": "", "featurize": "'mean': 0.65", "split": "2.5", "legacy": "0.65"},
         {"stats": "'mean': 0.65"}),
    Edit("from-import-value", "value used via `from x import y`",
         (_c(C, "THRESHOLD = 0.2", "THRESHOLD = 0.0"),), {"evaluate": "'neg', 'pos', 'neg', 'pos'"}),
    Edit("seed", "seed constant read via `from x import y`",
         (_c(C, "SEED = 7", "SEED = 11"),), {"split": "[4.0, 1.0"}),
    Edit("add-import", "import added and used",
         (_c(F, "import random\n", "import random\nimport statistics\n"),
          _c(F, "span = (max(xs) - min(xs)) or 1.0", "span = statistics.pstdev(xs) or 1.0")),
         {"prepare": "-2.121", "train": "", "evaluate": ""}),
    Edit("drop-import", "import removed with its last use",
         (_c(M, "from src.utils import on_result, rounded\n", "from src.utils import on_result\n"),
          _c(M, "[rounded(p, 2) for p", "[round(p, 2) for p")),
         {}),
    Edit("drop-import-used", "import removed, name still used (a mistake)",
         (_c(F, "from src.utils import mean\n", ""),),
         {"prepare": "NameError", "featurize": "NameError", "train": "NameError",
          "evaluate": "NameError", "report": "NameError", "legacy": "NameError"}),
    Edit("drop-function-used", "function deleted, still imported elsewhere (a mistake)",
         (_c(U, "def rounded(x, nd=3):\n    return round(x, nd)\n\n\n", ""),), {"*": "ImportError"}),
    Edit("drop-hook", "optional hook removed (caller uses getattr)",
         (_c(M, "def postprocess(preds):\n    return [rounded(p, 2) for p in features.clip(preds, 0.3)]\n\n\n", ""),),
         {"evaluate": "0.424"}),
    Edit("dataclass-default", "dataclass field default",
         (_c(M, "lr: float = 0.5", "lr: float = 0.8"),),
         {"train": "1.186", "evaluate": "", "describe": "'lr': 0.8"}),
    Edit("dataclass-field", "dataclass field added",
         (_c(M, "    epochs: int = 10\n", "    epochs: int = 10\n    momentum: float = 0.0\n"),),
         {"describe": "'momentum': 0.0"}),
    Edit("class-attr", "class attribute read by instances made before",
         (_c(M, "    bias = 0.5", "    bias = 1.5"),), {"train": "'shifted': 2.349"}),
    Edit("callback", "registered callback body",
         (_c(M, 'return f"n={len(preds)}"', 'return f"n={len(preds)} max={max(preds)}"'),),
         {"report": "max=0.3"}),
    Edit("stage-body", "stage function body",
         (_c(P, "utils.rounded(fn(xs)) for name", "utils.rounded(fn(xs) / 2) for name"),),
         {"featurize": "'mean': 3.25"}),
    Edit("package-attr", "package attribute (`src/__init__.py`)",
         (_c("src/__init__.py", 'VERSION = "1.0"', 'VERSION = "1.1"'),), {"report": "version 1.1"}),
    Edit("new-module", "new module imported by the entry",
         (_c("src/metrics.py", "", "def mae(a, b):\n    return sum(abs(x - y) for x, y in zip(a, b)) / len(a)\n"),
          _c(P, "from src.registry import REGISTRY\n", "from src.metrics import mae\nfrom src.registry import REGISTRY\n"),
          _c(P, '"labels": [LABELS', '"mae": utils.rounded(mae(preds, [0.0] * len(preds))), "labels": [LABELS')),
         {"evaluate": "'mae'"}),
    Edit("data-constant", "data literal in the module that caches it",
         (_c(F, '"test": "2,8,5,11"', '"test": "2,8,5,11,14"'),),
         {"featurize": "'mean': 8.0", "evaluate": "", "report": "n=5", "legacy": "8.0"},
         {"stats": "'mean': 8.0"}),
    Edit("logging-format", "logging set-up (`logging.basicConfig`)",
         (_c(U, 'format="%(levelname)s %(name)s: %(message)s"', 'format="[%(levelname)s] %(message)s"'),),
         {"report": "[INFO] report"}),
    Edit("warnings-filter", "warnings filter removed",
         (_c(U, 'warnings.simplefilter("ignore", FutureWarning)\n', ""),), {"legacy": "FutureWarning"}),
    Edit("env-default", "environment default (`os.environ.setdefault`)",
         (_c(U, 'os.environ.setdefault("PIPELINE_WORKERS", "2")', 'os.environ.setdefault("PIPELINE_WORKERS", "4")'),),
         {"report": "'4'"}),
)


def module_name(rel: str) -> str:
    parts = rel.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
