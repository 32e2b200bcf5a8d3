"""Which modules the workers' (and loaders') server preloads (pivot/runtime/preload.py)."""

from __future__ import annotations

import importlib

from pivot.runtime.preload import third_party


def test_installed_submodules_the_stages_use_are_preloaded() -> None:
    importlib.import_module("yaml.constructor")
    preload, key = third_party({"yaml"}, (), {"yaml.constructor", "yaml.resolver", "os.path", "nosuch.mod", "yaml"})
    # Imported here or not (a stage's own import statement): the server imports it.
    assert "yaml" in preload and {"yaml.constructor", "yaml.resolver"} <= set(preload), preload
    # Stdlib, unknown: never preloaded.
    assert not {"os.path", "nosuch.mod", "os", "nosuch"} & set(preload), preload
    assert preload.index("yaml") < preload.index("yaml.constructor")  # packages first
    assert key == third_party({"yaml"}, ())[1]  # the key is over the packages' files


def test_modules_pivot_imported_first_are_left_out() -> None:
    preload, _ = third_party({"yaml"}, {"yaml"})
    assert "yaml" not in preload, preload
