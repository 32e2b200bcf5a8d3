"""Unit tests for the @stage decorator and its registry (pivot.pipeline.stage).

Stage functions must live at module level to be registrable, so the ones used here are
defined at the top of this file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from pivot import stage as exported_stage
from pivot.errors import PipelineError, UserError
from pivot.pipeline.stage import StageDecl, clear_registry, registered, stage


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    clear_registry()
    yield
    clear_registry()


# --- module-level stage functions ------------------------------------------------------


def prepare(threshold: float = 0.5) -> str:
    return f"prepared {threshold}"


def train(size: str = "small", lr: float = 0.1) -> str:
    return f"trained {size} {lr}"


def evaluate() -> None:
    pass


def other_function() -> None:
    pass


_MODULE_LAMBDAS = [lambda: None]


class Holder:
    def method(self) -> None:
        pass


# --- registration -----------------------------------------------------------------------


def test_pivot_package_exports_the_decorator() -> None:
    assert exported_stage is stage


def test_a_function_stage_is_declared_as_the_dataclass_would_make_it() -> None:
    # (register builds it without StageDecl's __init__: every field must be there)
    stage(deps=["a.csv", "a.csv"], outs=["b.csv"], metrics=["m.json"], params={"lr": 0.2}, tags=["gpu", "big"])(train)
    made = registered()["train"]
    assert made == StageDecl("train", train, ("a.csv", "a.csv"), ("b.csv", "m.json"), ("m.json",), {"lr": 0.2},
                             ("big", "gpu"))
    assert vars(made).keys() == vars(StageDecl("x", train, (), (), ())).keys()


def test_name_defaults_to_function_name() -> None:
    stage(deps=["data/raw.csv"], outs=["data/clean.csv"])(prepare)

    decls = registered()
    assert list(decls) == ["prepare"]
    decl = decls["prepare"]
    assert isinstance(decl, StageDecl)
    assert decl.name == "prepare"
    assert decl.func is prepare
    assert decl.deps == ("data/raw.csv",)
    assert decl.outs == ("data/clean.csv",)
    assert decl.metrics == ()
    assert decl.params == {}


def test_decorator_returns_function_unchanged_and_callable() -> None:
    result = stage()(prepare)
    assert result is prepare
    assert result(threshold=2.0) == "prepared 2.0"


def test_empty_parentheses_register_a_stage_without_paths() -> None:
    stage()(evaluate)
    decl = registered()["evaluate"]
    assert (decl.deps, decl.outs, decl.metrics, decl.params) == ((), (), (), {})


def test_named_variants_with_params() -> None:
    for size in ("small", "large"):
        returned = stage(
            name=f"train@{size}",
            params={"size": size},
            deps=["data/clean.csv"],
            outs=[f"models/{size}.pkl"],
        )(train)
        assert returned is train

    decls = registered()
    assert list(decls) == ["train@small", "train@large"]
    assert decls["train@small"].params == {"size": "small"}
    assert decls["train@large"].params == {"size": "large"}
    assert decls["train@large"].outs == ("models/large.pkl",)
    assert decls["train@small"].func is train
    # The variant's function is still the plain function: it was not registered as "train".
    assert "train" not in decls


def test_metrics_are_also_outputs() -> None:
    stage(deps=["a.csv"], outs=["model.pkl"], metrics=["metrics.json"])(evaluate)
    decl = registered()["evaluate"]
    assert decl.outs == ("model.pkl", "metrics.json")
    assert decl.metrics == ("metrics.json",)


def test_paths_accept_any_iterable_of_strings() -> None:
    stage(deps=("a.csv", "b.csv"), outs=iter(["c.csv"]))(evaluate)
    decl = registered()["evaluate"]
    assert decl.deps == ("a.csv", "b.csv")
    assert decl.outs == ("c.csv",)


def test_registration_order_is_preserved() -> None:
    stage()(evaluate)
    stage()(prepare)
    stage(name="train@x")(train)
    assert list(registered()) == ["evaluate", "prepare", "train@x"]


def test_params_dict_is_copied() -> None:
    overrides = {"lr": 0.5}
    stage(name="t", params=overrides)(train)
    overrides["lr"] = 9.0
    assert registered()["t"].params == {"lr": 0.5}


def test_clear_registry_empties_it() -> None:
    stage()(evaluate)
    assert registered()
    clear_registry()
    assert registered() == {}


@pytest.mark.parametrize("name", ["a", "train@small", "s-1.v2", "_private", "9lives", "A_b-c.d@e"])
def test_valid_names(name: str) -> None:
    stage(name=name)(evaluate)
    assert name in registered()


# --- errors -----------------------------------------------------------------------------


def test_errors_are_user_errors() -> None:
    assert issubclass(PipelineError, UserError)


def test_decorator_without_parentheses() -> None:
    with pytest.raises(PipelineError, match=r"'prepare'.*needs parentheses") as info:
        stage(prepare)  # type: ignore[arg-type]
    assert "@stage()" in str(info.value)
    assert registered() == {}


def test_nested_function_is_rejected() -> None:
    def inner() -> None:
        pass

    with pytest.raises(PipelineError, match=r"stage 'inner'.*<locals>.*not at module level"):
        stage()(inner)
    assert registered() == {}


def test_lambda_is_rejected() -> None:
    func = _MODULE_LAMBDAS[0]
    assert "<locals>" not in func.__qualname__  # exercise the lambda check itself
    with pytest.raises(PipelineError, match=r"'<lambda>'.*not at module level"):
        stage(name="anon")(func)
    assert registered() == {}


def test_lambda_inside_a_test_is_rejected() -> None:
    with pytest.raises(PipelineError, match="not at module level"):
        stage(name="anon")(lambda: None)


def test_method_is_rejected() -> None:
    with pytest.raises(PipelineError, match=r"'Holder\.method'.*not at module level"):
        stage(name="m")(Holder.method)


def test_non_function_is_rejected() -> None:
    with pytest.raises(PipelineError, match="must decorate a function"):
        stage(name="x")(42)  # type: ignore[type-var]
    with pytest.raises(PipelineError, match="must decorate a function"):
        stage(name="y")(Holder)


def test_duplicate_name_names_both_places() -> None:
    stage(name="dup")(prepare)
    with pytest.raises(PipelineError) as info:
        stage(name="dup")(other_function)
    msg = str(info.value)
    assert "duplicate stage name 'dup'" in msg
    assert "prepare (" in msg
    assert "other_function (" in msg
    # Each place is file:line.
    assert msg.count(f"{__file__}:") == 2
    assert re.search(r"prepare \(.*test_stage_api\.py:\d+\)", msg)
    assert re.search(r"other_function \(.*test_stage_api\.py:\d+\)", msg)
    assert "stage(name=...)" in msg
    # The first registration is kept.
    assert registered()["dup"].func is prepare


def test_duplicate_default_name() -> None:
    stage()(prepare)
    with pytest.raises(PipelineError, match="duplicate stage name 'prepare'"):
        stage(outs=["x"])(prepare)
    assert registered()["prepare"].outs == ()


@pytest.mark.parametrize(
    "name", ["", "bad name", "a/b", "../x", "-leading-dash", ".hidden", "tab\tname", "é"]
)
def test_invalid_name(name: str) -> None:
    with pytest.raises(PipelineError, match=rf"stage name {re.escape(repr(name))} is invalid"):
        stage(name=name)(evaluate)
    assert registered() == {}


def test_name_with_trailing_newline_is_invalid() -> None:
    with pytest.raises(PipelineError, match="is invalid"):
        stage(name="train\n")(evaluate)


@pytest.mark.parametrize("field", ["deps", "outs", "metrics"])
def test_string_instead_of_list(field: str) -> None:
    with pytest.raises(
        PipelineError,
        match=rf"stage 'clean': {field} must be a list of paths, not the string 'a\.csv'",
    ):
        stage(name="clean", **{field: "a.csv"})
    assert registered() == {}


def test_string_instead_of_list_without_a_name() -> None:
    # The function is not known yet when the arguments are checked: the field is named.
    with pytest.raises(PipelineError, match=r"deps must be a list of paths, not the string"):
        stage(deps="a.csv")  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["deps", "outs", "metrics"])
def test_a_path_that_is_not_utf8_is_refused_by_name(field: str) -> None:
    """A file name of other bytes (from os.listdir): a traceback of the state cache."""
    with pytest.raises(PipelineError, match=rf"stage 's': {field} holds 'data/bad\\udcff\.csv', a file name that is not UTF-8"):
        stage(name="s", **{field: ["ok.csv", "data/bad\udcff.csv"]})
    assert registered() == {}
    stage(name="s", **{field: ["données/é.csv"]})(evaluate)  # (UTF-8 beyond ASCII is fine)
    assert list(registered()) == ["s"]


@pytest.mark.parametrize("bad", ["", "   ", 3, None, b"a.csv"])
def test_non_path_entry(bad: object) -> None:
    with pytest.raises(PipelineError, match=rf"stage 's': outs holds {re.escape(repr(bad))}"):
        stage(name="s", outs=["ok.csv", bad])  # type: ignore[list-item]


def test_params_naming_a_non_parameter() -> None:
    with pytest.raises(PipelineError) as info:
        stage(name="train@big", params={"size": "big", "epochz": 3, "batch": 1})(train)
    msg = str(info.value)
    assert "stage 'train@big'" in msg
    assert "['batch', 'epochz']" in msg
    assert "train()" in msg
    assert "'size'" not in msg
    assert registered() == {}


def test_params_on_function_without_parameters() -> None:
    with pytest.raises(PipelineError, match=r"stage 'evaluate': params=\['x'\]"):
        stage(params={"x": 1})(evaluate)


def test_tags_are_sorted_and_deduplicated() -> None:
    stage(tags=["gpu", "big", "gpu"])(train)
    assert registered()["train"].tags == ("big", "gpu")


@pytest.mark.parametrize(
    ("tags", "match"),
    [("gpu", "must be a list of names, got the string 'gpu'"), (["gp u"], "tag 'gp u' is invalid"), ([3], "tag 3 is invalid")],
)
def test_bad_tags_name_the_stage(tags: object, match: str) -> None:
    with pytest.raises(PipelineError, match=re.escape(match)):
        stage(name="train", tags=tags)  # type: ignore[arg-type]
