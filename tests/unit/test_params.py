"""Unit tests for stage params (pivot.pipeline.params): defaults, params.yaml, resolution."""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import pytest

from pivot.errors import PipelineError
from pivot.pipeline.params import PARAMS_FILE, defaults_of, load_params_file, resolve

# --- defaults_of ------------------------------------------------------------------------


def test_defaults_are_the_params() -> None:
    def fit(
        lr: float = 0.05, epochs: int = 200, name: str = "m", flag: bool = False, extra: None = None
    ) -> None:
        pass

    assert defaults_of("fit", fit) == {
        "lr": 0.05,
        "epochs": 200,
        "name": "m",
        "flag": False,
        "extra": None,
    }


def test_no_parameters_means_no_params() -> None:
    def evaluate() -> None:
        pass

    assert defaults_of("evaluate", evaluate) == {}


def test_star_args_and_kwargs_are_skipped() -> None:
    def f(*args: Any, x: int = 1, **kwargs: Any) -> None:
        pass

    assert defaults_of("f", f) == {"x": 1}


def test_parameter_without_default_names_stage_and_param() -> None:
    def train(data, lr: float = 0.1) -> None:  # type: ignore[no-untyped-def]
        pass

    with pytest.raises(PipelineError) as info:
        defaults_of("train@small", train)
    msg = str(info.value)
    assert "stage 'train@small'" in msg
    assert "parameter 'data'" in msg
    assert "no default" in msg


def test_keyword_only_parameter_without_default() -> None:
    def f(*, k: int) -> None:
        pass

    with pytest.raises(PipelineError, match=r"stage 's': parameter 'k' .* has no default"):
        defaults_of("s", f)


def test_tuples_become_lists() -> None:
    def f(
        sizes: tuple[int, ...] = (1, 2),
        nested: dict[str, Any] = {"pair": (1, (2, 3))},  # noqa: B006
        empty: tuple[()] = (),
    ) -> None:
        pass

    defaults = defaults_of("f", f)
    assert defaults == {"sizes": [1, 2], "nested": {"pair": [1, [2, 3]]}, "empty": []}
    assert type(defaults["sizes"]) is list
    assert type(defaults["nested"]["pair"][1]) is list


def test_nested_lists_and_maps_are_accepted() -> None:
    def f(cfg: dict[str, Any] = {"a": [1, 2.5, "x", None, True], "b": {"c": 1}}) -> None:  # noqa: B006
        pass

    assert defaults_of("f", f) == {"cfg": {"a": [1, 2.5, "x", None, True], "b": {"c": 1}}}


class _Opaque:
    pass


@pytest.mark.parametrize(
    ("default", "type_name"),
    [
        ({1, 2}, "set"),
        (_Opaque(), "_Opaque"),
        (b"raw", "bytes"),
        (1j, "complex"),
        ({1: "a"}, "dict"),  # map keys must be str
        ([1, {2}], "set"),  # nested inside a list
        ({"k": frozenset()}, "frozenset"),  # nested inside a map
        (Path("a"), "PosixPath"),
    ],
)
def test_unsupported_default_type(default: object, type_name: str) -> None:
    def f(p: Any = default) -> None:
        pass

    with pytest.raises(PipelineError) as info:
        defaults_of("odd", f)
    msg = str(info.value)
    assert "stage 'odd'" in msg
    assert "param 'p'" in msg
    assert f"is a {type_name}" in msg
    assert "params must be int, float, str, bool, None" in msg


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, [1, 2**70], {"seed": 2**70}])
def test_an_integer_wider_than_64_bits_is_refused_by_name(value: object) -> None:
    """Params travel between Pivot's processes as msgpack (64-bit integers): one wider
    lost the pool at the first run, saying nothing."""
    def f(p: Any = value) -> None:
        pass

    with pytest.raises(PipelineError) as info:
        defaults_of("odd", f)
    assert "stage 'odd' param 'p'" in str(info.value) and "wider than 64 bits" in str(info.value)
    for edge in (2**64 - 1, -(2**63)):
        def g(p: Any = edge) -> None:
            pass

        assert defaults_of("odd", g) == {"p": edge}


@pytest.mark.parametrize("value", ["data/bad\udcff.csv", ["ok", "\udcff"], {"file": "x\udcff"}])
def test_a_string_that_is_not_utf8_is_refused_by_name(value: object) -> None:
    """A file name of other bytes (from os.listdir) as a param: msgpack refused it."""
    def f(p: Any = value) -> None:
        pass

    with pytest.raises(PipelineError) as info:
        defaults_of("odd", f)
    assert "stage 'odd' param 'p'" in str(info.value) and "not UTF-8" in str(info.value)

    def g(p: Any = "données ✓") -> None:  # (UTF-8 beyond ASCII is fine)
        pass

    assert defaults_of("odd", g) == {"p": "données ✓"}


# --- load_params_file ---------------------------------------------------------------------


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert load_params_file(tmp_path) == {}


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "~\n"])
def test_empty_file_is_empty(tmp_path: Path, text: str) -> None:
    (tmp_path / PARAMS_FILE).write_text(text)
    assert load_params_file(tmp_path) == {}


def test_file_is_read(tmp_path: Path) -> None:
    (tmp_path / PARAMS_FILE).write_text(
        "fit:\n  lr: 0.01\n  epochs: 5\ntrain@small:\n  sizes: [1, 2]\n"
    )
    assert load_params_file(tmp_path) == {
        "fit": {"lr": 0.01, "epochs": 5},
        "train@small": {"sizes": [1, 2]},
    }


@pytest.mark.parametrize(
    ("text", "type_name"), [("- a\n- b\n", "list"), ("42\n", "int"), ("just text\n", "str")]
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, type_name: str) -> None:
    (tmp_path / PARAMS_FILE).write_text(text)
    with pytest.raises(PipelineError, match=rf"params\.yaml: expected a mapping.*got {type_name}"):
        load_params_file(tmp_path)


@pytest.mark.parametrize(
    ("text", "type_name"),
    [
        ("fit: 3\n", "int"),
        ("fit: [1, 2]\n", "list"),
        ("fit: text\n", "str"),
        ("fit: false\n", "bool"),
    ],
)
def test_entry_must_be_a_mapping(tmp_path: Path, text: str, type_name: str) -> None:
    (tmp_path / PARAMS_FILE).write_text("ok:\n  a: 1\n" + text)
    with pytest.raises(
        PipelineError, match=rf"params\.yaml: entry 'fit' must be a mapping.*got {type_name}"
    ):
        load_params_file(tmp_path)


@pytest.mark.parametrize(
    "text", ["fit: {lr: 0.1\n", "fit:\n  lr: [1, 2\n", "a: b: c\n", "fit:\n\tlr: 1\n"]
)
def test_invalid_yaml(tmp_path: Path, text: str) -> None:
    (tmp_path / PARAMS_FILE).write_text(text)
    with pytest.raises(PipelineError, match=r"params\.yaml: not valid YAML"):
        load_params_file(tmp_path)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    (tmp_path / PARAMS_FILE).write_text("fit: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(PipelineError, match="not valid YAML"):
        load_params_file(tmp_path)


# --- resolve --------------------------------------------------------------------------------


DEFAULTS: dict[str, Any] = {"lr": 0.1, "epochs": 10, "name": "base", "flag": False}


def test_defaults_only() -> None:
    assert resolve("fit", DEFAULTS, {}, None) == DEFAULTS
    assert resolve("fit", DEFAULTS, {}, {}) == DEFAULTS


def test_precedence_yaml_over_stage_over_defaults() -> None:
    resolved = resolve(
        "fit",
        DEFAULTS,
        {"lr": 0.2, "epochs": 20, "name": "stage"},
        {"lr": 0.3, "name": "yaml"},
    )
    assert resolved == {"lr": 0.3, "epochs": 20, "name": "yaml", "flag": False}


def test_resolve_does_not_mutate_inputs() -> None:
    defaults = dict(DEFAULTS)
    overrides = {"lr": 0.2}
    from_file = {"epochs": 3}
    resolve("fit", defaults, overrides, from_file)
    assert defaults == DEFAULTS
    assert overrides == {"lr": 0.2}
    assert from_file == {"epochs": 3}


@pytest.mark.parametrize("source", ["overrides", "file"])
def test_int_accepted_for_float_and_becomes_float(source: str) -> None:
    overrides, from_file = ({"lr": 1}, None) if source == "overrides" else ({}, {"lr": 1})
    resolved = resolve("fit", DEFAULTS, overrides, from_file)
    assert resolved["lr"] == 1.0
    assert type(resolved["lr"]) is float


def test_float_not_accepted_for_int() -> None:
    with pytest.raises(PipelineError, match=r"param 'epochs' expects int .*got float 2\.0"):
        resolve("fit", DEFAULTS, {}, {"epochs": 2.0})


@pytest.mark.parametrize(("key", "value"), [("epochs", True), ("lr", True), ("flag", 1)])
def test_bool_and_int_do_not_mix(key: str, value: object) -> None:
    with pytest.raises(PipelineError, match=rf"param '{key}' expects"):
        resolve("fit", DEFAULTS, {}, {key: value})


def test_str_for_int_names_stage_key_and_types() -> None:
    with pytest.raises(PipelineError) as info:
        resolve("fit", DEFAULTS, {}, {"epochs": "ten"})
    msg = str(info.value)
    assert msg.startswith("params.yaml:")
    assert "stage 'fit'" in msg
    assert "param 'epochs'" in msg
    assert "expects int" in msg
    assert "the default is 10" in msg
    assert "got str 'ten'" in msg


def test_wrong_type_in_stage_params_names_that_source() -> None:
    with pytest.raises(
        PipelineError,
        match=r"^stage\(params=\.\.\.\): stage 'fit' param 'name' "
        r"expects str .*got int 5",
    ):
        resolve("fit", DEFAULTS, {"name": 5}, None)


def test_unknown_key_names_stage_key_and_its_params() -> None:
    with pytest.raises(PipelineError) as info:
        resolve("fit", DEFAULTS, {}, {"lrr": 0.5})
    msg = str(info.value)
    assert msg.startswith("params.yaml:")
    assert "stage 'fit'" in msg
    assert "no param 'lrr'" in msg
    assert "its params: epochs, flag, lr, name" in msg


def test_unknown_key_in_stage_params() -> None:
    with pytest.raises(
        PipelineError, match=re.escape("stage(params=...): stage 'fit' has no param 'x'")
    ):
        resolve("fit", DEFAULTS, {"x": 1}, None)


def test_unknown_key_for_stage_without_params() -> None:
    with pytest.raises(
        PipelineError, match=r"stage 'evaluate' has no param 'x' \(its params: none\)"
    ):
        resolve("evaluate", {}, {}, {"x": 1})


def test_none_default_accepts_any_supported_value() -> None:
    assert resolve("s", {"opt": None}, {}, {"opt": [1, 2]}) == {"opt": [1, 2]}
    assert resolve("s", {"opt": 3}, {}, {"opt": None}) == {"opt": None}


def test_override_tuples_become_lists() -> None:
    resolved = resolve("s", {"sizes": [1]}, {"sizes": (4, 5)}, None)
    assert resolved == {"sizes": [4, 5]}
    assert type(resolved["sizes"]) is list


def test_unsupported_value_from_file() -> None:
    with pytest.raises(PipelineError, match=r"params\.yaml: stage 's' param 'when' .* is a date"):
        resolve("s", {"when": "2024-01-01"}, {}, {"when": datetime.date(2024, 1, 1)})


def test_yaml_to_resolve_end_to_end(tmp_path: Path) -> None:
    (tmp_path / PARAMS_FILE).write_text("fit:\n  lr: 1\n  name: from-yaml\n")
    from_file = load_params_file(tmp_path)
    resolved = resolve("fit", DEFAULTS, {"epochs": 3}, from_file.get("fit"))
    assert resolved == {"lr": 1.0, "epochs": 3, "name": "from-yaml", "flag": False}
    assert type(resolved["lr"]) is float


# --- params.yaml: exponent floats, empty entries -----------------------------------------


def load_one(tmp_path: Path, value: str) -> object:
    """The value of `fit.x` in a params.yaml where it is written as `value`."""
    (tmp_path / PARAMS_FILE).write_text(f"fit:\n  x: {value}\n")
    return load_params_file(tmp_path)["fit"]["x"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1e-3", 0.001),
        ("5E+2", 500.0),
        ("-2.5e-4", -0.00025),
        ("+1e2", 100.0),
        ("1e3", 1000.0),
        ("1.0e3", 1000.0),  # PyYAML alone wants a signed exponent after a dot, too
        ("1.5e-3", 0.0015),  # already a float for PyYAML: unchanged
        (".5e1", 5.0),
        ("1_000e-3", 1.0),
    ],
)
def test_exponent_floats_load_as_floats(tmp_path: Path, text: str, expected: float) -> None:
    value = load_one(tmp_path, text)
    assert type(value) is float, f"{text!r} loaded as {value!r}"
    assert value == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("'1e-3'", "1e-3"),  # quoted: the user asked for a string
        ('"5E+2"', "5E+2"),
        ("1e", "1e"),
        ("e3", "e3"),
        ("1e-3x", "1e-3x"),
        ("1.2.3e4", "1.2.3e4"),
        ("._e3", "._e3"),
        ("3", 3),
        ("1_000", 1000),
        ("0.5", 0.5),
        ("true", True),
    ],
)
def test_other_scalars_keep_their_yaml_meaning(tmp_path: Path, text: str, expected: object) -> None:
    value = load_one(tmp_path, text)
    assert type(value) is type(expected), f"{text!r} loaded as {value!r}"
    assert value == expected


def test_exponent_floats_inside_lists_and_maps(tmp_path: Path) -> None:
    (tmp_path / PARAMS_FILE).write_text("fit:\n  lrs: [1e-3, 2e-3]\n  opt: {eps: 1e-8}\n")
    assert load_params_file(tmp_path) == {"fit": {"lrs": [0.001, 0.002], "opt": {"eps": 1e-8}}}


def test_pyyaml_safe_load_itself_is_not_changed(tmp_path: Path) -> None:
    import yaml

    assert load_one(tmp_path, "1e-3") == 0.001
    assert yaml.safe_load("x: 1e-3") == {"x": "1e-3"}  # we subclass, never patch SafeLoader


def test_exponent_float_resolves_for_a_float_param(tmp_path: Path) -> None:
    (tmp_path / PARAMS_FILE).write_text("fit:\n  lr: 1e-3\n")
    resolved = resolve("fit", DEFAULTS, {}, load_params_file(tmp_path)["fit"])
    assert resolved["lr"] == 0.001
    assert type(resolved["lr"]) is float


def test_exponent_float_is_still_wrong_for_an_int_param(tmp_path: Path) -> None:
    (tmp_path / PARAMS_FILE).write_text("fit:\n  epochs: 1e3\n")
    with pytest.raises(PipelineError, match=r"param 'epochs' expects int .*got float 1000\.0"):
        resolve("fit", DEFAULTS, {}, load_params_file(tmp_path)["fit"])


def test_quoted_exponent_is_wrong_for_a_float_param(tmp_path: Path) -> None:
    (tmp_path / PARAMS_FILE).write_text("fit:\n  lr: '1e-3'\n")
    with pytest.raises(PipelineError, match=r"param 'lr' expects float .*got str '1e-3'"):
        resolve("fit", DEFAULTS, {}, load_params_file(tmp_path)["fit"])


@pytest.mark.parametrize("entry", ["fit:\n", "fit: ~\n", "fit: null\n", "fit: {}\n"])
def test_empty_entry_means_no_overrides(tmp_path: Path, entry: str) -> None:
    (tmp_path / PARAMS_FILE).write_text("ok:\n  a: 1\n" + entry)
    from_file = load_params_file(tmp_path)
    assert from_file == {"ok": {"a": 1}, "fit": {}}
    assert resolve("fit", DEFAULTS, {"epochs": 3}, from_file["fit"]) == {**DEFAULTS, "epochs": 3}
