"""Unit tests for the pipeline loader, run the real way: `run_loader` starts a fresh
interpreter (pivot.runtime.loader) that imports the tiny project written to tmp_path.
"""

from __future__ import annotations

import pickle
import re
import textwrap
from pathlib import Path

import pytest
import xxhash

import pivot
from pivot.errors import InfraError, PipelineError
from pivot.launch.spawn import _answer, run_loader
from pivot.pipeline.manifest import Manifest

PIVOT_PKG_DIR = str(Path(pivot.__file__).resolve().parent)

# Generous for a ~0.2 s load; only reached when something hangs.
TIMEOUT = 30.0


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def load(root: Path) -> Manifest:
    return run_loader(root, timeout=TIMEOUT)


def load_error(root: Path) -> PipelineError:
    with pytest.raises(PipelineError) as info:
        load(root)
    return info.value


def frame_files(detail: str) -> list[str]:
    return re.findall(r'File "([^"]+)", line \d+', detail)


def assert_no_pivot_frames(detail: str) -> None:
    assert "/pivot/" not in detail
    assert PIVOT_PKG_DIR not in detail
    assert "pivot/runtime/loader.py" not in detail


VALID = {
    "pipeline.py": """
        import helpers

        from pivot import stage

        print("pipeline module says hello")  # user output must not disturb loading


        @stage(deps=["./data/raw.csv", "data/raw.csv"], outs=["data//clean.csv"])
        def prepare(threshold: float = 0.5, columns: tuple = ("a", "b")) -> None:
            helpers.clean(threshold)


        def train(size: str = "small", lr: float = 0.1, epochs: int = 10) -> None:
            helpers.fit(size, lr, epochs)


        stage(
            name="train@small",
            params={"size": "small", "epochs": 2},
            deps=["data/clean.csv"],
            outs=["models/small/"],
            metrics=["./metrics/small.json"],
        )(train)
        """,
    "helpers.py": """
        def clean(threshold):
            return threshold


        def fit(size, lr, epochs):
            return size, lr, epochs
        """,
    "params.yaml": """
        prepare:
          threshold: 1
        train@small:
          lr: 0.2
        """,
}


def test_valid_pipeline(tmp_path: Path) -> None:
    m = load(write(tmp_path, VALID))
    assert isinstance(m, Manifest)
    assert [s.name for s in m.stages] == ["prepare", "train@small"]
    assert m.warnings == ()
    assert set(m.by_name) == {"prepare", "train@small"}

    prepare = m.by_name["prepare"]
    assert prepare.module == "pipeline"
    assert prepare.func == "pipeline.prepare"
    assert prepare.deps == ("data/raw.csv",)  # normalized and de-duplicated
    assert prepare.outs == ("data/clean.csv",)
    assert prepare.metrics == ()
    assert prepare.params == {"threshold": 1.0, "columns": ["a", "b"]}
    assert type(prepare.params["threshold"]) is float
    assert prepare.fingerprint

    train = m.by_name["train@small"]
    assert train.module == "pipeline"
    assert train.func == "pipeline.train"
    assert train.deps == ("data/clean.csv",)
    assert train.outs == ("models/small/", "metrics/small.json")
    assert train.metrics == ("metrics/small.json",)
    assert train.params == {"size": "small", "lr": 0.2, "epochs": 2}
    assert train.fingerprint and train.fingerprint != prepare.fingerprint


def test_sources_list_project_modules(tmp_path: Path) -> None:
    write(tmp_path, VALID)
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text("import pkg.sub\n" + pipeline.read_text())
    write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub.py": "VALUE = 1\n",
            "unused.py": "raise RuntimeError('never imported')\n",
        },
    )
    m = load(tmp_path)
    assert m.sources == ("helpers.py", "pipeline.py", "pkg/__init__.py", "pkg/sub.py")


SAVED_DURING_LOAD = {
    "helpers.py": """
        def scale(x):
            return x * 2
    """,
    # A save landing between the loader's import and its fingerprint, made by the
    # pipeline itself so that it always lands there.
    "pipeline.py": """
        from pathlib import Path

        import helpers

        from pivot import stage

        Path("helpers.py").write_text("def scale(x):\\n    return x * 3\\n")


        @stage(outs=["out.txt"])
        def use() -> None:
            Path("out.txt").write_text(str(helpers.scale(1)))
    """,
}


def test_a_save_during_the_load_leaves_the_fingerprint_of_the_code_imported(tmp_path: Path) -> None:
    root = write(tmp_path, SAVED_DURING_LOAD)
    imported = (root / "helpers.py").read_bytes()
    spec = load(root).by_name["use"]
    assert (root / "helpers.py").read_bytes() != imported  # (the save happened)
    # The loader's code is the version it imported: so is its fingerprint (the worker's
    # check then finds the file changed, and the broker loads again).
    assert spec.code_sources["helpers.py"] == xxhash.xxh3_128_hexdigest(imported)
    (root / "helpers.py").write_bytes(imported)
    (root / "pipeline.py").write_text((root / "pipeline.py").read_text().replace(
        'Path("helpers.py").write_text', "(lambda _: None)"))
    assert load(root).by_name["use"].code_parts == spec.code_parts


def test_a_damaged_answer_of_a_forked_loader_is_an_infra_error() -> None:
    """A forked loader answers in a pickle: one cut short (a full disk) is said as such,
    not taken for a manifest nor raised as pickle's own error."""
    whole = pickle.dumps({"ok": True, "manifest": {"stages": ["s"] * 50}}, protocol=pickle.HIGHEST_PROTOCOL)
    assert _answer(whole, 0, "", pickled=True)["manifest"] == {"stages": ["s"] * 50}
    for cut in (whole[:-1], whole[: len(whole) // 2], b"\x80\x05"):
        with pytest.raises(InfraError, match="unreadable answer from the pipeline loader"):
            _answer(cut, 0, "", pickled=True)


def test_loading_is_repeatable(tmp_path: Path) -> None:
    root = write(tmp_path, VALID)
    assert load(root) == load(root)


def test_syntax_error_shows_user_file_and_line(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pipeline.py": """
                from pivot import stage


                @stage(outs=["a.txt"])
                def broken(:
                    pass
                """
        },
    )
    err = load_error(tmp_path)
    assert "pipeline.py failed to import: SyntaxError" in str(err)
    assert "line 5" in str(err)
    assert 'pipeline.py", line 5' in err.detail
    assert "def broken(:" in err.detail
    assert err.detail.rstrip().endswith("SyntaxError: invalid syntax")
    assert_no_pivot_frames(err.detail)


def test_syntax_error_detail_has_only_user_frames(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": "x = (\n"})
    err = load_error(tmp_path)
    root = str(tmp_path.resolve())
    files = frame_files(err.detail)
    assert files
    assert all(f.startswith(root) for f in files), files


def test_import_error_in_helper_shows_user_traceback(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pipeline.py": """
                from pivot import stage

                import helper


                @stage()
                def s() -> None:
                    pass
                """,
            "helper.py": """
                VALUE = 1


                raise ImportError("helper needs the optional 'fancy' package")
                """,
        },
    )
    err = load_error(tmp_path)
    assert str(err) == (
        "pipeline.py failed to import: ImportError: helper needs the optional 'fancy' package"
    )
    assert err.detail.startswith("Traceback (most recent call last):")
    assert 'pipeline.py", line 3, in <module>' in err.detail
    assert "import helper" in err.detail
    assert 'helper.py", line 4, in <module>' in err.detail
    assert err.detail.rstrip().endswith("ImportError: helper needs the optional 'fancy' package")
    assert_no_pivot_frames(err.detail)


def test_missing_module_import(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": "import no_such_module_for_pivot_tests\n"})
    err = load_error(tmp_path)
    assert "ModuleNotFoundError" in str(err)
    assert "no_such_module_for_pivot_tests" in str(err)
    assert_no_pivot_frames(err.detail)


def test_exception_and_exit_at_import_are_pipeline_errors(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": "import sys\nsys.exit(3)\n"})
    err = load_error(tmp_path)
    assert "SystemExit" in str(err)


def test_no_stages_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": "from pivot import stage\n\nX = 1\n"})
    err = load_error(tmp_path)
    assert "declares no stages" in str(err)
    assert "@stage" in str(err)


def test_registration_error_surfaces_with_its_message(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pipeline.py": """
                from pivot import stage


                @stage(deps="data.csv")
                def s() -> None:
                    pass
                """
        },
    )
    err = load_error(tmp_path)
    assert "deps must be a list of paths, not the string 'data.csv'" in str(err)


def test_bad_path_is_an_error_naming_stage(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pipeline.py": """
                from pivot import stage


                @stage(outs=["../outside.txt"])
                def s() -> None:
                    pass
                """
        },
    )
    err = load_error(tmp_path)
    assert "stage 's': outs path '../outside.txt' points outside the project root" in str(err)


def test_unknown_stage_in_params_yaml_is_a_warning(tmp_path: Path) -> None:
    files = dict(VALID)
    files["params.yaml"] = "ghost:\n  lr: 1\nprepare:\n  threshold: 0.7\n"
    m = load(write(tmp_path, files))
    assert m.by_name["prepare"].params["threshold"] == 0.7
    assert len(m.warnings) == 1
    assert "params.yaml" in m.warnings[0]
    assert "'ghost'" in m.warnings[0]


def test_wrong_type_in_params_yaml_is_an_error(tmp_path: Path) -> None:
    files = dict(VALID)
    files["params.yaml"] = "train@small:\n  epochs: many\n"
    err = load_error(write(tmp_path, files))
    msg = str(err)
    assert "params.yaml" in msg
    assert "stage 'train@small'" in msg
    assert "param 'epochs'" in msg
    assert "expects int" in msg
    assert "got str 'many'" in msg


def test_param_without_default_is_an_error(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pipeline.py": """
                from pivot import stage


                @stage()
                def s(data) -> None:
                    pass
                """
        },
    )
    err = load_error(tmp_path)
    assert "stage 's': parameter 'data'" in str(err)


def test_user_modules_named_like_pivot_packages(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pipeline.py": """
                import broker
                import workers

                from pivot import stage


                @stage(outs=["out.txt"])
                def s(n: int = workers.N + broker.M, where: str = workers.WHO + broker.WHO) -> None:
                    pass
                """,
            "workers.py": "N = 1\nWHO = 'user-workers;'\n",
            "broker.py": "M = 2\nWHO = 'user-broker'\n",
        },
    )
    m = load(tmp_path)
    assert m.by_name["s"].params == {"n": 3, "where": "user-workers;user-broker"}
    assert m.sources == ("broker.py", "pipeline.py", "workers.py")


def test_large_manifest_loads(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pipeline.py": """
                from pivot import stage


                @stage(outs=["out.txt"])
                def big(blob: str = "x" * 100_000) -> None:
                    pass
                """
        },
    )
    # Normal loads take ~0.2 s; keep the expected failure (a timeout) short.
    m = run_loader(tmp_path, timeout=1.0)
    assert len(m.by_name["big"].params["blob"]) == 100_000


def test_user_module_named_pivot_does_not_shadow_pivot(tmp_path: Path) -> None:
    # The loader runs with the project as its cwd; `python -P` keeps the cwd off sys.path,
    # so this file must not replace Pivot's own package.
    write(
        tmp_path,
        {
            "pivot.py": "raise RuntimeError('user pivot.py must not be imported by Pivot')\n",
            "pipeline.py": """
                from pivot import stage


                @stage(outs=["out.txt"])
                def s() -> None:
                    pass
                """,
        },
    )
    m = load(tmp_path)
    assert [s.name for s in m.stages] == ["s"]
    assert "pivot.py" not in m.sources
