"""Unit tests for code fingerprints (pivot.state.fingerprint, pivot.state.codeindex).

Each test writes a small project under tmp_path and imports it for real. To compare
before and after an edit, the project's modules are purged from sys.modules and
imported again, so both fingerprints come from genuine imports of the files on disk.
Bytecode caching is off during these tests: a same-size edit within one second would
otherwise import a stale .pyc.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from pivot.pipeline.stage import clear_registry
from pivot.state.codeindex import ParseCache, parse_source
from pivot.state.fingerprint import CodeFingerprint, Fingerprinter, function_fingerprint

PYTHON = platform.python_version()

HELPERS = '''\
"""Helpers for the test pipeline."""

import re

THRESHOLD = 0.5
PATTERN = re.compile(r"a+")
square = lambda x: x * x  # noqa: E731


def clean(rows, limit=10):
    """Drop short rows."""
    return [r for r in rows if len(r) > THRESHOLD][:limit]


def matches(text):
    return PATTERN.findall(text)


def unused():
    return 1
'''

PIPELINE = '''\
"""The test pipeline."""

import helpers
from pivot import stage


@stage(deps=["data.csv"], outs=["out.csv"])
def fit(rows=("ab", "c"), scale: float = 1.0):
    """Fit the model."""
    cleaned = helpers.clean(rows)
    return [len(r) * scale for r in cleaned]
'''

BASE = {"helpers.py": HELPERS, "pipeline.py": PIPELINE}


class Project:
    """A project folder whose modules can be imported fresh after every edit."""

    def __init__(self, root: Path, base_path: list[str], scratch: Path) -> None:
        self.root = root
        self.paths = [root]
        self._base_path = base_path
        self._scratch = str(scratch)  # every project of the test lives below it
        root.mkdir(parents=True, exist_ok=True)

    def write(self, files: dict[str, str]) -> Project:
        for rel, text in files.items():
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        return self

    def edit(self, rel: str, old: str, new: str) -> None:
        path = self.root / rel
        text = path.read_text()
        assert text.count(old) == 1, f"{old!r} must occur once in {rel}"
        path.write_text(text.replace(old, new))

    def purge(self) -> None:
        for name, module in list(sys.modules.items()):
            locations = [
                getattr(module, "__file__", None),
                *(getattr(module, "__path__", None) or ()),
            ]
            if any(isinstance(p, str) and p.startswith(self._scratch) for p in locations):
                del sys.modules[name]

    def load(self, ref: str = "pipeline.fit") -> Callable[..., Any]:
        self.purge()
        clear_registry()
        sys.path[:] = [str(p) for p in self.paths] + self._base_path
        importlib.invalidate_caches()
        module_name, _, func_name = ref.rpartition(".")
        return getattr(importlib.import_module(module_name), func_name)

    def fp(self, ref: str = "pipeline.fit", cache_file: Path | None = None) -> CodeFingerprint:
        return Fingerprinter(self.root, cache_file).stage(self.load(ref))


@pytest.fixture
def make_project(tmp_path: Path) -> Iterator[Callable[[str], Project]]:
    """make_project(name) -> a Project in tmp_path/name; sys.modules/sys.path restored after."""
    saved_modules = set(sys.modules)
    saved_path = list(sys.path)
    saved_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    yield lambda name: Project(tmp_path / name, saved_path, tmp_path)
    for name in set(sys.modules) - saved_modules:
        del sys.modules[name]
    sys.path[:] = saved_path
    sys.dont_write_bytecode = saved_bytecode
    clear_registry()
    importlib.invalidate_caches()


@pytest.fixture
def project(make_project: Callable[[str], Project]) -> Project:
    return make_project("proj").write(BASE)


def changed(a: CodeFingerprint, b: CodeFingerprint) -> set[str]:
    return {k for k in a.parts.keys() | b.parts.keys() if a.parts.get(k) != b.parts.get(k)}


def assert_changed(a: CodeFingerprint, b: CodeFingerprint, keys: set[str]) -> None:
    assert a.digest != b.digest
    assert changed(a, b) == keys


# -- what a fingerprint holds -------------------------------------------------------------


def test_parts_name_everything_the_stage_reaches(project: Project) -> None:
    result = project.fp()
    assert set(result.parts) == {"pipeline.fit", "helpers.clean", "helpers.THRESHOLD", "python"}
    assert result.parts["python"] == PYTHON
    assert result.sources == ("helpers.py", "pipeline.py")
    assert len(result.digest) == 32 and int(result.digest, 16) >= 0


def test_same_code_gives_the_same_fingerprint(project: Project) -> None:
    first = project.fp()
    assert project.fp() == first  # a fresh import, a fresh Fingerprinter
    func = project.load()
    fingerprinter = Fingerprinter(project.root, None)
    assert fingerprinter.stage(func) == fingerprinter.stage(func) == first


def test_moving_the_project_changes_nothing(make_project: Callable[[str], Project]) -> None:
    files = {
        **BASE,
        "helpers.py": HELPERS
        + '\nimport os\nDATA = os.path.join(os.path.dirname(__file__), "data")\n',
    }
    files["pipeline.py"] = PIPELINE.replace("return [", "print(helpers.DATA)\n    return [")
    here = make_project("here").write(files).fp()
    there = make_project("elsewhere/deeper").write(files).fp()
    assert "helpers.DATA" in here.parts
    assert here == there


def test_root_reached_through_a_symlink(make_project: Callable[[str], Project]) -> None:
    files = {
        **BASE,
        "helpers.py": HELPERS + "\nimport os\nDATA = os.path.dirname(os.path.abspath(__file__))\n",
    }
    files["pipeline.py"] = PIPELINE.replace("return [", "print(helpers.DATA)\n    return [")
    real = make_project("real").write(files)
    direct = real.fp()
    link = real.root.parent / "link"
    link.symlink_to(real.root)
    real.paths = [link]
    assert Fingerprinter(link, None).stage(real.load()) == direct


# -- edits that do not matter ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "old", "new"),
    [
        pytest.param("pipeline.py", "    cleaned =", "    # why\n    cleaned =", id="comment"),
        pytest.param("pipeline.py", "Fit the model.", "Fit it, well.\n\n    More.", id="docstring"),
        pytest.param(
            "pipeline.py",
            "helpers.clean(rows)",
            "helpers.clean(\n        rows,\n    )",
            id="formatting",
        ),
        pytest.param("pipeline.py", '"""The test pipeline."""', "\n\n\n", id="blank-lines-above"),
        pytest.param(
            "pipeline.py", 'deps=["data.csv"]', 'deps=["other.csv"]', id="stage-decorator"
        ),
        pytest.param("pipeline.py", '("ab", "c")', '("x",)', id="default-value"),
        pytest.param(
            "pipeline.py", "scale: float = 1.0", "scale: float = 2.5", id="default-value-2"
        ),
        pytest.param(
            "helpers.py",
            "    return [r",
            "    # keep long rows\n    return [r",
            id="helper-comment",
        ),
        pytest.param("helpers.py", "Drop short rows.", "Drop rows.", id="helper-docstring"),
        pytest.param(
            "helpers.py", "THRESHOLD = 0.5", "THRESHOLD = 1 / 2", id="same-constant-value"
        ),
        pytest.param(
            "helpers.py",
            "def unused():\n    return 1",
            "def unused():\n    return 2",
            id="unreached-helper",
        ),
        pytest.param(
            "helpers.py",
            "def clean(rows, limit=10):",
            "def added():\n    return 3\n\n\ndef clean(rows, limit=10):",
            id="added-function",
        ),
        pytest.param(
            "helpers.py",
            'PATTERN = re.compile(r"a+")',
            "PATTERN = re.compile( r'a+' )",
            id="assignment-formatting",
        ),
    ],
)
def test_edits_that_do_not_change_the_fingerprint(
    project: Project, rel: str, old: str, new: str
) -> None:
    before = project.fp()
    project.edit(rel, old, new)
    assert project.fp() == before


def test_moving_a_function_in_its_file_changes_nothing(project: Project) -> None:
    before = project.fp()
    text = (project.root / "helpers.py").read_text()
    clean_def = text[text.index("def clean") : text.index("def matches")]
    project.write({"helpers.py": text.replace(clean_def, "") + "\n\n" + clean_def})
    assert project.fp() == before


def test_stage_function_name_is_not_code(project: Project) -> None:
    before = project.fp()
    project.edit("pipeline.py", "def fit(", "def train(")
    after = project.fp("pipeline.train")
    assert after.digest == before.digest
    assert "pipeline.train" in after.parts and "pipeline.fit" not in after.parts


# -- edits that matter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "old", "new", "keys"),
    [
        pytest.param(
            "pipeline.py", "len(r) * scale", "len(r) + scale", {"pipeline.fit"}, id="stage-body"
        ),
        pytest.param(
            "pipeline.py", "scale: float", "factor: float", {"pipeline.fit"}, id="param-name"
        ),
        pytest.param(
            "helpers.py", "[:limit]", "[: limit - 1]", {"helpers.clean"}, id="helper-body"
        ),
        pytest.param("helpers.py", "limit=10", "limit=11", {"helpers.clean"}, id="helper-default"),
        pytest.param(
            "helpers.py", "THRESHOLD = 0.5", "THRESHOLD = 0.7", {"helpers.THRESHOLD"}, id="constant"
        ),
        pytest.param(
            "helpers.py",
            "len(r) > THRESHOLD]",
            "len(r) > THRESHOLD + unused()]",
            {"helpers.clean", "helpers.unused"},
            id="new-reference",
        ),
        pytest.param(
            "pipeline.py",
            "cleaned = helpers.clean(rows)",
            "cleaned = helpers.clean(rows) + helpers.matches('aa')",
            {"pipeline.fit", "helpers.matches", "helpers.PATTERN"},
            id="new-helper-and-object",
        ),
    ],
)
def test_edits_that_change_the_fingerprint(
    project: Project, rel: str, old: str, new: str, keys: set[str]
) -> None:
    before = project.fp()
    project.edit(rel, old, new)
    assert_changed(before, project.fp(), keys)


def test_other_decorators_on_the_stage_count(project: Project) -> None:
    project.edit(
        "helpers.py",
        "import re\n",
        "import functools\nimport re\n\n\ndef traced(fn):\n"
        "    @functools.wraps(fn)\n    def wrapper(*a, **k):\n        return fn(*a, **k)\n"
        "    return wrapper\n",
    )
    before = project.fp()
    project.edit("pipeline.py", "def fit(", "@helpers.traced\ndef fit(")
    decorated = project.fp()
    assert_changed(before, decorated, {"pipeline.fit", "helpers.traced"})
    project.edit("helpers.py", "return fn(*a, **k)", "return fn(*a, **k) or None")
    assert_changed(decorated, project.fp(), {"helpers.traced"})


@pytest.mark.parametrize(
    ("imports", "decorator"),
    [
        pytest.param("import pivot\n", "@pivot.stage", id="module-attribute"),
        pytest.param("from pivot import stage as declare\n", "@declare", id="alias"),
        pytest.param(
            "import pivot.pipeline.stage\n", "@pivot.pipeline.stage.stage", id="full-path"
        ),
    ],
)
def test_stage_decorator_is_dropped_however_it_is_spelled(
    project: Project, imports: str, decorator: str
) -> None:
    project.edit("pipeline.py", "from pivot import stage\n", imports)
    project.edit("pipeline.py", "@stage", decorator)
    before = project.fp()
    project.edit("pipeline.py", 'outs=["out.csv"]', 'outs=["elsewhere.csv"]')
    assert project.fp() == before
    assert "pivot" not in before.parts


def test_stage_registered_without_decorator(project: Project) -> None:
    project.edit("pipeline.py", '@stage(deps=["data.csv"], outs=["out.csv"])\n', "")
    project.write(
        {"pipeline.py": (project.root / "pipeline.py").read_text() + 'stage(name="a")(fit)\n'}
    )
    before = project.fp()
    project.edit("pipeline.py", "scale: float = 1.0", "scale: float = 3.0")
    assert project.fp() == before
    project.edit("pipeline.py", "len(r) * scale", "len(r) - scale")
    assert changed(before, project.fp()) == {"pipeline.fit"}


# -- how references are followed --------------------------------------------------------------


def test_from_import_of_a_function_and_a_constant(project: Project) -> None:
    project.edit("pipeline.py", "import helpers\n", "from helpers import THRESHOLD, clean\n")
    project.edit("pipeline.py", "helpers.clean(rows)", "clean(rows) + [THRESHOLD]")
    before = project.fp()
    assert {"helpers.clean", "helpers.THRESHOLD"} <= set(before.parts)
    assert "pipeline.THRESHOLD" not in before.parts  # keyed where it is assigned
    project.edit("helpers.py", "THRESHOLD = 0.5", "THRESHOLD = 0.6")
    assert_changed(before, project.fp(), {"helpers.THRESHOLD"})


def test_attribute_chains_through_packages(project: Project) -> None:
    project.write(
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "",
            "pkg/sub/tools.py": "def scale(x):\n    return x * 2\n",
        }
    )
    project.edit("pipeline.py", "import helpers\n", "import helpers\nimport pkg.sub.tools\n")
    project.edit("pipeline.py", "len(r) * scale", "pkg.sub.tools.scale(len(r))")
    before = project.fp()
    assert "pkg.sub.tools.scale" in before.parts
    assert "pkg/sub/tools.py" in before.sources
    project.edit("pkg/sub/tools.py", "x * 2", "x * 3")
    assert_changed(before, project.fp(), {"pkg.sub.tools.scale"})


def test_imports_inside_the_function_body(project: Project) -> None:
    project.edit("pipeline.py", "import helpers\n", "")
    project.edit(
        "pipeline.py",
        "    cleaned = helpers.clean(rows)",
        "    import helpers\n    from helpers import THRESHOLD as limit\n\n"
        "    cleaned = helpers.clean(rows) + [limit]",
    )
    before = project.fp()
    assert {"helpers.clean", "helpers.THRESHOLD"} <= set(before.parts)
    project.edit("helpers.py", "[:limit]", "[:1]")
    middle = project.fp()
    assert_changed(before, middle, {"helpers.clean"})
    project.edit("helpers.py", "THRESHOLD = 0.5", "THRESHOLD = 0.25")
    assert_changed(middle, project.fp(), {"helpers.THRESHOLD"})


def test_body_import_that_fails_is_recorded_not_guessed(project: Project) -> None:
    project.write({"broken.py": 'raise RuntimeError("needs Windows")\n'})
    project.edit(
        "pipeline.py",
        "    cleaned = helpers.clean(rows)",
        "    if rows == 'never':\n        import broken\n        import not_installed_anywhere\n"
        "    cleaned = helpers.clean(rows)",
    )
    result = project.fp()
    assert result.parts["broken"] == "<import failed: RuntimeError>"
    assert result.parts["not_installed_anywhere"] == "not_installed_anywhere (not installed)"


def test_relative_import_inside_a_package_stage(make_project: Callable[[str], Project]) -> None:
    proj = make_project("proj").write(
        {
            "app/__init__.py": "",
            "app/util.py": "def helper():\n    return 1\n",
            "app/stages.py": "def fit():\n    from .util import helper\n\n    return helper()\n",
        }
    )
    before = proj.fp("app.stages.fit")
    assert "app.util.helper" in before.parts
    proj.edit("app/util.py", "return 1", "return 2")
    assert_changed(before, proj.fp("app.stages.fit"), {"app.util.helper"})


def test_module_level_objects_count_by_their_assignment(project: Project) -> None:
    project.edit("pipeline.py", "cleaned = helpers.clean(rows)", "cleaned = helpers.matches('a')")
    before = project.fp()
    assert "helpers.PATTERN" in before.parts
    project.edit("helpers.py", 're.compile(r"a+")', 're.compile(r"b+")')
    assert_changed(before, project.fp(), {"helpers.PATTERN"})


def test_module_level_lambda(project: Project) -> None:
    project.edit("pipeline.py", "len(r) * scale", "helpers.square(len(r))")
    before = project.fp()
    assert "helpers.square" in before.parts
    project.edit("helpers.py", "lambda x: x * x", "lambda x: x * x * x")
    assert_changed(before, project.fp(), {"helpers.square"})


def test_classes_made_by_a_call_count_by_their_assignment(project: Project) -> None:
    project.edit(
        "helpers.py",
        "import re\n",
        'import collections\nimport re\n\nPoint = collections.namedtuple("Point", "x y")\n',
    )
    project.edit("pipeline.py", "len(r) * scale", "helpers.Point(len(r), scale).x")
    before = project.fp()
    assert set(before.parts) == {
        "pipeline.fit",
        "helpers.clean",
        "helpers.THRESHOLD",
        "helpers.Point",
        "python",
    }
    project.edit("helpers.py", '"x y"', '"x z"')
    assert_changed(before, project.fp(), {"helpers.Point"})


def test_class_methods_and_base_classes(project: Project) -> None:
    project.write(
        {
            "models.py": '''\
                class Base:
                    def factor(self):
                        return 2


                class Model(Base):
                    """A model."""

                    def predict(self, x):
                        """Predict."""
                        return x * self.factor() + offset()


                def offset():
                    return 1
                ''',
        }
    )
    project.edit("pipeline.py", "import helpers\n", "import helpers\nfrom models import Model\n")
    project.edit("pipeline.py", "len(r) * scale", "Model().predict(len(r))")
    before = project.fp()
    assert {"models.Model", "models.Base", "models.offset"} <= set(before.parts)
    project.edit("models.py", '"""Predict."""', '"""Predict y from x."""')
    assert project.fp() == before
    project.edit("models.py", "x * self.factor()", "x / self.factor()")
    middle = project.fp()
    assert_changed(before, middle, {"models.Model"})
    project.edit("models.py", "return 2", "return 3")
    after = project.fp()
    assert_changed(middle, after, {"models.Base"})
    project.edit("models.py", "return 1", "return 0")
    assert_changed(after, project.fp(), {"models.offset"})


def test_closure_variables_count_by_value(project: Project) -> None:
    project.edit(
        "helpers.py",
        "def unused():",
        "def make_scaler(factor):\n    def scale(x):\n        return x * factor\n\n    return scale\n\n\n"
        'double = make_scaler(int("2"))\n\n\ndef unused():',
    )
    project.edit("pipeline.py", "len(r) * scale", "helpers.double(len(r))")
    before = project.fp()
    closure_key = "helpers.make_scaler.<locals>.scale"
    assert {closure_key, "helpers.double"} <= set(before.parts)
    project.edit("helpers.py", 'int("2")', 'int("3")')
    after = project.fp()
    assert after.digest != before.digest
    assert closure_key in changed(before, after)
    project.edit("helpers.py", "return x * factor", "return x + factor")
    assert closure_key in changed(after, project.fp())


def test_decorator_of_a_helper(project: Project) -> None:
    project.edit(
        "helpers.py",
        "def clean(rows, limit=10):",
        "def retry(times):\n    def deco(fn):\n        def run(*a):\n"
        "            for _ in range(times):\n                return fn(*a)\n\n"
        "        return run\n\n    return deco\n\n\n@retry(times=3)\ndef clean(rows, limit=10):",
    )
    before = project.fp()
    assert {"helpers.clean", "helpers.retry.<locals>.deco.<locals>.run"} <= set(before.parts)
    project.edit("helpers.py", "@retry(times=3)", "@retry(times=4)")
    after = project.fp()
    assert after.digest != before.digest
    assert "helpers.clean" in changed(before, after)
    project.edit("helpers.py", "range(times)", "range(times + 1)")
    assert "helpers.retry.<locals>.deco.<locals>.run" in changed(after, project.fp())


def test_nested_function_is_part_of_its_helper(project: Project) -> None:
    project.edit(
        "helpers.py",
        "    return [r for r",
        "    def keep(r):\n        return True\n\n    return [r for r",
    )
    before = project.fp()
    project.edit("helpers.py", "return True", "return False")
    assert_changed(before, project.fp(), {"helpers.clean"})


def test_a_module_used_as_a_value_counts_whole(project: Project) -> None:
    project.edit("pipeline.py", "cleaned = helpers.clean(rows)", "cleaned = sorted(vars(helpers))")
    before = project.fp()
    assert {"helpers", "helpers.unused"} <= set(before.parts)
    project.edit("helpers.py", "return 1", "return 5")
    assert_changed(before, project.fp(), {"helpers", "helpers.unused"})


def test_mutual_recursion_terminates(project: Project) -> None:
    project.write(
        {
            "loops.py": """\
                def even(n):
                    return True if n == 0 else odd(n - 1)


                def odd(n):
                    return False if n == 0 else even(n - 1)
                """,
        }
    )
    project.edit("pipeline.py", "import helpers\n", "import helpers\nimport loops\n")
    project.edit("pipeline.py", "len(r) * scale", "loops.even(len(r)) and fit(())")
    before = project.fp()
    assert {"loops.even", "loops.odd", "pipeline.fit"} <= set(before.parts)
    project.edit("loops.py", "return False if", "return None if")
    assert_changed(before, project.fp(), {"loops.odd"})


def test_recursive_stage_counts_in_its_stage_form(project: Project) -> None:
    project.edit("pipeline.py", "len(r) * scale", "len(r) * scale if not r else fit(r[1:])")
    before = project.fp()
    assert before.parts["pipeline.fit"] == project.fp().parts["pipeline.fit"]
    project.edit("pipeline.py", "scale: float = 1.0", "scale: float = 4.0")
    assert project.fp() == before


def test_class_without_source_uses_bytecode() -> None:
    def build(base: str, method: str, bases: str = "Base") -> Callable[..., Any]:
        namespace: dict[str, Any] = {"__name__": "generated"}
        source = (
            f"class Base:\n    def twice(self, x):\n        return {base}\n\n"
            "class Mixin:\n    pass\n\n"
            f"class Model({bases}):\n    rate = 0.5\n\n    def predict(self, x):\n        return {method}\n\n"
            "def f():\n    return Model().predict(1)\n"
        )
        exec(compile(source, "<generated>", "exec"), namespace)
        return namespace["f"]

    def fp(func: Callable[..., Any]) -> CodeFingerprint:
        return Fingerprinter(Path.cwd(), None).stage(func)

    one = fp(build("x * 2", "self.twice(x) * self.rate"))
    assert {"generated.Model", "generated.Base"} <= set(one.parts)
    assert fp(build("x * 2", "self.twice(x) * self.rate")) == one
    assert_changed(one, fp(build("x * 2", "self.twice(x) / self.rate")), {"generated.Model"})
    assert_changed(one, fp(build("x + x", "self.twice(x) * self.rate")), {"generated.Base"})
    with_mixin = fp(build("x * 2", "self.twice(x) * self.rate", bases="Base, Mixin"))
    assert_changed(one, with_mixin, {"generated.Model", "generated.Mixin"})


def test_function_without_source_uses_bytecode() -> None:
    def build(helper_body: str, body: str = "return helper() + 1") -> Callable[..., Any]:
        namespace: dict[str, Any] = {"__name__": "generated"}
        source = f"def helper():\n    {helper_body}\n\ndef f(x=1):\n    {body}\n"
        exec(compile(source, "<generated>", "exec"), namespace)
        return namespace["f"]

    def fp(func: Callable[..., Any]) -> CodeFingerprint:
        return Fingerprinter(Path.cwd(), None).stage(func)

    one = fp(build("return 1"))
    assert set(one.parts) == {"generated.f", "generated.helper"}
    assert fp(build("return 1")) == one
    assert_changed(one, fp(build("return 2")), {"generated.helper"})
    assert_changed(one, fp(build("return 1", "return helper() - 1")), {"generated.f"})


# -- definitions behind wrappers, registries and conditions ------------------------------------
# Each case is a pattern whose edit a stage's fingerprint once missed: the stage stayed "up
# to date" on old code.


def stage_calling(body: str) -> str:
    return f"import helpers\nfrom pivot import stage\n\n\n@stage(outs=['out.txt'])\ndef fit():\n    {body}\n"


@pytest.mark.parametrize(
    ("helpers", "call", "old", "new"),
    [
        pytest.param(
            "from contextlib import contextmanager\n\n\n@contextmanager\ndef opened():\n    yield 1\n",
            "with helpers.opened() as v:\n        return v", "yield 1", "yield 2", id="contextmanager",
        ),
        pytest.param(
            "import functools\n\n\n@functools.lru_cache(maxsize=None)\ndef table():\n    return 1\n",
            "return helpers.table()", "return 1", "return 2", id="lru_cache",
        ),
        pytest.param(
            "import functools\n\n\n@functools.singledispatch\ndef show(x):\n    return 'any'\n\n\n"
            "@show.register(int)\ndef _(x):\n    return 'int'\n",
            "return helpers.show(1)", "return 'int'", "return 'integer'", id="singledispatch-registered",
        ),
        pytest.param(
            "import functools\n\n\n@functools.singledispatch\ndef show(x):\n    return 'any'\n",
            "return helpers.show(1)", "return 'any'", "return 'other'", id="singledispatch-base",
        ),
        pytest.param(
            "class Memo:\n    def __init__(self, fn):\n        self.fn, self.seen = fn, {}\n\n"
            "    def __call__(self, x):\n        return self.seen.setdefault(x, self.fn(x))\n\n\n"
            "@Memo\ndef score(x):\n    return x * 1\n",
            "return helpers.score(3)", "x * 1", "x * 2", id="an-object-without-__wrapped__",
        ),
        pytest.param(
            "import functools\n\n\ndef scaled(fn):\n    return functools.partial(fn, k=2)\n\n\n"
            "@scaled\ndef score(x, k):\n    return x * k\n",
            "return helpers.score(3)", "x * k", "x + k", id="partial",
        ),
        pytest.param(
            "USE_FAST = True\nif USE_FAST:\n    def compute():\n        return 'fast'\n"
            "else:\n    def compute():\n        return 'slow'\n",
            "return helpers.compute()", "USE_FAST = True", "USE_FAST = False", id="if-branch",
        ),
        pytest.param(
            "try:\n    raise ImportError\n    def compute():\n        return 'fast'\n"
            "except ImportError:\n    def compute():\n        return 'slow'\n",
            "return helpers.compute()", "    raise ImportError\n", "    pass\n", id="try-branch",
        ),
        pytest.param(
            "class Scaler:\n    def __init__(self, k):\n        self.k = k\n\n\n"
            "if (SCALER := Scaler(1)) is None:\n    pass\n",
            "return helpers.SCALER.k", "Scaler(1)", "Scaler(2)", id="walrus",
        ),
        pytest.param(
            "REGISTRY = {}\n\n\ndef register(fn):\n    REGISTRY[fn.__name__] = fn\n    return fn\n\n\n"
            "@register\ndef linear():\n    return 1\n",
            "return helpers.REGISTRY['linear']()", "return 1", "return 2", id="registry-filled-by-a-decorator",
        ),
        pytest.param(
            "REGISTRY = {}\n\n\ndef register(fn):\n    REGISTRY[fn.__name__] = fn\n    return fn\n\n\n"
            "@register\ndef linear():\n    return 1\n",
            "return helpers.REGISTRY['linear']()", "@register\ndef linear",
            "@register\ndef quadratic():\n    return 2\n\n\n@register\ndef linear", id="registry-grown",
        ),
    ],
)
def test_a_behaviour_edit_behind_a_wrapper_or_condition_changes_the_fingerprint(
    make_project: Callable[[str], Project], helpers: str, call: str, old: str, new: str
) -> None:
    proj = make_project("proj").write({"helpers.py": helpers, "pipeline.py": stage_calling(call)})
    before = proj.fp()
    again = proj.fp()
    assert again.digest == before.digest, changed(before, again)
    proj.edit("helpers.py", old, new)
    after = proj.fp()
    assert after.digest != before.digest, f"{old!r} -> {new!r} not seen: {before.parts}"


@pytest.mark.parametrize(
    ("helpers", "call"),
    [
        pytest.param("from contextlib import contextmanager\n\n\n@contextmanager\ndef opened():\n    yield 1\n",
                     "with helpers.opened() as v:\n        return v", id="contextmanager"),
        pytest.param("USE_FAST = True\nif USE_FAST:\n    def compute():\n        return 'fast'\n"
                     "else:\n    def compute():\n        return 'slow'\n", "return helpers.compute()", id="if-branch"),
        pytest.param("REGISTRY = {}\n\n\ndef register(fn):\n    REGISTRY[fn.__name__] = fn\n    return fn\n\n\n"
                     "@register\ndef linear():\n    return 1\n", "return helpers.REGISTRY['linear']()", id="registry"),
    ],
)
def test_a_comment_behind_a_wrapper_or_condition_changes_nothing(
    make_project: Callable[[str], Project], helpers: str, call: str
) -> None:
    proj = make_project("proj").write({"helpers.py": helpers, "pipeline.py": stage_calling(call)})
    before = proj.fp()
    proj.write({"helpers.py": "# a comment\n" + helpers.replace("\n\n\n", "\n\n\n# between\n")})
    assert proj.fp().digest == before.digest


def test_an_imported_object_patched_in_the_stages_module_counts_there(make_project: Callable[[str], Project]) -> None:
    proj = make_project("proj").write({
        "models.py": "class Model:\n    rate = 1\n\n    def predict(self):\n        return self.rate\n",
        "pipeline.py": "from models import Model\nfrom pivot import stage\n\n\ndef _predict(self):\n"
                       "    return self.rate * 10\n\n\nModel.predict = _predict\nModel.rate = 2\n\n\n"
                       "@stage(outs=['out.txt'])\ndef fit():\n    return Model().predict()\n",
    })
    before = proj.fp()
    assert {"models.Model", "pipeline.Model", "pipeline._predict"} <= set(before.parts)
    proj.edit("pipeline.py", "self.rate * 10", "self.rate * 20")
    after = proj.fp()
    assert changed(before, after) == {"pipeline._predict"}
    proj.edit("pipeline.py", "Model.rate = 2", "Model.rate = 3")
    assert changed(after, proj.fp()) == {"pipeline.Model"}


def test_a_registered_function_is_keyed_by_its_definition(make_project: Callable[[str], Project]) -> None:
    proj = make_project("proj").write({
        "helpers.py": "REGISTRY = {}\n\n\ndef register(fn):\n    REGISTRY[fn.__name__] = fn\n    return fn\n\n\n"
                      "@register\ndef linear():\n    return 1\n\n\n@register\ndef square():\n    return 2\n",
        "pipeline.py": stage_calling("return helpers.REGISTRY['linear']()"),
    })
    before = proj.fp()
    assert {"helpers.REGISTRY", "helpers.linear", "helpers.square"} <= set(before.parts)
    proj.edit("helpers.py", "return 2", "return 3")
    assert changed(before, proj.fp()) == {"helpers.square"}


def test_a_variant_added_to_the_loop_that_registers_them_changes_no_variant(
    make_project: Callable[[str], Project],
) -> None:
    """The README's pattern: the loop variable is named as the function's parameter, a
    name of its body only (every variant re-ran when one was added)."""
    loop = (
        "from pivot import stage\n\nLIMIT = 3\n\n\ndef clip(v, limit=LIMIT):\n    return v[:limit]\n\n\n"
        "def report(size: str = 's') -> None:\n    open(f'r-{size}.txt', 'w').write(clip(size))\n\n\n"
        "for size in ('small', 'large'):\n"
        "    stage(name=f'report@{size}', params={'size': size}, outs=[f'r-{size}.txt'])(report)\n"
    )
    proj = make_project("proj").write({"pipeline.py": loop})
    before = proj.fp("pipeline.report")
    assert "pipeline.size" not in before.parts, before.parts
    proj.edit("pipeline.py", "('small', 'large')", "('small', 'large', 'medium')")
    assert proj.fp("pipeline.report").digest == before.digest
    proj.edit("pipeline.py", "LIMIT = 3", "LIMIT = 4")  # a helper's default still counts
    assert "pipeline.LIMIT" in changed(before, proj.fp("pipeline.report"))


# -- what is project code -------------------------------------------------------------------


def test_src_layout_package_is_project_code(project: Project) -> None:
    project.write(
        {
            "src/mypkg/__init__.py": "",
            "src/mypkg/core.py": "def tidy(rows):\n    return list(rows)\n",
        }
    )
    project.paths.append(project.root / "src")
    project.edit("pipeline.py", "import helpers\n", "import helpers\nfrom mypkg.core import tidy\n")
    project.edit("pipeline.py", "helpers.clean(rows)", "tidy(helpers.clean(rows))")
    before = project.fp()
    assert "mypkg.core.tidy" in before.parts
    assert "src/mypkg/core.py" in before.sources
    project.edit("src/mypkg/core.py", "list(rows)", "tuple(rows)")
    assert_changed(before, project.fp(), {"mypkg.core.tidy"})


@pytest.mark.parametrize(
    "folder",
    [
        pytest.param(".venv/lib/python3.11/site-packages", id="venv"),
        pytest.param("vendor/site-packages", id="site-packages"),
        pytest.param("env/lib", id="pyvenv-cfg"),
        pytest.param("node_modules/x", id="node_modules"),
    ],
)
def test_environments_inside_the_root_are_not_project_code(project: Project, folder: str) -> None:
    project.write(
        {
            f"{folder}/vendored/__init__.py": '__version__ = "9.9"\n\n\ndef helper():\n    return 1\n',
            "env/pyvenv.cfg": "home = /usr/bin\n",
        }
    )
    project.paths.append(project.root / folder)
    project.edit("pipeline.py", "import helpers\n", "import helpers\nimport vendored\n")
    project.edit("pipeline.py", "len(r) * scale", "vendored.helper()")
    before = project.fp()
    assert before.parts["vendored"] == "vendored==9.9"
    assert not any(k.startswith("vendored.") for k in before.parts)
    assert before.sources == ("helpers.py", "pipeline.py")
    project.edit(f"{folder}/vendored/__init__.py", "return 1", "return 2")
    assert project.fp() == before


def test_third_party_code_counts_by_distribution_version(project: Project) -> None:
    project.edit(
        "pipeline.py",
        "import helpers\n",
        "import helpers\nimport yaml\nfrom msgpack import packb\n",
    )
    project.edit("pipeline.py", "len(r) * scale", "yaml.safe_load(packb(r))")
    result = project.fp()
    assert result.parts["yaml"] == f"PyYAML=={importlib.metadata.version('PyYAML')}"
    assert result.parts["msgpack"] == f"msgpack=={importlib.metadata.version('msgpack')}"
    assert not any(k.startswith(("yaml.", "msgpack.")) for k in result.parts)
    assert result.sources == ("helpers.py", "pipeline.py")


def test_standard_library_counts_as_the_python_version(project: Project) -> None:
    project.edit("pipeline.py", "import helpers\n", "import helpers\nimport json\nimport os.path\n")
    project.edit("pipeline.py", "len(r) * scale", "json.dumps(os.path.join(r))")
    result = project.fp()
    assert result.parts["python"] == PYTHON
    assert not any(k.startswith(("json", "os")) for k in result.parts)


def test_pivot_is_never_project_code(project: Project) -> None:
    # With "/" as the root every file is under it: pivot and the standard library
    # must still count by version only.
    project.edit(
        "pipeline.py",
        "    cleaned = helpers.clean(rows)",
        "    import os\n    from pivot.pipeline.stage import registered\n\n"
        "    cleaned = helpers.clean(rows) + list(registered()) + [os.sep]",
    )
    result = Fingerprinter(Path("/"), None).stage(project.load())
    assert result.parts["pivot"] == f"pivot=={importlib.metadata.version('pivot')}"
    assert result.parts["python"] == PYTHON
    assert not any(k.startswith(("pivot.", "os.")) for k in result.parts)
    assert all(s.endswith(("proj/helpers.py", "proj/pipeline.py")) for s in result.sources)


def test_distribution_metadata_is_read_once_and_only_when_needed(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = importlib.metadata.packages_distributions

    def counting() -> Any:
        calls.append(1)
        return real()

    monkeypatch.setattr(importlib.metadata, "packages_distributions", counting)
    fingerprinter = Fingerprinter(project.root, None)
    fingerprinter.stage(project.load())
    assert calls == []
    project.edit("pipeline.py", "import helpers\n", "import helpers\nimport yaml\n")
    project.edit("pipeline.py", "len(r) * scale", "yaml.safe_load(r)")
    project.write({"second.py": "import msgpack\n\n\ndef go():\n    return msgpack.packb(1)\n"})
    fingerprinter = Fingerprinter(project.root, None)
    fingerprinter.stage(project.load())
    fingerprinter.stage(project.load("second.go"))
    assert calls == [1]


def test_function_fingerprint_uses_the_current_directory(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project.root)
    func = project.load()
    assert function_fingerprint(func) == Fingerprinter(project.root, None).stage(func).digest


# -- the parse cache ---------------------------------------------------------------------------


def fingerprint_with_cache(project: Project, cache: Path) -> tuple[CodeFingerprint, int]:
    fingerprinter = Fingerprinter(project.root, cache)
    result = fingerprinter.stage(project.load())
    fingerprinter.save()
    return result, fingerprinter.parsed_files


def test_warm_cache_parses_nothing(project: Project) -> None:
    cache = project.root / ".pivot" / "tmp" / "fingerprints.msgpack"
    cold, parsed = fingerprint_with_cache(project, cache)
    assert parsed == 2
    assert cache.is_file()
    assert list(cache.parent.iterdir()) == [cache]  # no temp file left behind
    warm, parsed = fingerprint_with_cache(project, cache)
    assert (warm, parsed) == (cold, 0)


def test_touched_file_is_not_parsed_again(project: Project) -> None:
    cache = project.root / "cache.msgpack"
    cold, _ = fingerprint_with_cache(project, cache)
    helpers = project.root / "helpers.py"
    stat = helpers.stat()
    os.utime(helpers, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert fingerprint_with_cache(project, cache) == (cold, 0)


def test_edit_parses_exactly_the_edited_file(project: Project) -> None:
    cache = project.root / "cache.msgpack"
    cold, _ = fingerprint_with_cache(project, cache)
    project.edit("helpers.py", "[:limit]", "[:9]")
    edited, parsed = fingerprint_with_cache(project, cache)
    assert parsed == 1
    assert changed(cold, edited) == {"helpers.clean"}


def test_edit_within_one_timestamp_step_is_seen(project: Project) -> None:
    # A coarse file system can leave (inode, size, mtime) unchanged by a quick edit: a
    # stat that recent must not vouch for the content.
    cache = project.root / "cache.msgpack"
    cold, _ = fingerprint_with_cache(project, cache)
    helpers = project.root / "helpers.py"
    before = helpers.stat()
    project.edit("helpers.py", "limit=10", "limit=11")  # same size
    assert helpers.stat().st_size == before.st_size
    os.utime(helpers, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert helpers.stat().st_ino == before.st_ino
    edited, parsed = fingerprint_with_cache(project, cache)
    assert parsed == 1
    assert changed(cold, edited) == {"helpers.clean"}


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"\x00not msgpack\xff", id="garbage"),
        pytest.param(b"", id="empty"),
        pytest.param(msgpack.packb([1, 2, 3]), id="wrong-shape"),
    ],
)
def test_corrupt_cache_is_ignored(project: Project, content: bytes) -> None:
    cache = project.root / "cache.msgpack"
    expected = project.fp()
    cache.write_bytes(content)
    assert fingerprint_with_cache(project, cache) == (expected, 2)
    assert fingerprint_with_cache(project, cache) == (expected, 0)  # rewritten, usable


def test_malformed_entries_are_parsed_again(project: Project) -> None:
    cache = project.root / "cache.msgpack"
    cold, _ = fingerprint_with_cache(project, cache)
    stored = msgpack.unpackb(cache.read_bytes())
    for entry in stored["files"].values():
        entry["index"]["defs"] = {"clean": "not a list"}
    cache.write_bytes(msgpack.packb(stored))
    assert fingerprint_with_cache(project, cache) == (cold, 2)


def test_a_cache_written_by_another_python_or_format_is_not_read(project: Project) -> None:
    # Its entries are parses by other rules (another CACHE_FORMAT, another Python's ast).
    cache = project.root / "cache.msgpack"
    cold, parsed = fingerprint_with_cache(project, cache)
    assert parsed == 2
    assert fingerprint_with_cache(project, cache) == (cold, 0)  # the same Python: trusted
    stored = msgpack.unpackb(cache.read_bytes())
    stored["stamp"] = "1:cpython:3.0.0 (another one)"
    cache.write_bytes(msgpack.packb(stored))
    assert fingerprint_with_cache(project, cache) == (cold, 2)


def test_unusable_cache_path_does_not_crash(project: Project) -> None:
    cache = project.root / "cache.msgpack"
    cache.mkdir()  # a folder where the file should be: cannot be read or replaced
    expected = project.fp()
    fingerprinter = Fingerprinter(project.root, cache)
    assert fingerprinter.stage(project.load()) == expected
    with pytest.raises(OSError):
        fingerprinter.save()
    assert sorted(p.name for p in project.root.iterdir()) == sorted(
        ["cache.msgpack", "helpers.py", "pipeline.py"]
    )  # no temp file left behind


def test_trusted_stat_means_the_file_is_not_even_read(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    return 1\n")
    hour_ago = source.stat().st_mtime_ns - 3600 * 10**9
    os.utime(source, ns=(hour_ago, hour_ago))
    cache_file = tmp_path / "cache.msgpack"
    first = ParseCache(cache_file)
    index = first.get(str(source))
    first.save()
    second = ParseCache(cache_file)
    assert second.get(str(source)) == index
    assert (second.read_files, second.parsed_files) == (0, 0)


def test_unchanged_cache_is_not_rewritten(project: Project) -> None:
    cache = project.root / "cache.msgpack"
    fingerprint_with_cache(project, cache)
    inode = cache.stat().st_ino
    fingerprint_with_cache(project, cache)
    assert cache.stat().st_ino == inode


# -- the per-file index -------------------------------------------------------------------------


def test_index_records_references_and_skips_annotations() -> None:
    index = parse_source(
        b"import os\n"
        b"def f(x: Annotated = pkg.DEFAULT) -> Result:\n"
        b"    import json\n"
        b"    from .sib import thing as t\n"
        b"    return helpers.clean(x) + a.b().c + CONST\n"
    )
    info = index.defs["f"]
    assert set(info.refs) == {"pkg.DEFAULT", "helpers.clean", "a.b", "CONST"}  # not its parameter x
    assert [(i.module, i.level, i.name, i.bound) for i in info.imports] == [
        ("json", 0, None, "json"),
        ("sib", 1, "thing", "t"),
    ]
    assert set(index.imports) == {"os"}


def test_a_fingerprint_is_of_the_source_imported_not_of_the_file_saved_since(project: Project) -> None:
    # A loader fingerprints what it imported (pivot/runtime/freshcode.py keeps it): a save
    # between the import and the fingerprint must not give one version's code the other
    # version's fingerprint (a stage added by the save missing, the rest looking current).
    import xxhash

    helpers = os.path.realpath(project.root / "helpers.py")
    first = (project.root / "helpers.py").read_bytes()
    func = project.load()
    before = Fingerprinter(project.root, None).stage(func)
    project.edit("helpers.py", "][:limit]", "][:limit + 1]")  # saved after the import

    def imported(path: str) -> tuple[str, bytes] | None:
        return (xxhash.xxh3_128_hexdigest(first), first) if path == helpers else None

    kept = Fingerprinter(project.root, None, imported).stage(func)
    assert kept == before and kept.digests["helpers.py"] == xxhash.xxh3_128_hexdigest(first)
    now = Fingerprinter(project.root, None).stage(func)  # without it: the file as it is now
    assert_changed(before, now, {"helpers.clean"})
