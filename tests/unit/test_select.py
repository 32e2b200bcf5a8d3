"""Stage names as commands take them, and what a run of them takes in
(pivot/pipeline/select.py)."""

from __future__ import annotations

import pytest

from pivot.errors import UserError
from pivot.pipeline.graph import build_graph
from pivot.pipeline.manifest import Manifest, StageSpec
from pivot.pipeline.select import Selection, resolve_names, to_run

KNOWN = ["prep", "fit@linear", "fit@quadratic", "fit_report", "eval"]


def spec(name: str, deps: tuple[str, ...] = (), outs: tuple[str, ...] = ()) -> StageSpec:
    return StageSpec(name, "pipeline", f"pipeline.{name}", deps, outs, (), {}, "fp")


def test_names_groups_and_patterns_resolve_in_pipeline_order() -> None:
    assert resolve_names(["eval", "prep"], KNOWN) == ["prep", "eval"]
    assert resolve_names(["fit"], KNOWN) == ["fit@linear", "fit@quadratic"]  # not fit_report
    assert resolve_names(["fit*"], KNOWN, glob=True) == ["fit@linear", "fit@quadratic", "fit_report"]
    assert resolve_names(["fit@*", "fit@linear"], KNOWN, glob=True) == ["fit@linear", "fit@quadratic"]
    assert resolve_names(["fit*"], ["fit*"], glob=True) == ["fit*"]  # an exact name wins


def test_a_pattern_is_only_a_pattern_with_glob() -> None:
    with pytest.raises(UserError, match=r"unknown stage\(s\): fit\*"):
        resolve_names(["fit*"], KNOWN)


def test_every_unknown_name_is_said_with_its_closest_stage_or_group() -> None:
    with pytest.raises(UserError) as info:
        resolve_names(["fitt", "prepp", "zzz"], KNOWN)
    said = str(info.value)
    assert "fitt (did you mean fit?)" in said and "prepp (did you mean prep?)" in said
    assert said.endswith(f"stages are: {', '.join(KNOWN)}")


def test_a_stage_of_a_dvc_yaml_below_the_root_is_suggested_by_its_own_name() -> None:
    with pytest.raises(UserError, match=r"s1 \(did you mean sub/dvc.yaml:s1\?\)"):
        resolve_names(["s1"], [*KNOWN, "sub/dvc.yaml:s1"])


def test_what_each_selection_takes_in() -> None:
    graph = build_graph(Manifest((
        spec("a", outs=("a",)), spec("b", ("a",), ("b",)), spec("c", ("b",), ("c",)), spec("x", outs=("x",)),
    )))
    assert to_run(graph, ["b"], Selection.UPSTREAM) == {"a", "b"}
    assert to_run(graph, ["b"], Selection.SINGLE) == {"b"}
    assert to_run(graph, ["b"], Selection.DOWNSTREAM) == {"a", "b", "c"}
    assert to_run(graph, [], Selection.SINGLE) == {"a", "b", "c", "x"}
