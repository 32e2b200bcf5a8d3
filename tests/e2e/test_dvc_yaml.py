"""dvc.yaml as a pipeline source (issue 13, point 2): a DVC project's stages run as
command stages, with DVC's names, params, interpolation, foreach and matrix; what is not
supported yet is an error naming the file, the stage and the key."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from procs import LiveRun, describe, finished, parse_events, pivot_cmd, run_pivot

from pivot.state.hashing import hash_path

pytestmark = pytest.mark.timeout(60)

WAIT_S = 20.0

DVC_YAML = '''\
vars:
  - config.yaml
stages:
  prepare:
    cmd: python src/prepare.py data/raw.csv data/clean.csv ${prepare.min_rows}
    deps:
      - src/prepare.py
      - data/raw.csv
    params:
      - prepare.min_rows
    outs:
      - data/clean.csv
  fit:
    foreach:
      linear: 1
      quadratic: 2
    do:
      cmd: python src/fit.py ${item} ${train.lr} data/clean.csv models/${key}.txt
      deps:
        - src/fit.py
        - data/clean.csv
      params:
        - train.lr
      outs:
        - models/${key}.txt
  report:
    matrix:
      model: [linear, quadratic]
    wdir: reports
    cmd: echo "${name}" > ${item.model}.txt && cat ../models/${item.model}.txt >> ${item.model}.txt
    deps:
      - ../models/${item.model}.txt
    metrics:
      - ${item.model}.txt:
          cache: false
'''

PARAMS = "prepare:\n  min_rows: 2\ntrain:\n  lr: 0.5\nevaluate:\n  threshold: 0.3\n"

PREPARE = '''\
import sys

rows = open(sys.argv[1]).read().split()
open(sys.argv[2], "w").write("\\n".join(rows[: int(sys.argv[3])]) + "\\n")
print("kept", min(len(rows), int(sys.argv[3])))
'''

FIT = '''\
import os
import sys

degree, lr, source, out = sys.argv[1:5]
os.makedirs(os.path.dirname(out), exist_ok=True)
open(out, "w").write(f"degree={degree} lr={lr} rows={len(open(source).read().split())}\\n")
'''

FILES = {
    "dvc.yaml": DVC_YAML, "params.yaml": PARAMS, "config.yaml": "name: demo\n", "data/raw.csv": "a\nb\nc\n",
    "src/prepare.py": PREPARE, "src/fit.py": FIT, "reports/.keep": "",
}
STAGES = ["prepare", "fit@linear", "fit@quadratic", "report@linear", "report@quadratic"]


def statuses(result: object) -> dict[str, str]:
    return {s: e["status"] for s, e in finished(parse_events(result.stdout)).items()}  # type: ignore[attr-defined]


def test_a_dvc_project_runs_with_dvc_names_params_and_interpolation(make_project: Callable[..., Path]) -> None:
    root = make_project(FILES)
    listed = run_pivot(root, "list")
    assert listed.returncode == 0, describe(listed)
    assert [line for line in listed.stdout.splitlines() if not line.startswith(" ")] == STAGES

    first = run_pivot(root, "repro", "--json", timeout=40)
    assert first.returncode == 0, describe(first)
    assert statuses(first) == dict.fromkeys(STAGES, "ran")
    assert "never" not in first.stderr and "warning" not in first.stderr.lower(), first.stderr  # evaluate: a DVC section
    assert (root / "models" / "quadratic.txt").read_text() == "degree=2 lr=0.5 rows=2\n"
    assert (root / "reports" / "linear.txt").read_text() == "demo\ndegree=1 lr=0.5 rows=2\n"  # vars, wdir
    logs = [e["line"] for e in parse_events(first.stdout) if e["event"] == "log" and e["stage"] == "prepare"]
    assert logs == ["kept 2"]

    again = run_pivot(root, "repro", "--json", timeout=40)
    assert statuses(again) == dict.fromkeys(STAGES, "skipped")

    # A key only the fit stages read: they and what reads their outputs run, not prepare.
    (root / "params.yaml").write_text(PARAMS.replace("lr: 0.5", "lr: 0.25"))
    # Its cmd reads ${train.lr} when it runs: a params change, not a code one.
    explained = run_pivot(root, "status", "--explain", "fit@linear").stdout
    assert "params changed" in explained and "code" not in explained, explained
    third = run_pivot(root, "repro", "--json", timeout=40)
    assert statuses(third) == {"prepare": "skipped", **dict.fromkeys(STAGES[1:], "ran")}
    reasons = {s: e["reason_code"] for s, e in finished(parse_events(third.stdout)).items()}
    assert reasons["fit@linear"] == "params_changed", reasons
    assert (root / "models" / "linear.txt").read_text() == "degree=1 lr=0.25 rows=2\n"
    # A section no stage reads: nothing runs.
    (root / "params.yaml").write_text(PARAMS.replace("lr: 0.5", "lr: 0.25").replace("0.3", "0.9"))
    assert statuses(run_pivot(root, "repro", "--json", timeout=40)) == dict.fromkeys(STAGES, "skipped")


def test_a_dvc_yaml_edit_reloads_a_live_engine(make_project: Callable[..., Path], up: Callable[..., LiveRun]) -> None:
    root = make_project(FILES)
    live = up(root)
    live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "the first wave")
    mark = live.mark()
    (root / "dvc.yaml").write_text(DVC_YAML.replace("linear: 1", "linear: 3"))
    began = live.wait_event(lambda e: e["event"] == "wave_started", WAIT_S, "a wave for the dvc.yaml edit", mark)
    assert began["trigger"] == "code", began
    done = live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "its end", mark)
    assert "fit@linear" in done["ran"] and "fit@quadratic" not in done["ran"], done
    assert (root / "models" / "linear.txt").read_text().startswith("degree=3 ")


def test_a_vars_file_edit_reloads_a_live_engine(make_project: Callable[..., Path], up: Callable[..., LiveRun]) -> None:
    # config.yaml's `name` is written into the report commands as they load: it is code.
    root = make_project(FILES)
    live = up(root)
    live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "the first wave")
    assert (root / "reports" / "linear.txt").read_text().startswith("demo\n")
    mark = live.mark()
    (root / "config.yaml").write_text("name: other\n")
    began = live.wait_event(lambda e: e["event"] == "wave_started", WAIT_S, "a wave for the config.yaml edit", mark)
    assert (began["trigger"], began["paths"]) == ("code", ["config.yaml"]), began
    done = live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "its end", mark)
    assert sorted(done["ran"]) == ["report@linear", "report@quadratic"], done
    assert (root / "reports" / "linear.txt").read_text().startswith("other\n")


def test_a_param_of_another_type_with_an_equal_value_runs_its_command_again(
    make_project: Callable[..., Path], up: Callable[..., LiveRun],
) -> None:
    """1 -> 1.0 writes `1.0` into the command where it wrote `1` (Python's 1 == 1.0 said
    "up to date", one-shot and live)."""
    root = make_project({"dvc.yaml": "stages:\n  s:\n    cmd: echo a=${a} > o.txt\n    outs: [o.txt]\n",
                         "params.yaml": "a: 1\n"})
    assert run_pivot(root, "repro").returncode == 0
    (root / "params.yaml").write_text("a: true\n")
    assert run_pivot(root, "repro").returncode == 0
    assert (root / "o.txt").read_text() == "a=true\n"
    live = up(root)
    live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "the first wave")
    live.wait_watching(root)
    mark = live.mark()
    (root / "params.yaml").write_text("a: 1.0\n")  # (true was 1 too)
    done = live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "a wave for the params.yaml edit", mark)
    assert done["ran"] == ["s"], done
    assert (root / "o.txt").read_text() == "a=1.0\n"


@pytest.mark.parametrize(("change", "says"), [
    (("    cmd: python src/prepare.py", "    frozen: maybe\n    cmd: python src/prepare.py"),
     "stage 'prepare': frozen must be true or false, got 'maybe'"),
    (("    outs:\n      - data/clean.csv", "    outs:\n      - data/clean.csv:\n          cache: maybe"),
     "stage 'prepare': outs: data/clean.csv: unknown key or value cache: 'maybe'"),
    (("    deps:\n      - src/prepare.py", "    depz:\n      - src/prepare.py"), "stage 'prepare': unknown key 'depz'"),
    (("stages:", "stagez:"), "dvc.yaml: unknown top-level key 'stagez'"),
    (("    outs:\n      - data/clean.csv", "    outs:\n      - data/clean.csv: true"),
     "stage 'prepare': outs: data/clean.csv: expected its options"),  # (was an AttributeError)
    (("stages:", "vars: 5\nstages:"), "vars: expected a list of files and maps, got 5"),  # (a TypeError)
    (("      - prepare.min_rows", "      - prepare.max_rows"), "no such key 'prepare.max_rows'"),
    (("${prepare.min_rows}", "${prepare.nope}"), "${prepare.nope}"),
])
def test_what_is_not_supported_is_an_error_naming_file_stage_and_key(
    make_project: Callable[..., Path], change: tuple[str, str], says: str,
) -> None:
    root = make_project({**FILES, "dvc.yaml": DVC_YAML.replace(*change)})
    result = run_pivot(root, "repro")
    assert result.returncode == 2, describe(result)
    assert says in result.stderr and "Traceback" not in result.stderr, describe(result)


SUB_DVC = '''\
stages:
  count:
    cmd: python count.py ${n} > counted.txt
    deps:
      - count.py
    params:
      - n
    outs:
      - counted.txt
'''


def test_a_dvc_yaml_below_the_root_runs_from_its_folder_under_dvcs_name(make_project: Callable[..., Path]) -> None:
    root = make_project({**FILES, "sub/dvc.yaml": SUB_DVC, "sub/params.yaml": "n: 2\n",
                         "sub/count.py": "import sys\n\nprint(' '.join(str(i) for i in range(int(sys.argv[1]))))\n"})
    name = "sub/dvc.yaml:count"
    first = run_pivot(root, "repro", "--json", timeout=40)
    assert first.returncode == 0, describe(first)
    assert statuses(first) == {**dict.fromkeys(STAGES, "ran"), name: "ran"}
    assert (root / "sub" / "counted.txt").read_text() == "0 1\n"  # its paths and params from sub/
    assert (root / ".pivot" / "stages" / "sub%2Fdvc.yaml:count.lock").is_file()  # no folder made of the name
    logs = run_pivot(root, "logs", name)
    assert logs.returncode == 0 and logs.stdout.startswith(f"# {name}: ran"), describe(logs)

    (root / "sub" / "params.yaml").write_text("n: 3\n")  # its own params file: it alone runs
    again = run_pivot(root, "repro", "--json", timeout=40)
    assert statuses(again) == {**dict.fromkeys(STAGES, "skipped"), name: "ran"}
    assert (root / "sub" / "counted.txt").read_text() == "0 1 2\n"
    gc = run_pivot(root, "gc", "--force")  # its lock keeps its outputs' objects
    assert gc.returncode == 0, describe(gc)
    assert statuses(run_pivot(root, "repro", "--json", timeout=40)) == {**dict.fromkeys(STAGES, "skipped"), name: "skipped"}


def test_a_name_in_both_pipeline_py_and_dvc_yaml_is_refused(make_project: Callable[..., Path]) -> None:
    both = make_project({**FILES, "pipeline.py": "from pivot import stage\n\nstage(name='prepare', cmd='true', outs=['x'])\n"})
    result = run_pivot(both, "list")
    assert result.returncode == 2 and "'prepare' is declared in both pipeline.py and dvc.yaml" in result.stderr, describe(result)


FLAGS = '''\
stages:
  stamp:
    cmd: echo run >> runs.log
    always_changed: true
    outs:
      - runs.log:
          persist: true
  frozen:
    cmd: cp data/raw.csv copy.csv
    frozen: true
    deps:
      - data/raw.csv
    outs:
      - copy.csv
  flaky:
    cmd: echo attempt >> tries.log && test -f ok
    outs:
      - tries.log:
          persist: true
'''


def test_frozen_never_runs_always_changed_always_runs_and_persist_outputs_stay(
    make_project: Callable[..., Path],
) -> None:
    root = make_project({"dvc.yaml": FLAGS, "data/raw.csv": "a\n", "copy.csv": "kept by hand\n"})
    first = run_pivot(root, "repro", "--json", "--keep-going", timeout=40)
    assert first.returncode == 1, describe(first)  # flaky fails: no `ok` yet
    assert statuses(first) == {"stamp": "ran", "frozen": "skipped", "flaky": "failed"}
    assert (root / "tries.log").read_text() == "attempt\n"  # a failed run's persistent output stays

    (root / "data" / "raw.csv").write_text("b\n")
    (root / "ok").write_text("")
    second = run_pivot(root, "repro", "--json", timeout=40)
    assert second.returncode == 0, describe(second)
    done = finished(parse_events(second.stdout))
    assert {s: e["status"] for s, e in done.items()} == {"stamp": "ran", "frozen": "skipped", "flaky": "ran"}
    assert done["stamp"]["reason_code"] == "always_changed", done["stamp"]
    assert (root / "runs.log").read_text() == "run\nrun\n"  # kept in place: the stage appends
    assert (root / "tries.log").read_text() == "attempt\nattempt\n"
    assert (root / "copy.csv").read_text() == "kept by hand\n"  # frozen: never run, whatever changed


def test_a_frozen_stage_below_a_stale_one_is_shown_up_to_date(make_project: Callable[..., Path]) -> None:
    """docs/dvc.md: a frozen stage never runs, and status shows it up to date (its stale
    upstream made it "stale (frozen: never run)")."""
    dvc = ("stages:\n  up:\n    cmd: cp in.txt up.txt\n    deps: [in.txt]\n    outs: [up.txt]\n"
           "  frz:\n    cmd: cp up.txt frz.txt\n    frozen: true\n    deps: [up.txt]\n    outs: [frz.txt]\n")
    root = make_project({"dvc.yaml": dvc, "in.txt": "1\n", "frz.txt": "kept\n"})
    assert run_pivot(root, "repro", timeout=40).returncode == 0
    (root / "in.txt").write_text("2\n")
    status = run_pivot(root, "status", "--json")
    stages = json.loads(status.stdout)["stages"]
    assert stages["up"]["stale"] and not stages["frz"]["stale"], stages


UNCACHED = '''\
stages:
  make:
    cmd: python -c "open('table.csv', 'w').write('a,b\\n'); open('big.bin', 'w').write('x' * 1000)"
    deps:
      - data/raw.csv
    outs:
      - table.csv:
          cache: false
      - big.bin
'''


def test_an_output_with_cache_false_is_hashed_not_stored_and_stays_in_git(make_project: Callable[..., Path]) -> None:
    root = make_project({"dvc.yaml": UNCACHED, "data/raw.csv": "a\n"})
    assert statuses(run_pivot(root, "repro", "--json", timeout=40)) == {"make": "ran"}
    ignored = (root / ".gitignore").read_text()
    assert "/big.bin" in ignored and "table.csv" not in ignored, ignored  # it stays in git

    def in_cache(path: Path) -> bool:
        digest = hash_path(path)
        assert digest is not None
        return (root / ".pivot" / "cache" / "files" / digest[:2] / digest[2:]).is_file()

    assert in_cache(root / "big.bin") and not in_cache(root / "table.csv")

    # Its hash is still checked: a hand edit makes the stage stale, and is kept in the
    # cache before the run replaces it (nothing is lost).
    (root / "table.csv").write_text("edited\n")
    again = run_pivot(root, "repro", "--json", timeout=40)
    done = finished(parse_events(again.stdout))
    assert done["make"]["status"] == "ran" and done["make"]["reason_code"] == "out_modified", done["make"]
    assert (root / "table.csv").read_text() == "a,b\n"
    assert statuses(run_pivot(root, "repro", "--json", timeout=40)) == {"make": "skipped"}


def test_params_yaml_top_level_values_are_dvc_params_and_a_section_no_stage_reads_is_warned_without_dvc_yaml(
    make_project: Callable[..., Path],
) -> None:
    # dvc.yaml: `seed: 1` at the top of params.yaml is a param, read by key.
    root = make_project({
        "dvc.yaml": "stages:\n  draw:\n    cmd: echo ${seed} > seed.txt\n    params: [seed]\n    outs: [seed.txt]\n",
        "params.yaml": "seed: 1\nunused: [1, 2]\n",
    })
    result = run_pivot(root, "repro")
    assert result.returncode == 0 and "no stage named" not in result.stderr, describe(result)
    assert (root / "seed.txt").read_text() == "1\n"

    # pipeline.py only: a list-params stage owns what it reads; another section is a typo.
    other = make_project({
        "pipeline.py": "from pivot import stage\n\n"
                       "stage(name='draw', cmd='echo ${seed} > seed.txt', params=['seed'], outs=['seed.txt'])\n",
        "params.yaml": "seed: 2\ndarw:\n  n: 1\n",
    }, name="other")
    result = run_pivot(other, "repro")
    assert result.returncode == 0, describe(result)
    assert (other / "seed.txt").read_text() == "2\n"
    assert "params.yaml: no stage named 'darw' (did you mean 'draw'?)" in result.stderr, describe(result)
    assert "'seed'" not in result.stderr, describe(result)


def test_a_dvc_yaml_below_a_pipeline_py_root_is_read_when_git_knows_it(make_project: Callable[..., Path]) -> None:

    files = {
        "pipeline.py": "from pivot import stage\n\n\n@stage(deps=['in.txt'], outs=['top.txt'])\n"
                       "def top() -> None:\n    open('top.txt', 'w').write(open('in.txt').read())\n",
        "in.txt": "x\n", "params.yaml": "top:\n",
        "sub/dvc.yaml": "stages:\n  count:\n    cmd: echo ${n} > count.txt\n    params: [n]\n    outs: [count.txt]\n",
        "sub/params.yaml": "n: 3\n",
    }
    root = make_project(files)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    result = run_pivot(root, "repro", "--json", timeout=40)
    assert statuses(result) == {"top": "ran", "sub/dvc.yaml:count": "ran"}, describe(result)
    assert (root / "sub" / "count.txt").read_text() == "3\n" and "no stage named" not in result.stderr
    (root / "sub" / "params.yaml").write_text("n: 4\n")
    again = run_pivot(root, "repro", "--json", timeout=40)
    assert statuses(again) == {"top": "skipped", "sub/dvc.yaml:count": "ran"}, describe(again)
    assert (root / "sub" / "count.txt").read_text() == "4\n"

    outside = make_project(files, name="outside")  # no repository: only pipeline.py
    listed = run_pivot(outside, "list")
    assert listed.returncode == 0 and "count" not in listed.stdout, describe(listed)


DIRS = '''\
stages:
  mk:
    cmd: mkdir -p outdir && echo ${n} > outdir/a.txt
    params: [n]
    outs: [outdir]
  use:
    cmd: cat outdir/a.txt > b.txt
    deps: [outdir]
    outs: [b.txt]
  miss:
    cmd: echo nothing
    outs: [never.txt]
'''


def test_a_directory_out_as_dvc_writes_it_and_a_missing_out_fails_its_stage(make_project: Callable[..., Path]) -> None:
    root = make_project({"dvc.yaml": DIRS, "params.yaml": "n: 1\n"})
    first = run_pivot(root, "repro", "--json", "--keep-going", timeout=40)
    assert first.returncode == 1, describe(first)
    done = finished(parse_events(first.stdout))
    assert {s: e["status"] for s, e in done.items()} == {"mk": "ran", "use": "ran", "miss": "failed"}
    assert done["miss"]["reason_code"] == "out_not_produced" and "never.txt" in done["miss"]["reason"], done["miss"]
    assert (root / "b.txt").read_text() == "1\n"
    (root / "params.yaml").write_text("n: 2\n")  # the folder changes: what reads it runs
    again = finished(parse_events(run_pivot(root, "repro", "--json", "mk", "use", timeout=40).stdout))
    assert {s: e["status"] for s, e in again.items()} == {"mk": "ran", "use": "ran"}
    assert (root / "b.txt").read_text() == "2\n"


SWEEP = '''\
stages:
  sweep:
    foreach: ${sweeps}
    do:
      cmd: echo ${item} ${train.lr} ${seed} > out-${item}.txt
      params: [train.lr, seed, {other.yaml: [a]}]
      outs: ["out-${item}.txt"]
  score:
    cmd: >-
      cat out-s1.txt out-s2.txt > /dev/null && echo '{"acc": 0.5}' > score.json
    deps: [out-s1.txt, out-s2.txt]
    metrics: [score.json]
'''
SWEEP_PARAMS = "seed: 1\nsweeps: [s1, s2]\ntrain:\n  lr: 0.25\n"
TOP = ("from pivot import stage\n\n\n@stage(outs=['top.txt'])\n"
       "def top(n: int = 1) -> None:\n    open('top.txt', 'w').write(str(n))\n")


@pytest.mark.parametrize("with_pipeline", [False, True])
def test_params_metrics_and_dag_show_a_dvc_project_whose_params_yaml_has_plain_values(
    make_project: Callable[..., Path], with_pipeline: bool,
) -> None:
    files = {"dvc.yaml": SWEEP, "params.yaml": SWEEP_PARAMS, "other.yaml": "a: x\n"}
    if with_pipeline:  # a function stage's section of params.yaml beside DVC's plain values
        files |= {"pipeline.py": TOP, "params.yaml": SWEEP_PARAMS + "top:\n  n: 5\n"}
    root = make_project(files)
    shown = run_pivot(root, "params", "show")
    assert shown.returncode == 0, describe(shown)
    rows = [line.split() for line in shown.stdout.splitlines()]
    for variant in ("sweep@s1", "sweep@s2"):  # each value with the file it was read from
        assert [variant, "train.lr", "0.25", "params.yaml"] in rows, shown.stdout
        assert [variant, "seed", "1", "params.yaml"] in rows, shown.stdout
        assert [variant, "other.yaml:a", '"x"', "other.yaml"] in rows, shown.stdout
    assert ["score", "(no", "params)"] in rows, shown.stdout
    if with_pipeline:
        assert ["top", "n", "5", "params.yaml"] in rows, shown.stdout
    as_json = json.loads(run_pivot(root, "params", "show", "--json", "sweep@s1").stdout)
    assert as_json["stages"]["sweep@s1"]["seed"] == {"value": 1, "source": "params.yaml"}, as_json

    dag = run_pivot(root, "dag", "--format", "json")
    assert dag.returncode == 0, describe(dag)
    assert ["sweep@s1", "score"] in json.loads(dag.stdout)["edges"], dag.stdout

    assert run_pivot(root, "repro", timeout=40).returncode == 0
    metrics = run_pivot(root, "metrics", "show")
    assert metrics.returncode == 0, describe(metrics)
    assert metrics.stdout.split() == ["score", "score.json", "acc", "0.5"], describe(metrics)


FROZEN = '''\
stages:
  fz:
    cmd: echo made > fz.txt
    outs: [fz.txt]
    frozen: true
  after:
    cmd: cat fz.txt > after.txt
    deps: [fz.txt]
    outs: [after.txt]
  clock:
    cmd: echo tick > clock.txt
    outs: [clock.txt]
    always_changed: true
'''


def test_a_frozen_stage_is_up_to_date_in_status_and_fails_when_its_output_is_missing_as_in_dvc(
    make_project: Callable[..., Path],
) -> None:
    root = make_project({"dvc.yaml": FROZEN})
    # Never run and its output missing: `dvc repro` fails it ("missing data"); so does Pivot.
    failed = run_pivot(root, "repro", "--json", "--keep-going", timeout=40)
    assert failed.returncode == 1, describe(failed)
    done = finished(parse_events(failed.stdout))
    assert done["fz"]["status"] == "failed" and done["fz"]["reason_code"] == "out_missing", done["fz"]
    assert "frozen and its output is missing: fz.txt" in done["fz"]["reason"], done["fz"]
    assert done["after"]["status"] == "blocked" and not (root / "fz.txt").exists()
    missing = run_pivot(root, "status")
    assert "fz: stale (frozen and its output is missing: fz.txt" in missing.stdout, describe(missing)
    assert run_pivot(root, "status", "-q").returncode == 1

    (root / "fz.txt").write_text("by hand\n")
    assert statuses(run_pivot(root, "repro", "--json", timeout=40)) == {"fz": "skipped", "after": "ran", "clock": "ran"}
    shown = run_pivot(root, "status", "fz", "after")
    assert shown.stdout.splitlines() == [
        "fz: up to date (frozen: never run)", "after: up to date", "everything is up to date",
    ], describe(shown)
    assert run_pivot(root, "status", "-q", "after").returncode == 0
    assert run_pivot(root, "status", "--check", "fz").returncode == 0
    as_json = json.loads(run_pivot(root, "status", "--json").stdout)["stages"]
    assert as_json["fz"]["stale"] is False and as_json["fz"]["reasons"][0]["code"] == "up_to_date", as_json
    assert (root / "fz.txt").read_text() == "by hand\n"


def test_an_always_changed_stage_is_not_shown_restorable_from_the_run_cache(make_project: Callable[..., Path]) -> None:
    root = make_project({"dvc.yaml": FROZEN, "fz.txt": "given\n"})
    assert run_pivot(root, "repro", timeout=40).returncode == 0
    shown = run_pivot(root, "status", "clock")
    assert shown.stdout.splitlines()[0] == "clock: stale (always_changed: it runs every time)", describe(shown)
    assert json.loads(run_pivot(root, "status", "--json", "clock").stdout)["stages"]["clock"]["restorable"] is False
    again = run_pivot(root, "repro", "--json", timeout=40)
    assert statuses(again)["clock"] == "ran", describe(again)  # as status said: run, not restored


def test_top_level_metrics_of_dvc_yaml_files_are_shown_and_diffed_as_dvc_does(make_project: Callable[..., Path]) -> None:
    root = make_project({
        "dvc.yaml": "metrics:\n  - eval/m.json\n  - own.yaml\nstages:\n  own:\n"
                    "    cmd: >-\n      echo 'loss: 2' > own.yaml\n    metrics: [own.yaml]\n",
        "sub/dvc.yaml": "metrics:\n  - s.yaml\n  - gone.json\n",
        "eval/m.json": '{"acc": 0.9, "n": {"x": 1}}', "sub/s.yaml": "f1: 0.5\n",
    })
    assert run_pivot(root, "repro", timeout=40).returncode == 0
    shown = run_pivot(root, "metrics", "show")
    assert shown.returncode == 0, describe(shown)
    assert [line.split() for line in shown.stdout.splitlines()] == [
        ["own", "own.yaml", "loss", "2"],  # listed at the top too: shown once, under its stage
        ["dvc.yaml", "eval/m.json", "acc", "0.9"],
        ["dvc.yaml", "eval/m.json", "n.x", "1"],
        ["sub/dvc.yaml", "sub/s.yaml", "f1", "0.5"],  # from its dvc.yaml's folder
        ["sub/dvc.yaml", "sub/gone.json", "(missing)"],
    ], describe(shown)
    as_json = json.loads(run_pivot(root, "metrics", "show", "--json").stdout)
    assert as_json["files"] == {"eval/m.json": {"acc": 0.9, "n": {"x": 1}}, "sub/s.yaml": {"f1": 0.5}}, as_json
    assert as_json["missing"] == [{"stage": None, "path": "sub/gone.json"}], as_json

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "m"]):
        subprocess.run([*git, *args], cwd=root, check=True, capture_output=True, timeout=30)
    (root / "eval" / "m.json").write_text('{"acc": 0.95, "n": {"x": 1}}')
    diff = run_pivot(root, "metrics", "diff", "--json")
    assert diff.returncode == 0, describe(diff)
    assert json.loads(diff.stdout) == {"eval/m.json": {"acc": {"old": 0.9, "new": 0.95, "diff": 0.05}}}, diff.stdout


AS_DVC = '''\
stages:
  bools:
    foreach: [true, false]
    do:
      cmd: echo ${item}
  mat:
    matrix:
      x: [true, null, 1.5, [1]]
      y: [y0]
    cmd: echo ${item.y}
  mixed:
    foreach: [a, {v: 1}]
    do:
      cmd: echo mixed
  fl:
    foreach: ${flags}
    do:
      cmd: echo ${item}
  fm:
    matrix:
      x: ${flags}
      y: [true]
    cmd: echo ${item.x}
  opts:
    vars: [p.toml, q.json]
    cmd: echo \\${HOME} ${train} ${lr} ${n} {a,b} > opts.txt
    params: [train, {p.toml: [lr]}]
    outs: [opts.txt]
'''


def test_variant_names_options_escapes_the_shell_and_toml_params_are_as_in_dvc(
    make_project: Callable[..., Path],
) -> None:
    # What `dvc stage list` and `dvc repro` give for the same file (DVC 3.67).
    root = make_project({
        "dvc.yaml": AS_DVC, "p.toml": "lr = 0.5\n", "q.json": '{"n": 3}',
        "params.yaml": "train:\n  lr: 0.1\n  verbose: true\n  quiet: false\n  layers: [1, 2]\n  opt:\n    name: adam\n"
                       "flags: [true, null]\n",
    })
    listed = run_pivot(root, "list")
    assert listed.returncode == 0, describe(listed)
    assert [line for line in listed.stdout.splitlines() if not line.startswith(" ")] == [
        "bools@true", "bools@false", "mat@true-y0", "mat@None-y0", "mat@1.5-y0", "mat@x3-y0", "mixed@0", "mixed@1",
        # Values a ${...} took from params.yaml are named by Python's str, as DVC names them.
        "fl@True", "fl@None", "fm@True-true", "fm@None-true", "opts",
    ]
    ran = subprocess.run([*pivot_cmd(), "repro", "opts"], cwd=root, capture_output=True, text=True, timeout=40,
                         env={**os.environ, "SHELL": "/bin/bash"}, stdin=subprocess.DEVNULL)
    assert ran.returncode == 0, describe(ran)
    assert (root / "opts.txt").read_text() == \
        f"{os.environ['HOME']} --lr 0.1 --verbose --layers 1 2 --opt.name adam 0.5 3 a b\n"  # bash's {a,b}
    shown = [line.split() for line in run_pivot(root, "params", "show", "opts").stdout.splitlines()]
    assert ["opts", "p.toml:lr", "0.5", "p.toml"] in shown, shown


FIT_WITH_HELPER = '''\
import os
import sys

from util import scale  # src/util.py: not a declared dep

degree, lr, source, out = sys.argv[1:5]
os.makedirs(os.path.dirname(out), exist_ok=True)
warm = "pivot.runtime.warm" in sys.modules  # forked from Pivot's worker, not a new interpreter
open(out, "w").write(f"degree={degree} scaled={scale(float(lr))} warm={warm}\\n")
'''


def test_a_dvc_projects_scripts_are_compared_by_their_code_and_an_edit_reruns_them_warm_live(
    make_project: Callable[..., Path], up: Callable[..., LiveRun],
) -> None:
    """Issue 13's tests: a comment-only script edit runs nothing, an edit of a module the
    script imports (not declared) runs it, and `pivot up` runs an edited script warm."""
    import sys

    files = {**FILES, "src/fit.py": FIT_WITH_HELPER, "src/util.py": "def scale(x):\n    return x * 2\n"}
    root = make_project(files)
    # `python` in the commands is this interpreter, so the scripts can run warm.
    env = {**os.environ, "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}

    def repro() -> dict[str, str]:
        done = subprocess.run([*pivot_cmd(), "repro", "--json"], cwd=root, capture_output=True, text=True,
                              timeout=60, env=env, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, describe(done)
        return statuses(done)

    assert repro() == dict.fromkeys(STAGES, "ran")
    assert (root / "models" / "linear.txt").read_text() == "degree=1 scaled=1.0 warm=True\n"
    (root / "src" / "fit.py").write_text("# a comment only\n" + FIT_WITH_HELPER.replace("import os", "import os  # os"))
    assert repro() == dict.fromkeys(STAGES, "skipped")
    (root / "src" / "util.py").write_text("def scale(x):\n    return x * 3\n")
    ran = repro()
    assert ran["prepare"] == "skipped" and ran["fit@linear"] == ran["fit@quadratic"] == "ran", ran
    assert (root / "models" / "linear.txt").read_text() == "degree=1 scaled=1.5 warm=True\n"

    live = up(root, env=env)
    live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "the first wave")
    mark = live.mark()
    (root / "src" / "fit.py").write_text(FIT_WITH_HELPER.replace("degree={degree}", "degree:{degree}"))
    done = live.wait_event(lambda e: e["event"] == "wave_finished" and "fit@linear" in e["ran"], WAIT_S,
                           "the wave the script edit starts", mark)
    assert "prepare" not in done["ran"], done
    assert (root / "models" / "linear.txt").read_text() == "degree:1 scaled=1.5 warm=True\n"
