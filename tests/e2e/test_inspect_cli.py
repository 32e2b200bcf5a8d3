"""`pivot dag`, `pivot params show|diff` and `pivot metrics show`: the real CLI on copies
of the quickstart and on small pipelines written into tmp_path.

These commands only read: they load the pipeline (a loader subprocess) and never start
the engine, so no test here needs `pivot repro` except through `ran_project`.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from procs import describe, run_pivot
from procs import pivot_ok as ok

pytestmark = pytest.mark.timeout(60)

STAGES = ["prepare", "features", "fit", "evaluate"]
QUICKSTART_EDGES = {
    ("prepare", "features"), ("features", "fit"), ("features", "evaluate"), ("fit", "evaluate"),
}

MakeProject = Callable[..., Path]


def ok_json(root: Path, *args: str) -> Any:
    """`pivot ARGS --json` (for `dag`: `--format=json`), parsed."""
    return json.loads(ok(root, *args, "--format=json" if args[0] == "dag" else "--json"))


def pipeline(body: str) -> str:
    return "from pivot import stage\n\n" + textwrap.dedent(body)


# --- parsers for the graph formats (no Graphviz or Mermaid in the test environment) ----

_DOT_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<id>[A-Za-z_][A-Za-z0-9_]*|-?[0-9]+(?:\.[0-9]+)?)'
    r"|(?P<op>->|[{}\[\];=,]))"
)


def dot_tokens(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while text[pos:].strip():
        match = _DOT_TOKEN.match(text, pos)
        assert match, f"not DOT at {text[pos:pos + 40]!r}"
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def parse_dot(text: str) -> tuple[list[str], set[tuple[str, str]]]:
    """Nodes and edges of a `digraph` in the DOT subset a graph tool would write: node,
    edge and graph attribute statements, `a = b`, node statements and `a -> b` chains.
    Stage ids must be quoted strings."""
    tokens = dot_tokens(text)
    assert tokens[0] == ("id", "digraph"), tokens[:3]
    i = 2 if tokens[1][0] in ("id", "str") else 1
    assert tokens[i] == ("op", "{") and tokens[-1] == ("op", "}"), tokens
    body, nodes, edges = tokens[i + 1 : -1], [], set()

    def skip_attrs(j: int) -> int:
        if j < len(body) and body[j] == ("op", "["):
            while body[j] != ("op", "]"):
                j += 1
            return j + 1
        return j

    def node_id(j: int) -> str:
        kind, value = body[j]
        assert kind == "str", f"stage ids must be quoted: {value!r}"
        return re.sub(r"\\(.)", r"\1", value[1:-1])

    j = 0
    while j < len(body):
        if body[j] in (("id", "node"), ("id", "edge"), ("id", "graph")):
            j = skip_attrs(j + 1)
        elif j + 1 < len(body) and body[j + 1] == ("op", "="):
            j += 3
        else:
            chain = [node_id(j)]
            j += 1
            while j < len(body) and body[j] == ("op", "->"):
                chain.append(node_id(j + 1))
                j += 2
            j = skip_attrs(j)
            nodes += [n for n in chain if n not in nodes]
            edges |= set(itertools.pairwise(chain))
        if j < len(body) and body[j] == ("op", ";"):
            j += 1
    return nodes, edges


def parse_mermaid(text: str) -> tuple[list[str], set[tuple[str, str]]]:
    """Stage labels and edges of `pivot dag --format mermaid`; every line must parse."""
    lines = text.splitlines()
    assert lines[0] == "flowchart TD", lines[:1]
    labels: dict[str, str] = {}
    edges = set()
    for line in lines[1:]:
        if m := re.fullmatch(r'\s+([A-Za-z][A-Za-z0-9_]*)\["([^"]*)"\]', line):
            assert m[1] not in labels, f"node id {m[1]} declared twice"
            labels[m[1]] = m[2].replace("#quot;", '"')
        elif m := re.fullmatch(r"\s+([A-Za-z][A-Za-z0-9_]*) --> ([A-Za-z][A-Za-z0-9_]*)", line):
            assert m[1] in labels and m[2] in labels, f"edge before its nodes: {line!r}"
            edges.add((labels[m[1]], labels[m[2]]))
        else:
            raise AssertionError(f"not a mermaid node or edge line: {line!r}")
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", i) and i != "end" for i in labels)
    return list(labels.values()), edges


# --- pivot dag -----------------------------------------------------------------------


def test_dag_json_of_the_quickstart(project: Path) -> None:
    data = ok_json(project, "dag")
    assert data["stages"] == STAGES
    assert [tuple(e) for e in data["edges"]] == [
        ("prepare", "features"), ("features", "fit"), ("features", "evaluate"), ("fit", "evaluate"),
    ]
    paths = {(e["from"], e["to"]): e["paths"] for e in data["edge_paths"]}
    assert paths == {
        ("prepare", "features"): ["data/clean.csv"],
        ("features", "fit"): ["data/features.csv"],
        ("features", "evaluate"): ["data/features.csv"],
        ("fit", "evaluate"): ["model/model.json"],
    }
    listed = json.loads(ok(project, "list", "--json"))["stages"]
    assert {(u, row["name"]) for row in listed for u in row["upstream"]} == QUICKSTART_EDGES
    assert not (project / ".pivot").exists(), "a read-only command created .pivot/"


def test_dag_dot_is_a_digraph_with_the_quickstart_edges(project: Path) -> None:
    nodes, edges = parse_dot(ok(project, "dag", "--format", "dot"))
    assert nodes == STAGES
    assert edges == QUICKSTART_EDGES


def test_dag_mermaid_has_every_edge(project: Path) -> None:
    nodes, edges = parse_mermaid(ok(project, "dag", "--format", "mermaid"))
    assert nodes == STAGES
    assert edges == QUICKSTART_EDGES


def test_dag_ascii_of_the_quickstart(project: Path) -> None:
    assert ok(project, "dag") == textwrap.dedent(
        """\
        level 0
          prepare
        level 1
          features  <- prepare
        level 2
          fit  <- features
        level 3
          evaluate  <- features, fit
        4 stages, 4 edges
        """
    )


@pytest.mark.parametrize("fmt", ["ascii", "json", "dot", "mermaid"])
def test_dag_of_a_stage_is_it_and_its_upstream(project: Path, fmt: str) -> None:
    out = ok(project, "dag", "fit", "--format", fmt)
    if fmt == "json":
        data = json.loads(out)
        assert data["stages"] == ["prepare", "features", "fit"]
        assert data["edges"] == [["prepare", "features"], ["features", "fit"]]
    elif fmt == "ascii":
        assert "evaluate" not in out
        assert "fit  <- features" in out
        assert out.endswith("3 stages, 2 edges\n")
    else:
        nodes, edges = (parse_dot if fmt == "dot" else parse_mermaid)(out)
        assert nodes == ["prepare", "features", "fit"]
        assert edges == {("prepare", "features"), ("features", "fit")}


def test_dag_of_a_stage_without_upstream(project: Path) -> None:
    data = ok_json(project, "dag", "prepare", "prepare")
    assert data == {"stages": ["prepare"], "edges": [], "edge_paths": []}


ODD_NAMES = pipeline(
    """\
    import os


    def write(path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write("x\\n")


    @stage(outs=["shards/"])
    def shard() -> None:
        write("shards/part-1.csv")


    @stage(outs=["extra.txt"])
    def end() -> None:
        write("extra.txt")


    def train(size: str = "small") -> None:
        write(f"train-{size}.txt")


    stage(name="train@small", deps=["shards/part-1.csv", "extra.txt"], outs=["train-small.txt"])(train)
    stage(name="a.b-c", params={"size": "abc"}, deps=["shards/", "extra.txt", "train-small.txt"],
          outs=["train-abc.txt"])(train)
    """
)
ODD_EDGES = {
    ("shard", "train@small"), ("end", "train@small"),
    ("shard", "a.b-c"), ("end", "a.b-c"), ("train@small", "a.b-c"),
}


def test_dag_with_odd_names_and_folder_outputs(make_project: MakeProject) -> None:
    root = make_project({"pipeline.py": ODD_NAMES})
    data = ok_json(root, "dag")
    assert {tuple(e) for e in data["edges"]} == ODD_EDGES
    assert len(data["edges"]) == len(ODD_EDGES)
    paths = {(e["from"], e["to"]): e["paths"] for e in data["edge_paths"]}
    assert paths[("shard", "train@small")] == ["shards/part-1.csv"]
    assert paths[("shard", "a.b-c")] == ["shards/"]
    assert paths[("end", "a.b-c")] == ["extra.txt"]
    assert paths[("train@small", "a.b-c")] == ["train-small.txt"]

    nodes, edges = parse_dot(ok(root, "dag", "--format", "dot"))
    assert sorted(nodes) == sorted(data["stages"]) and edges == ODD_EDGES
    nodes, edges = parse_mermaid(ok(root, "dag", "--format", "mermaid"))
    assert sorted(nodes) == sorted(data["stages"]) and edges == ODD_EDGES


WIDE = 300
FAN_IN = 60  # `sink` reads the first FAN_IN outputs: its upstream list must wrap


def wide_pipeline() -> tuple[str, set[tuple[str, str]]]:
    """WIDE stages s000.. (each reads outputs i-1 and i//3) plus `sink`."""
    edges = set()
    for i in range(1, WIDE):
        for j in {i - 1, i // 3}:
            edges.add((f"s{j:03d}", f"s{i:03d}"))
    edges |= {(f"s{j:03d}", "sink") for j in range(FAN_IN)}
    source = pipeline(
        f"""\
        def step(i: int = 0) -> None:
            pass


        for i in range({WIDE}):
            deps = sorted({{f"out/{{j}}.txt" for j in (i - 1, i // 3) if 0 <= j < i}})
            stage(name=f"s{{i:03d}}", params={{"i": i}}, deps=deps, outs=[f"out/{{i}}.txt"])(step)
        stage(name="sink", deps=[f"out/{{j}}.txt" for j in range({FAN_IN})], outs=["sink.txt"])(step)
        """
    )
    return source, edges


def test_dag_of_300_stages(make_project: MakeProject) -> None:
    source, expected = wide_pipeline()
    root = make_project({"pipeline.py": source})
    data = ok_json(root, "dag")
    assert len(data["stages"]) == WIDE + 1
    assert {tuple(e) for e in data["edges"]} == expected
    assert len(data["edges"]) == len(expected)
    position = {name: i for i, name in enumerate(data["stages"])}
    assert all(position[u] < position[d] for u, d in expected), "stages not in run order"

    text = ok(root, "dag")
    lines = text.splitlines()
    assert lines[-1] == f"{WIDE + 1} stages, {len(expected)} edges"
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    stage_lines = [line.split()[0] for line in lines if re.match(r"  \S", line)]
    assert sorted(stage_lines) == sorted(data["stages"]), "each stage once, at the line start"
    sink_at = next(i for i, line in enumerate(lines) if line.startswith("  sink "))
    wrapped = [lines[sink_at]]
    for line in lines[sink_at + 1 :]:
        if not line.startswith("   "):
            break
        wrapped.append(line)
    assert len(wrapped) > 1, "a long upstream list must wrap"
    listed = " ".join(wrapped).split("<-", 1)[1].replace(",", " ").split()
    assert listed == [f"s{j:03d}" for j in range(FAN_IN)]

    nodes, edges = parse_dot(ok(root, "dag", "--format", "dot"))
    assert len(nodes) == WIDE + 1 and edges == expected
    nodes, edges = parse_mermaid(ok(root, "dag", "--format", "mermaid"))
    assert len(nodes) == WIDE + 1 and edges == expected


def test_dag_bad_format_is_a_usage_error(project: Path) -> None:
    result = run_pivot(project, "dag", "--format", "png")
    assert result.returncode == 2, describe(result)
    assert "png" in result.stderr and "Traceback" not in result.stderr


# --- unknown stages ------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["dag"], ["params", "show"], ["params", "diff"], ["metrics", "show"]]
)
def test_unknown_stage_is_a_usage_error_listing_the_stages(project: Path, command: list[str]) -> None:
    result = run_pivot(project, *command, "fit", "fitt", "nosuch")
    assert result.returncode == 2, describe(result)
    first = result.stderr.splitlines()[0]
    assert first.startswith("error: unknown stage(s): fitt (did you mean fit?), nosuch;"), first
    assert first.endswith("stages are: prepare, features, fit, evaluate"), first
    assert result.stdout == "", describe(result)
    assert "Traceback" not in result.stderr


# --- pivot params show ---------------------------------------------------------------


def test_params_show_json_of_the_quickstart(project: Path) -> None:
    assert ok_json(project, "params", "show") == {"stages": {
        "prepare": {"min_rows": {"value": 5, "source": "code"}},
        "features": {"scale": {"value": 1.0, "source": "code"}},
        "fit": {
            "lr": {"value": 0.05, "source": "code"},
            "epochs": {"value": 300, "source": "params.yaml"},
        },
        "evaluate": {},
    }}


def test_params_show_text_and_stage_selection(project: Path) -> None:
    rows = [line.split() for line in ok(project, "params", "show").splitlines()]
    assert ["fit", "epochs", "300", "params.yaml"] in rows
    assert ["fit", "lr", "0.05", "code"] in rows
    assert ["evaluate", "(no", "params)"] in rows
    only = [line.split() for line in ok(project, "params", "show", "fit").splitlines()]
    assert only == [["fit", "lr", "0.05", "code"], ["fit", "epochs", "300", "params.yaml"]]


PARAM_PIPELINE = pipeline(
    """\
    def train(lr: float = 0.1, eps: float = 1.0, tag: str = "x", layers: list = [1]) -> None:
        pass


    def other(n: int = 1) -> None:
        pass


    stage(name="train", params={"tag": "from-stage"}, outs=["t.txt"])(train)
    stage(name="other", outs=["o.txt"])(other)
    """
)


def test_params_show_reads_exponent_floats_and_empty_entries(make_project: MakeProject) -> None:
    root = make_project({
        "pipeline.py": PARAM_PIPELINE,
        "params.yaml": "train:\n  lr: 1e-3\n  eps: '1e-8'\nother:\n",
    })
    result = run_pivot(root, "params", "show", "--json")
    assert result.returncode == 2, describe(result)  # a quoted '1e-8' stays a string
    assert "param 'eps' expects float" in result.stderr and "'1e-8'" in result.stderr

    (root / "params.yaml").write_text("train:\n  lr: 1e-3\n  eps: -2.5E-8\n  layers: [2, 3]\nother:\n")
    data = ok_json(root, "params", "show")["stages"]
    assert data["train"] == {
        "lr": {"value": 0.001, "source": "params.yaml"},
        "eps": {"value": -2.5e-8, "source": "params.yaml"},
        "tag": {"value": "from-stage", "source": "code"},
        "layers": {"value": [2, 3], "source": "params.yaml"},
    }
    assert data["other"] == {"n": {"value": 1, "source": "code"}}
    text = ok(root, "params", "show", "train")
    assert ["train", "tag", '"from-stage"', "code"] in [line.split() for line in text.splitlines()]


# --- pivot params diff ---------------------------------------------------------------


def test_params_diff_before_any_run_lists_never_ran_stages(project: Path) -> None:
    assert ok_json(project, "params", "diff") == {"changes": [], "never_ran": STAGES}
    text = ok(project, "params", "diff", "fit", "prepare")
    assert text.splitlines() == ["prepare: never ran (no lock file)", "fit: never ran (no lock file)"]


def test_params_diff_after_a_run_is_empty(ran_project: Path) -> None:
    assert ok_json(ran_project, "params", "diff") == {"changes": [], "never_ran": []}
    assert ok(ran_project, "params", "diff") == "no param changes since the last runs\n"


def test_params_diff_after_editing_params_yaml_and_signatures(ran_project: Path) -> None:
    params = ran_project / "params.yaml"
    params.write_text(params.read_text().replace("epochs: 300", "epochs: 50"))
    code = ran_project / "pipeline.py"
    text = code.read_text()
    for old, new in [
        ("def prepare(min_rows: int = 5) -> None:", "def prepare() -> None:\n    min_rows = 5"),
        ("def fit(lr: float = 0.05, epochs: int = 200) -> None:",
         "def fit(lr: float = 0.05, epochs: int = 200, momentum: float = 0.9) -> None:"),
    ]:
        assert old in text
        text = text.replace(old, new)
    code.write_text(text)

    assert ok_json(ran_project, "params", "diff") == {
        "changes": [
            {"stage": "prepare", "key": "min_rows", "change": "removed", "old": 5, "new": None},
            {"stage": "fit", "key": "epochs", "change": "changed", "old": 300, "new": 50},
            {"stage": "fit", "key": "momentum", "change": "added", "old": None, "new": 0.9},
        ],
        "never_ran": [],
    }
    assert ok(ran_project, "params", "diff").splitlines() == [
        "prepare.min_rows: removed, was 5",
        "fit.epochs: 300 -> 50",
        "fit.momentum: added, 0.9",
    ]
    assert ok(ran_project, "params", "diff", "evaluate") == "no param changes since the last runs\n"


# --- pivot metrics show --------------------------------------------------------------


def test_metrics_show_after_a_run(ran_project: Path) -> None:
    on_disk = json.loads((ran_project / "metrics.json").read_text())
    assert {"mse", "r2"} <= set(on_disk)
    assert ok_json(ran_project, "metrics", "show") == {
        "stages": {"evaluate": {"metrics.json": on_disk}}, "missing": [], "errors": [],
    }
    rows = [line.split() for line in ok(ran_project, "metrics", "show").splitlines()]
    assert [r[:2] for r in rows] == [["evaluate", "metrics.json"]] * len(on_disk)
    assert {r[2]: json.loads(r[3]) for r in rows} == on_disk


def test_metrics_show_before_a_run_reports_the_file_missing(project: Path) -> None:
    assert ok_json(project, "metrics", "show") == {
        "stages": {}, "missing": [{"stage": "evaluate", "path": "metrics.json"}], "errors": [],
    }
    text = ok(project, "metrics", "show")
    assert text.startswith("evaluate  metrics.json  (missing"), text
    assert ok(project, "metrics", "show", "fit") == "none of these stages declares metrics\n"


METRICS_PIPELINE = pipeline(
    """\
    @stage(outs=["model.bin"], metrics=["m/score.yaml", "bad.json", "notes.txt"])
    def score() -> None:
        pass


    @stage(deps=["model.bin"], metrics=["eval.json"])
    def check() -> None:
        pass
    """
)


def test_metrics_show_nested_yaml_and_unreadable_files(make_project: MakeProject) -> None:
    root = make_project({
        "pipeline.py": METRICS_PIPELINE,
        "m/score.yaml": "train:\n  loss: 1e-3\n  acc: 0.9\nlayers: [3, 4]\nname: base\n",
        "bad.json": "{not json",
        "notes.txt": "accuracy: 1\n",
        "eval.json": '{"auc": {"macro": 0.8, "micro": 0.7}}\n',
    })
    result = run_pivot(root, "metrics", "show")
    assert result.returncode == 2, describe(result)
    assert result.stdout.splitlines() == [
        "score  m/score.yaml  train.loss  0.001",
        "score  m/score.yaml  train.acc   0.9",
        "score  m/score.yaml  layers.0    3",
        "score  m/score.yaml  layers.1    4",
        "score  m/score.yaml  name        base",
        "check  eval.json     auc.macro   0.8",
        "check  eval.json     auc.micro   0.7",
    ]
    errors = result.stderr.splitlines()
    assert errors[0].startswith("error: bad.json (metrics of stage 'score'): not valid JSON"), errors
    assert errors[1].startswith("error: notes.txt (metrics of stage 'score'): unsupported"), errors
    assert len(errors) == 2 and "Traceback" not in result.stderr

    result = run_pivot(root, "metrics", "show", "--json")
    assert result.returncode == 2, describe(result)
    data = json.loads(result.stdout)
    assert data["stages"] == {
        "score": {"m/score.yaml": {"train": {"loss": 0.001, "acc": 0.9}, "layers": [3, 4], "name": "base"}},
        "check": {"eval.json": {"auc": {"macro": 0.8, "micro": 0.7}}},
    }
    assert [(e["stage"], e["path"]) for e in data["errors"]] == [("score", "bad.json"), ("score", "notes.txt")]
    assert data["missing"] == []

    assert ok(root, "metrics", "show", "check").splitlines() == [
        "check  eval.json  auc.macro  0.8", "check  eval.json  auc.micro  0.7",
    ]


# --- cheap to start --------------------------------------------------------------------


def test_cli_import_does_not_load_the_graph_or_yaml_libraries() -> None:
    code = (
        "import sys, pivot.cli.main; "
        "print(sorted(m for m in ('networkx', 'yaml', 'pivot.pipeline.graph') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, describe(result)
    assert result.stdout.strip() == "[]"


def test_dag_outs_is_the_graph_of_outputs(project: Path) -> None:
    """As `dvc dag --outs`: A -> B when the stage writing B reads A."""
    data = ok_json(project, "dag", "--outs")
    assert data["outs"] == ["data/clean.csv", "data/features.csv", "model/model.json", "metrics.json"]
    assert {tuple(e) for e in data["edges"]} == {
        ("data/clean.csv", "data/features.csv"),
        ("data/features.csv", "model/model.json"),
        ("data/features.csv", "metrics.json"),
        ("model/model.json", "metrics.json"),
    }
    nodes, edges = parse_mermaid(ok(project, "dag", "--outs", "--format", "mermaid"))
    assert nodes == data["outs"] and edges == {tuple(e) for e in data["edges"]}
    text = ok(project, "dag", "--outs", "evaluate")
    assert text.splitlines()[-1] == "4 outputs, 4 edges"
    assert "metrics.json  <- data/features.csv, model/model.json" in text
