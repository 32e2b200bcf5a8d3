"""A script's code (pivot/state/scripts.py): its own and its project modules' ASTs, and
the modules it imports from outside the project (what a warm worker preloads)."""

from __future__ import annotations

from pathlib import Path

from pivot.state.scripts import script_code


def test_a_scripts_outside_imports_are_its_externals_and_its_project_imports_its_parts(tmp_path: Path) -> None:
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "train.py").write_text(
        "import os, json\nimport numpy as np\nfrom sklearn.linear_model import Ridge\nimport helper\nfrom pkg import util\n"
    )
    (tmp_path / "src" / "helper.py").write_text("import pandas\n")
    (tmp_path / "src" / "pkg" / "__init__.py").write_text("")
    (tmp_path / "src" / "pkg" / "util.py").write_text("from . import helper2\nimport torch.nn\n")
    (tmp_path / "src" / "pkg" / "helper2.py").write_text("X = 1\n")
    code = script_code("python src/train.py --lr 1", tmp_path, tmp_path)
    assert code is not None
    assert sorted(code.parts) == ["src/helper.py", "src/pkg/__init__.py", "src/pkg/helper2.py", "src/pkg/util.py",
                                  "src/train.py"]
    assert code.externals == {"os", "json", "numpy", "sklearn", "pandas", "torch"}


def test_a_scripts_pieces_are_its_module_statements_and_each_top_level_def(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    source = "import sys\n\n\ndef main():\n    return 1\n\n\nclass Model:\n    x = 1\n\n\nmain()\n"
    script.write_text(source)
    before = script_code("python train.py", tmp_path, tmp_path)
    assert before is not None and sorted(before.parts) == ["train.py", "train.py:Model", "train.py:main"]
    script.write_text(source.replace("    return 1", "    # a comment\n    return 1  # another"))
    assert script_code("python train.py", tmp_path, tmp_path).parts == before.parts  # type: ignore[union-attr]
    script.write_text(source.replace("return 1", "return 2"))
    after = script_code("python train.py", tmp_path, tmp_path)
    assert after is not None
    assert [k for k in before.parts if before.parts[k] != after.parts[k]] == ["train.py:main"]
    script.write_text(source.replace("main()\n", "main()\nprint(sys.argv)\n"))
    moved = script_code("python train.py", tmp_path, tmp_path)
    assert moved is not None and [k for k in before.parts if before.parts[k] != moved.parts[k]] == ["train.py"]


def test_python_dash_m_counts_the_packages_python_runs_first_and_a_packages_main(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("import os\nos.environ['MODE'] = 'a'\n")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "train.py").write_text("print(1)\n")
    (tmp_path / "pkg" / "__main__.py").write_text("print('main')\n")
    module = script_code("python -m pkg.sub.train", tmp_path, tmp_path)
    assert module is not None
    assert module.files == ("pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/train.py")
    package = script_code("python -m pkg", tmp_path, tmp_path)
    assert package is not None and package.files == ("pkg/__init__.py", "pkg/__main__.py")
    before = package.parts
    (tmp_path / "pkg" / "__main__.py").write_text("print('other')\n")
    assert script_code("python -m pkg", tmp_path, tmp_path).parts != before  # type: ignore[union-attr]
    (tmp_path / "pkg" / "__main__.py").unlink()
    assert script_code("python -m pkg", tmp_path, tmp_path) is None  # Python refuses it: a plain command


def test_a_pythonpath_set_on_the_command_line_is_searched_after_the_scripts_folder(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "run.py").write_text("import helpers\n")
    (tmp_path / "helpers.py").write_text("def f():\n    return 1\n")
    for cmd in ("PYTHONPATH=. python scripts/run.py", "env PYTHONPATH=.:lib python scripts/run.py"):
        code = script_code(cmd, tmp_path, tmp_path)
        assert code is not None and code.files == ("helpers.py", "scripts/run.py"), cmd
    alone = script_code("python scripts/run.py", tmp_path, tmp_path)
    assert alone is not None and alone.files == ("scripts/run.py",)
