"""The watcher loads watchfiles' notifier without the package (pivot/watch/notify.py)."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import sys
from pivot.watch.notify import load_rust_notify
notify = load_rust_notify()
print("anyio" in sys.modules, "watchfiles.main" in sys.modules)
import watchfiles
print(watchfiles.main.RustNotify is notify, load_rust_notify() is notify)
"""


def test_loads_without_the_package_and_a_later_import_shares_it() -> None:
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "False", "True", "True"]
