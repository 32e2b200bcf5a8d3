"""Unit tests for the pipeline graph (pivot.pipeline.graph.build_graph) over manifests."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import pytest

from pivot.errors import PipelineError
from pivot.pipeline.graph import StageGraph, build_graph
from pivot.pipeline.manifest import Manifest, StageSpec


def spec(name: str, deps: Iterable[str] = (), outs: Iterable[str] = ()) -> StageSpec:
    return StageSpec(
        name=name,
        module="pipeline",
        func=f"pipeline.{name}",
        deps=tuple(deps),
        outs=tuple(outs),
        metrics=(),
        params={},
        fingerprint="0" * 16,
    )


def graph(*specs: StageSpec) -> StageGraph:
    return build_graph(Manifest(tuple(specs)))


# --- order and edges ------------------------------------------------------------------------


def test_independent_stages_keep_declaration_order() -> None:
    g = graph(spec("c"), spec("a"), spec("b"))
    assert g.order == ("c", "a", "b")
    assert all(not ups for ups in g.upstream.values())
    assert all(not downs for downs in g.downstream.values())


def test_chain_declared_backwards_is_ordered_topologically() -> None:
    g = graph(
        spec("evaluate", deps=["model.pkl"], outs=["metrics.json"]),
        spec("train", deps=["clean.csv"], outs=["model.pkl"]),
        spec("prepare", outs=["clean.csv"]),
    )
    assert g.order == ("prepare", "train", "evaluate")
    assert g.upstream == {
        "prepare": frozenset(),
        "train": frozenset({"prepare"}),
        "evaluate": frozenset({"train"}),
    }
    assert g.downstream == {
        "prepare": frozenset({"train"}),
        "train": frozenset({"evaluate"}),
        "evaluate": frozenset(),
    }


def test_declaration_order_breaks_ties_among_ready_stages() -> None:
    # z and y both depend only on a; x is independent and declared between them.
    g = graph(
        spec("z", deps=["a.out"]),
        spec("x"),
        spec("y", deps=["a.out"]),
        spec("a", outs=["a.out"]),
    )
    # Ready at the start: x and a (z, y wait for a). x is declared before a.
    assert g.order == ("x", "a", "z", "y")


def test_order_prefers_earliest_declared_ready_stage() -> None:
    g = graph(
        spec("late", deps=["b.out"]),
        spec("b", outs=["b.out"]),
        spec("c"),
    )
    # b is declared before c and is ready, so it goes first; late becomes ready after b,
    # and is declared earlier than c.
    assert g.order == ("b", "late", "c")


def test_diamond_upstream_and_downstream() -> None:
    g = graph(
        spec("src", outs=["raw/"]),
        spec("left", deps=["raw/"], outs=["l.csv"]),
        spec("right", deps=["raw/"], outs=["r.csv"]),
        spec("join", deps=["l.csv", "r.csv"], outs=["j.csv"]),
    )
    assert g.order == ("src", "left", "right", "join")
    assert g.upstream["join"] == {"left", "right"}
    assert g.downstream["src"] == {"left", "right"}
    assert g.upstream["src"] == frozenset()
    assert g.downstream["join"] == frozenset()
    assert isinstance(g.upstream["join"], frozenset)


def test_multiple_outputs_to_one_consumer_is_one_edge() -> None:
    g = graph(
        spec("a", outs=["x", "y"]),
        spec("b", deps=["x", "y"]),
    )
    assert g.upstream["b"] == {"a"}
    assert g.downstream["a"] == {"b"}


def _chain_graph() -> StageGraph:
    #   a -> b -> c -> d
    #        b -> e
    #   f (independent)
    return graph(
        spec("a", outs=["a.out"]),
        spec("b", deps=["a.out"], outs=["b.out"]),
        spec("c", deps=["b.out"], outs=["c.out"]),
        spec("d", deps=["c.out"]),
        spec("e", deps=["b.out"]),
        spec("f"),
    )


def test_with_upstream() -> None:
    g = _chain_graph()
    assert g.with_upstream(["d"]) == {"a", "b", "c", "d"}
    assert g.with_upstream(["e"]) == {"a", "b", "e"}
    assert g.with_upstream(["a"]) == {"a"}
    assert g.with_upstream(["f", "c"]) == {"f", "a", "b", "c"}
    assert g.with_upstream([]) == set()


def test_downstream_of() -> None:
    g = _chain_graph()
    assert g.downstream_of({"a"}) == {"b", "c", "d", "e"}
    assert g.downstream_of({"c"}) == {"d"}
    assert g.downstream_of({"d"}) == set()
    assert g.downstream_of({"f"}) == set()
    assert g.downstream_of({"c", "e"}) == {"d"}
    assert g.downstream_of(set()) == set()


def test_downstream_of_excludes_given_names_downstream_of_each_other() -> None:
    assert _chain_graph().downstream_of({"b", "c"}) == {"d", "e"}


def test_empty_manifest() -> None:
    g = graph()
    assert g.order == ()
    assert g.upstream == {}


# --- errors ---------------------------------------------------------------------------------


def test_two_producers_of_one_path_names_both() -> None:
    with pytest.raises(PipelineError) as info:
        graph(spec("first", outs=["data/x.csv"]), spec("second", outs=["data/x.csv"]))
    msg = str(info.value)
    assert "two stages produce 'data/x.csv'" in msg
    assert "'first'" in msg
    assert "'second'" in msg


@pytest.mark.parametrize(("out1", "out2"), [("data/x", "data/x/"), ("data/x/", "data/x")])
def test_file_and_directory_output_of_same_path_conflict(out1: str, out2: str) -> None:
    with pytest.raises(PipelineError, match=r"two stages produce .*'one' and 'two'"):
        graph(spec("one", outs=[out1]), spec("two", outs=[out2]))


def test_output_inside_another_stages_directory_output_conflicts() -> None:
    with pytest.raises(PipelineError, match=r"'a'.*'b'"):
        graph(spec("a", outs=["data/dir/"]), spec("b", outs=["data/dir/x.csv"]))


def test_output_inside_another_stages_output_declared_without_its_slash_conflicts() -> None:
    """dvc.yaml declares folders without "/": `od` holding `od/g.txt` is one (two stages
    writing one folder undid each other at every run)."""
    with pytest.raises(PipelineError, match=r"'od/g.txt'.*'a'.*'b'"):
        graph(spec("a", outs=["od"]), spec("b", outs=["od/g.txt"]))


def test_dep_inside_an_output_declared_without_its_slash_resolves_to_its_producer() -> None:
    g = graph(spec("use", deps=["od/f.txt"]), spec("make", outs=["od"]))
    assert g.order == ("make", "use")
    assert g.upstream["use"] == {"make"}


def test_two_stage_cycle_names_both_stages() -> None:
    with pytest.raises(PipelineError) as info:
        graph(
            spec("a", deps=["b.out"], outs=["a.out"]),
            spec("b", deps=["a.out"], outs=["b.out"]),
        )
    msg = str(info.value)
    assert msg.startswith("dependency cycle between stages: ")
    names = msg.removeprefix("dependency cycle between stages: ").split(" -> ")
    assert names[0] == names[-1]
    assert set(names) == {"a", "b"}
    assert len(names) == 3


def test_three_stage_cycle_names_only_the_stages_in_it() -> None:
    with pytest.raises(PipelineError) as info:
        graph(
            spec("outside", outs=["o.out"]),
            spec("x", deps=["z.out", "o.out"], outs=["x.out"]),
            spec("y", deps=["x.out"], outs=["y.out"]),
            spec("z", deps=["y.out"], outs=["z.out"]),
            spec("after", deps=["z.out"]),
        )
    msg = str(info.value)
    cycle = msg.removeprefix("dependency cycle between stages: ").split(" -> ")
    assert set(cycle) == {"x", "y", "z"}
    assert cycle[0] == cycle[-1]
    assert len(cycle) == 4
    assert "outside" not in msg
    assert "after" not in msg


def test_self_dependency() -> None:
    with pytest.raises(PipelineError, match=r"stage 'loop' depends on its own output 'x\.csv'"):
        graph(spec("loop", deps=["x.csv"], outs=["x.csv"]))


def test_self_dependency_through_own_directory_output() -> None:
    with pytest.raises(PipelineError, match=r"stage 'loop' depends on its own output 'out/a\.csv'"):
        graph(spec("loop", deps=["out/a.csv"], outs=["out/"]))


def test_existing_unproduced_dep_is_fine(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.csv").write_text("x\n1\n")
    (tmp_path / "inputs").mkdir()
    g = graph(
        spec("clean", deps=["data/raw.csv", "inputs/"], outs=["data/clean.csv"]),
        spec("use", deps=["data/clean.csv"]),
    )
    assert g.order == ("clean", "use")
    assert g.upstream["clean"] == frozenset()


def test_produced_dep_need_not_exist(tmp_path: Path) -> None:
    g = graph(
        spec("make", outs=["out/model.pkl"]),
        spec("use", deps=["out/model.pkl"]),
    )
    assert g.upstream["use"] == {"make"}


def test_an_unproduced_dep_that_does_not_exist_is_no_graph_error() -> None:
    # Only its stage fails when it must run (dep_missing): tests/e2e/test_rough_edges.py.
    g = graph(spec("clean", deps=["nowhere.csv"]), spec("other"))
    assert g.order == ("clean", "other")


# --- directory outputs ----------------------------------------------------------------------


def test_dep_on_file_inside_directory_output_resolves_to_producer(tmp_path: Path) -> None:
    g = graph(
        spec("use", deps=["data/dir/x.csv"]),
        spec("split", outs=["data/dir/"]),
    )
    assert g.order == ("split", "use")
    assert g.upstream["use"] == {"split"}
    assert g.downstream["split"] == {"use"}


def test_dep_on_directory_output_without_trailing_slash() -> None:
    g = graph(spec("split", outs=["data/dir/"]), spec("use", deps=["data/dir"]))
    assert g.upstream["use"] == {"split"}


def test_similar_prefix_is_not_inside_directory_output(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dir2.csv").write_text("")
    g = graph(
        spec("split", outs=["data/dir/"]),
        spec("use", deps=["data/dir2.csv"]),
    )
    assert g.upstream["use"] == frozenset()


def test_dep_on_parent_of_several_directory_outputs_links_all_producers() -> None:
    g = graph(
        spec("a", outs=["data/a/"]),
        spec("c", deps=["data/"]),
        spec("b", outs=["data/b/"]),
    )
    assert g.upstream["c"] == {"a", "b"}
    assert g.order.index("c") > g.order.index("b")


def test_dep_on_parent_of_file_output_links_producer() -> None:
    g = graph(spec("c", deps=["data/"]), spec("a", outs=["data/x.csv"]))
    assert g.upstream["c"] == {"a"}
    assert g.order == ("a", "c")


def test_cycle_found_from_a_stage_downstream_of_it_is_shown_in_data_direction() -> None:
    with pytest.raises(PipelineError) as info:
        graph(
            spec("after", deps=["z.out"]),  # declared first: the search starts outside the cycle
            spec("x", deps=["z.out"], outs=["x.out"]),
            spec("y", deps=["x.out"], outs=["y.out"]),
            spec("z", deps=["y.out"], outs=["z.out"]),
        )
    cycle = str(info.value).removeprefix("dependency cycle between stages: ").split(" -> ")
    assert "after" not in cycle
    feeds = {("x", "y"), ("y", "z"), ("z", "x")}  # producer -> consumer
    pairs = list(itertools.pairwise(cycle))
    assert pairs and all(pair in feeds for pair in pairs)


def test_a_thousand_stage_chain_orders_in_declaration_order() -> None:
    stages = [spec("s0", outs=["o0"])] + [spec(f"s{i}", deps=[f"o{i - 1}"], outs=[f"o{i}"]) for i in range(1, 1000)]
    g = graph(*reversed(stages))
    assert g.order == tuple(f"s{i}" for i in range(1000))


def test_the_graph_and_the_decisions_share_one_producer_index_which_a_pickle_leaves_out() -> None:
    import pickle

    from pivot.pipeline.producers import producer_index
    from pivot.state.plan import dep_producers

    m = Manifest((spec("a", outs=["d/"]), spec("b", deps=["d/x.txt"], outs=["b.txt"])))
    build_graph(m)
    index = producer_index(m)
    assert dep_producers(m)["b"]["d/x.txt"] == frozenset({"a"})
    assert producer_index(m) is index
    # A manifest read elsewhere (the loader's answer is a pickle) makes its own.
    copy = pickle.loads(pickle.dumps(m))
    assert "_producer_index" not in copy.__dict__
    assert copy == m and producer_index(copy) is not index
    assert producer_index(copy).producers_of("d/x.txt") == {"a"}
