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
