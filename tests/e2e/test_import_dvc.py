"""`pivot import-dvc` (issue 13, point 5): a DVC project's dvc.yaml files written as an
equivalent pipeline.py of command stages. Once dvc.yaml is moved away, `pivot repro`
makes the same outputs byte for byte; a params.yaml key a command reads through `${...}`
runs that stage again with the new value; nothing is overwritten without --force."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from procs import describe, finished, parse_events, run_pivot

pytestmark = pytest.mark.timeout(90)

DVC_YAML = '''\
vars:
  - config.yaml
  - tag: v1
stages:
  prepare:
    desc: Keep the first rows of the raw data
    cmd: python src/prepare.py data/raw.csv data/clean ${prepare.min_rows} ${tag}
    deps:
      - src/prepare.py
      - data/raw.csv
    params:
      - prepare.min_rows
    outs:
      - data/clean
  fit:
    foreach:
      linear: 1
      quadratic: 2
    do:
      cmd: python src/fit.py ${item} ${train.lr} data/clean models/${key}.txt
      deps:
        - src/fit.py
        - data/clean
      params:
        - train
      outs:
        - models/${key}.txt
  report:
    matrix:
      model: [linear, quadratic]
    wdir: reports
    cmd: echo "${name}" > ${item.model}.txt && cat ../models/${item.model}.txt >> ${item.model}.txt
    deps:
      - ../models/${item.model}.txt
    params:
      - ../other.yaml:
          - scale
    metrics:
      - ${item.model}.txt:
          cache: false
  summary:
    cmd: python src/summary.py ${evaluate.threshold} ${tag}
    deps:
      - src/summary.py
      - reports/linear.txt
      - reports/quadratic.txt
    outs:
      - history.log:
          persist: true
    metrics:
      - summary.json
'''

SUB_DVC = '''\
stages:
  count:
    wdir: work
    vars:
      - label: counted
    cmd: python ../count.py ${n} ${label} > counted.txt
    deps:
      - ../count.py
    outs:
      - counted.txt
'''

PREPARE = '''\
import os
import sys

raw, out, n, tag = sys.argv[1:5]
rows = open(raw).read().split()[: int(n)]
os.makedirs(out, exist_ok=True)
for i, row in enumerate(rows):
    open(os.path.join(out, f"{i}.txt"), "w").write(f"{row} {tag}\\n")
print("kept", len(rows))
'''

FIT = '''\
import os
import sys

degree, lr, source, out = sys.argv[1:5]
os.makedirs(os.path.dirname(out), exist_ok=True)
open(out, "w").write(f"degree={degree} lr={lr} rows={len(os.listdir(source))}\\n")
'''

SUMMARY = '''\
import importlib.util
import json
import shlex
import subprocess
import sys
import sys

threshold, tag = sys.argv[1:3]
reports = [open(f"reports/{m}.txt").read() for m in ("linear", "quadratic")]
json.dump({"threshold": float(threshold), "tag": tag, "lines": sum(len(r.split()) for r in reports)},
          open("summary.json", "w"), sort_keys=True)
open("history.log", "a").write(f"threshold={threshold}\\n")
print("threshold", threshold)
'''

# `seed` and `fits` no stage reads by key (as vars and foreach read such values): after the
# import no warning may call them typos of stage names.
PARAMS = "prepare:\n  min_rows: 2\ntrain:\n  lr: 0.5\n  epochs: 3\nevaluate:\n  threshold: 0.3\nseed: 7\nfits: [a]\n"

FILES = {
    "dvc.yaml": DVC_YAML, "params.yaml": PARAMS, "other.yaml": "scale: 10\n", "config.yaml": "name: demo\n",
    "data/raw.csv": "a\nb\nc\n", "src/prepare.py": PREPARE, "src/fit.py": FIT, "src/summary.py": SUMMARY,
    "reports/.keep": "", "sub/dvc.yaml": SUB_DVC, "sub/params.yaml": "n: 3\n", "sub/work/.keep": "",
    "sub/count.py": "import sys\n\nprint(sys.argv[2], *range(int(sys.argv[1])))\n",
}
DVC_STAGES = ["prepare", "fit@linear", "fit@quadratic", "report@linear", "report@quadratic", "summary",
              "sub/dvc.yaml:count"]
STAGES = [*DVC_STAGES[:-1], "sub.count"]
# Renamed, or a command that now reads ${...} when it runs: the stages whose locks differ.
RERUN = ["sub.count"]  # renamed; a ${...} in a cmd is read when it runs under dvc.yaml too
NOT_OUTPUTS = {"pipeline.py", "dvc.yaml", "dvc.yaml.bak", "sub/dvc.yaml", "sub/dvc.yaml.bak"}


def statuses(result: object) -> dict[str, str]:
    return {s: e["status"] for s, e in finished(parse_events(result.stdout)).items()}  # type: ignore[attr-defined]


def tree(root: Path) -> dict[str, bytes]:
    """Every file of the project but Pivot's state, by path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".pivot" not in p.relative_to(root).parts}


def imported(root: Path) -> str:
    """`pivot import-dvc` in ROOT, then dvc.yaml moved away as it says; its output."""
    before = tree(root)
    result = run_pivot(root, "import-dvc")
    assert result.returncode == 0, describe(result)
    after = tree(root)
    assert set(after) - set(before) == {"pipeline.py"}, sorted(set(after) - set(before))
    assert {k: v for k, v in after.items() if k != "pipeline.py"} == before  # params.yaml, dvc.yaml untouched
    assert "    mv dvc.yaml dvc.yaml.bak\n" in result.stdout, result.stdout  # not in git: plain mv
    follow_moves(root, result.stdout)
    assert not (root / "dvc.yaml").exists()
    return result.stdout


def follow_moves(root: Path, said: str) -> list[list[str]]:
    """Run the `mv`/`git mv` lines `pivot import-dvc` printed as its next step, in ROOT."""
    moves = [shlex.split(line) for line in said.splitlines() if line.startswith(("    mv ", "    git mv "))]
    for move in moves:
        subprocess.run(move, cwd=root, check=True, capture_output=True, timeout=30)
    return moves


def test_dry_run_prints_the_pipeline_and_writes_nothing(make_project: Callable[..., Path]) -> None:
    root = make_project(FILES)
    before = tree(root)
    result = run_pivot(root, "import-dvc", "--dry-run")
    assert result.returncode == 0, describe(result)
    assert tree(root) == before and not (root / ".pivot").exists()
    text = result.stdout
    compile(text, "pipeline.py", "exec")
    if importlib.util.find_spec("ruff") is not None:  # written as ruff format writes it
        formatted = subprocess.run([sys.executable, "-m", "ruff", "format", "--isolated", "-"], input=text,
                                   capture_output=True, text=True, timeout=30)
        assert formatted.returncode == 0 and formatted.stdout == text, formatted.stderr
    assert text.startswith("# Generated by `pivot import-dvc` from dvc.yaml, sub/dvc.yaml:"), text
    assert "\nfrom pivot import stage\n" in text and "git mv dvc.yaml dvc.yaml.bak" in text
    assert "renamed: sub/dvc.yaml:count -> sub.count" in result.stderr, describe(result)
    # params.yaml's ${...} stay (and join the params); vars, vars files and items are text.
    assert '# Keep the first rows of the raw data\nstage(\n    name="prepare",\n' in text
    assert 'cmd="python src/prepare.py data/raw.csv data/clean ${prepare.min_rows} v1",' in text
    assert 'cmd="python src/fit.py 2 ${train.lr} data/clean models/quadratic.txt",' in text
    assert text.count('params=["train"],') == 2  # a whole section gives ${train.lr}: nothing added
    assert 'cmd=\'echo "demo" > linear.txt && cat ../models/linear.txt >> linear.txt\',' in text
    assert 'params=[{"../other.yaml": ["scale"]}],\n    wdir="reports",\n    uncached=["reports/linear.txt"],' in text
    assert ('cmd="python src/summary.py ${evaluate.threshold} v1",\n'
            '    deps=["src/summary.py", "reports/linear.txt", "reports/quadratic.txt"],\n'
            '    outs=["history.log"],\n    metrics=["summary.json"],\n'
            '    params=["evaluate.threshold"],\n    persist=["history.log"],\n)') in text
    # Below the root: its params.yaml key is named by its file.
    assert ('name="sub.count",\n    cmd="python ../count.py ${sub/params.yaml:n} counted > counted.txt",\n'
            '    deps=["sub/count.py"],\n    outs=["sub/work/counted.txt"],\n'
            '    params=[{"../params.yaml": ["n"]}],\n    wdir="sub/work",\n)') in text


def test_the_imported_pipeline_makes_the_same_outputs_and_reruns_on_a_params_edit(
    make_project: Callable[..., Path],
) -> None:
    original, moved = make_project(FILES, name="original"), make_project(FILES, name="imported")
    said = imported(moved)
    assert f"wrote {moved / 'pipeline.py'}: 7 stages from dvc.yaml, sub/dvc.yaml" in said, said
    assert "renamed: sub/dvc.yaml:count -> sub.count" in said, said
    listed = run_pivot(moved, "list")
    assert listed.returncode == 0 and "warning" not in listed.stderr.lower(), describe(listed)
    assert [line for line in listed.stdout.splitlines() if not line.startswith(" ")] == STAGES

    first, reference = run_pivot(moved, "repro", "--json", timeout=60), run_pivot(original, "repro", "--json", timeout=60)
    assert first.returncode == 0 and reference.returncode == 0, describe(first) + describe(reference)
    assert statuses(first) == dict.fromkeys(STAGES, "ran") and statuses(reference) == dict.fromkeys(DVC_STAGES, "ran")
    outputs = {k: v for k, v in tree(moved).items() if k not in NOT_OUTPUTS}
    assert outputs == {k: v for k, v in tree(original).items() if k not in NOT_OUTPUTS}
    assert outputs["sub/work/counted.txt"] == b"counted 0 1 2\n" and outputs["data/clean/1.txt"] == b"b v1\n"

    assert statuses(run_pivot(moved, "repro", "--json", timeout=60)) == dict.fromkeys(STAGES, "skipped")

    # A key only summary's command reads, through ${evaluate.threshold}: it alone runs, with it.
    (moved / "params.yaml").write_text(PARAMS.replace("0.3", "0.9"))
    edited = run_pivot(moved, "repro", "--json", timeout=60)
    assert statuses(edited) == {**dict.fromkeys(STAGES, "skipped"), "summary": "ran"}, describe(edited)
    assert json.loads((moved / "summary.json").read_text())["threshold"] == 0.9
    assert (moved / "history.log").read_text() == "threshold=0.3\nthreshold=0.9\n"  # persist: kept, appended


def test_after_a_dvc_run_only_the_renamed_stages_are_new_and_come_from_the_run_cache(make_project: Callable[..., Path]) -> None:
    root = make_project(FILES)
    assert statuses(run_pivot(root, "repro", "--json", timeout=60)) == dict.fromkeys(DVC_STAGES, "ran")
    said = imported(root)
    announced = said.split("these stages have a new name", 1)[1].split("or runs them: ", 1)[1].strip().split(", ")
    assert announced == RERUN, said
    again = run_pivot(root, "repro", "--json", timeout=60)
    assert again.returncode == 0, describe(again)
    assert statuses(again) == {s: "restored" if s in RERUN else "skipped" for s in STAGES}  # from the run cache


def test_an_existing_pipeline_py_is_replaced_only_with_force(make_project: Callable[..., Path]) -> None:
    root = make_project({**FILES, "pipeline.py": "# mine\n"})
    refused = run_pivot(root, "import-dvc")
    assert refused.returncode == 2, describe(refused)
    assert refused.stderr.count("\n") == 1 and "pipeline.py exists" in refused.stderr, describe(refused)
    assert "--force" in refused.stderr and (root / "pipeline.py").read_text() == "# mine\n"
    forced = run_pivot(root, "import-dvc", "--force")
    assert forced.returncode == 0, describe(forced)
    assert (root / "pipeline.py").read_text().startswith("# Generated by `pivot import-dvc`")


@pytest.mark.parametrize(("files", "says"), [
    ({"pipeline.py": "from pivot import stage\n\nstage(name='a', cmd='true')\n"}, "no dvc.yaml in "),
    ({**FILES, "dvc.yaml": DVC_YAML.replace("    deps:\n      - src/prepare.py", "    depz:\n      - src/prepare.py")},
     "dvc.yaml: stage 'prepare': unknown key 'depz'"),
    ({**FILES, "dvc.yaml": DVC_YAML.replace("  summary:", "  sub.count:")},
     "stage 'sub/dvc.yaml:count' and stage 'sub.count' would both be named 'sub.count' in pipeline.py"),
])
def test_what_cannot_be_imported_is_an_error_and_nothing_is_written(
    make_project: Callable[..., Path], files: dict[str, str], says: str,
) -> None:
    root = make_project(files)
    before = tree(root)
    result = run_pivot(root, "import-dvc")
    assert result.returncode == 2, describe(result)
    assert says in result.stderr and "Traceback" not in result.stderr, describe(result)
    assert tree(root) == before


def test_the_command_explains_itself(tmp_path: Path) -> None:
    result = run_pivot(tmp_path, "import-dvc", "--help")
    assert result.returncode == 0, describe(result)
    assert "--dry-run" in result.stdout and "--force" in result.stdout and "git mv dvc.yaml" in result.stdout


def test_in_git_every_dvc_yaml_is_moved_as_printed_and_pivot_repro_then_runs(make_project: Callable[..., Path]) -> None:
    # Below a pipeline.py, Pivot reads the dvc.yaml files git knows: each one must be moved.
    root = make_project(FILES)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "dvc"]):
        subprocess.run([*git, *args], cwd=root, check=True, capture_output=True, timeout=30)
    result = run_pivot(root, "import-dvc")
    assert result.returncode == 0, describe(result)
    moves = follow_moves(root, result.stdout)
    assert moves == [["git", "mv", f, f"{f}.bak"] for f in ("dvc.yaml", "sub/dvc.yaml")], result.stdout
    header = (root / "pipeline.py").read_text().split("\nfrom pivot import stage", 1)[0].replace("\n# ", " ")
    assert "`git mv dvc.yaml dvc.yaml.bak`, `git mv sub/dvc.yaml sub/dvc.yaml.bak`" in header, header
    ran = run_pivot(root, "repro", "--json", timeout=60)
    assert ran.returncode == 0, describe(ran)
    assert statuses(ran) == dict.fromkeys(STAGES, "ran")


def test_top_level_metrics_become_their_stages_metrics_and_the_rest_are_said(make_project: Callable[..., Path]) -> None:
    root = make_project({
        "dvc.yaml": "metrics: [score.json, elsewhere.json]\nstages:\n  score:\n"
                    "    cmd: printf '{\"acc\"%s0.9}' ':' > score.json\n    outs: [score.json]\n",
    })
    before = run_pivot(root, "metrics", "show", "--json")
    assert before.returncode == 0 and "score.json" in before.stdout, describe(before)
    result = run_pivot(root, "import-dvc")
    assert result.returncode == 0, describe(result)
    assert "warning: elsewhere.json: top-level metrics no stage writes" in result.stderr, describe(result)
    follow_moves(root, result.stdout)
    ran = run_pivot(root, "repro", timeout=60)
    assert ran.returncode == 0, describe(ran)
    shown = run_pivot(root, "metrics", "show")
    assert shown.returncode == 0 and "score.json" in shown.stdout and "0.9" in shown.stdout, describe(shown)
