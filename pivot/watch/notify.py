"""watchfiles' Rust notifier, loaded without running the `watchfiles` package.

The package's `__init__` imports its async API and anyio: ~20 ms of every watcher's
start, while the engine's processes start together on few cores (docs/benchmarks.md).
We use only `RustNotify`, so the extension module is loaded from the package's folder
directly, under its own name (a later `import watchfiles` reuses it: a PyO3 module may be
initialised once per process). Any surprise in the package's layout falls back to the
normal import.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from watchfiles._rust_notify import RustNotify

__all__ = ["load_rust_notify"]

_NAME = "watchfiles._rust_notify"


def load_rust_notify() -> type[RustNotify]:
    module = sys.modules.get(_NAME) or _load_directly()
    if module is None:
        import watchfiles._rust_notify

        module = watchfiles._rust_notify
    notify: type[RustNotify] = module.RustNotify
    return notify


def _load_directly() -> ModuleType | None:
    try:
        package = importlib.util.find_spec("watchfiles")  # finds it; does not run it
    except (ImportError, ValueError):
        return None
    for folder in (package.submodule_search_locations or []) if package else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "_rust_notify" + suffix)
            if not os.path.exists(path):
                continue
            spec = importlib.util.spec_from_file_location(_NAME, path)
            if spec is None or spec.loader is None:
                return None
            module = importlib.util.module_from_spec(spec)
            sys.modules[_NAME] = module
            try:
                spec.loader.exec_module(module)
            except Exception:
                del sys.modules[_NAME]
                return None
            return module
    return None
