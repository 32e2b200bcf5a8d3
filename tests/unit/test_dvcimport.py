"""Unit tests for pivot/pipeline/dvcimport.py (`pivot import-dvc`'s text): which `${...}`
of a cmd stay symbolic (those DVC resolves from the default params file) and which are
written out, the params they add, and the names a stage below the root gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from pivot.errors import PipelineError
from pivot.launch.spawn import run_loader
from pivot.pipeline.dvcimport import pipeline_name, render, verify

DVC_YAML = '''\
vars:
  - params.yaml:lr
  - extra.yaml
  - size: 3
stages:
  a:
    cmd: run ${lr} ${size} ${extra_key} ${section.k}
  b:
    vars:
      - section:
          k: local
    cmd: run ${section.k} ${lr}
  c:
    foreach: [1, 2]
    do:
      cmd: run ${item} ${lr}
  d:
    cmd: run ${lr} ${section.k}
    params:
      - lr
      - section
  e:
    wdir: w
    cmd: run ${lr} ${section.k}
    params:
      - ../extra.yaml:
'''
PARAMS = "lr: 0.1\nsection:\n  k: v\nitem: shadowed\n"


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def calls(text: str) -> dict[str, str]:
    """Each stage(...) call of the text by its name."""
    found = {}
    for chunk in text.split("stage(\n")[1:]:
        body = chunk.split("\n)")[0]
        found[body.split('name="')[1].split('"')[0]] = body
    return found


def test_params_yaml_references_stay_and_join_the_params_others_are_written_out(tmp_path: Path) -> None:
    root = write(tmp_path, {"dvc.yaml": DVC_YAML, "params.yaml": PARAMS, "extra.yaml": "extra_key: x\n", "w/.keep": ""})
    done = render(root)
    verify(done, root)  # stage() takes every call as written
    got = calls(done.text)
    # From params.yaml (vars absent or `params.yaml:KEY`): kept; inline vars and other files: text.
    assert '    cmd="run ${lr} 3 x ${section.k}",\n    params=["lr", "section.k"],' in got["a"]
    # A stage's own vars hide params.yaml's `section`.
    assert '    cmd="run local ${lr}",\n    params=["lr"],' in got["b"]
    # The foreach item wins over params.yaml's `item`.
    assert '    cmd="run 2 ${lr}",\n    params=["lr"],' in got["c@2"]
    # Keys it already reads (a whole section gives its keys) add nothing.
    assert '    params=["lr", "section"],' in got["d"]
    # With a wdir, the default params file is found from it: the root's is named.
    assert ('    params=[{"../extra.yaml": []}, {"../params.yaml": ["lr", "section.k"]}],\n    wdir="w",'
            in got["e"])
    assert done.stages == ("a", "b", "c@1", "c@2", "d", "e") and done.renamed == ()
    assert done.rerun == ()  # a dvc.yaml stage reads its ${lr} when it runs too: the same lock


def test_a_stage_below_the_root_is_renamed_and_names_its_params_file(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "dvc.yaml": "stages:\n  top:\n    cmd: echo top\n",
        "sub/deep/dvc.yaml": "stages:\n  t:\n    cmd: echo ${n}\n", "sub/deep/params.yaml": "n: 1\n",
    })
    done = render(root)
    assert done.renamed == (("sub/deep/dvc.yaml:t", "sub.deep.t"),)
    assert done.rerun == ("sub.deep.t",)
    assert '    cmd="echo ${sub/deep/params.yaml:n}",\n    params=["n"],\n    wdir="sub/deep",' in calls(done.text)["sub.deep.t"]


@pytest.mark.parametrize(("dvc_name", "file", "name"), [
    ("train", "dvc.yaml", "train"),
    ("sub/dvc.yaml:train", "sub/dvc.yaml", "sub.train"),
    ("a/b/dvc.yaml:fit@x", "a/b/dvc.yaml", "a.b.fit@x"),
    ("my dir/dvc.yaml:t", "my dir/dvc.yaml", "my_dir.t"),
    ("fit@a b", "dvc.yaml", "fit@a_b"),
    (".hidden/dvc.yaml:t", ".hidden/dvc.yaml", "_.hidden.t"),
])
def test_pipeline_names(dvc_name: str, file: str, name: str) -> None:
    assert pipeline_name(dvc_name, file) == name


def test_a_stage_reading_no_params_keeps_its_params_yaml_section_a_dvc_section(tmp_path: Path) -> None:
    root = write(tmp_path, {"dvc.yaml": "stages:\n  make:\n    cmd: echo hi > out.txt\n    outs: [out.txt]\n",
                            "params.yaml": "make:\n  size: 3\n"})
    done = render(root)
    assert calls(done.text)["make"].endswith('    outs=["out.txt"],\n    params=[],')
    (root / "pipeline.py").write_text(done.text)
    (root / "dvc.yaml").rename(root / "dvc.yaml.bak")
    manifest = run_loader(root, timeout=30)  # not "params.yaml: stage 'make' has no param 'size'"
    assert manifest.by_name["make"].params == {} and manifest.warnings == ()


def test_a_refused_dvc_yaml_is_refused_with_the_loaders_error(tmp_path: Path) -> None:
    root = write(tmp_path, {"dvc.yaml": "stages:\n  a:\n    cmd: echo ${nope}\n"})
    with pytest.raises(PipelineError, match=r"dvc.yaml: stage 'a': \$\{nope\}: no such key 'nope'"):
        render(root)
