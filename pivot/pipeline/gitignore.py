"""Outputs kept out of git the way DVC users expect: one marked block in the project's
root `.gitignore` lists every cached output (metrics files excepted: small, meant to be
committed), so `git add -A` does not stage gigabytes of model files.

    # >>> pivot outputs (kept by Pivot: edits inside this block are replaced)
    /data/clean.csv
    /model/
    # <<< pivot outputs

Only that block is ever rewritten (and only when it changes); every other line stays as
the user wrote it. No `.gitignore` is written inside a data folder: it would change
that folder's hash.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pivot.state.atomic import write_atomic

if TYPE_CHECKING:
    from pivot.pipeline.manifest import Manifest

__all__ = ["BEGIN", "END", "cached_outputs", "keep_outputs_ignored"]

BEGIN = "# >>> pivot outputs (kept by Pivot: edits inside this block are replaced)"
END = "# <<< pivot outputs"
_BEGIN_PREFIX = "# >>> pivot outputs"


def cached_outputs(manifest: Manifest) -> Iterator[str]:
    """The outputs the block lists: every stage's, but its metrics and uncached ones
    (small files meant to be committed)."""
    return (o for s in manifest.stages for o in s.outs if o not in s.metrics and o not in s.uncached)


def keep_outputs_ignored(root: Path, outs: Iterable[str]) -> bool:
    """Rewrite the block of `root/.gitignore` to list `outs` (anchored at the root);
    True when the file changed. Raises OSError."""
    path = root / ".gitignore"
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    lines = text.splitlines()
    listed = sorted({out for out in outs if "\n" not in out})
    # One search over them all: most projects' paths need no escaping (10,000 outputs:
    # 33 ms of a no-op for a pattern each).
    plain = not _SPECIAL.search("".join(listed)) and not any(out.endswith((" ", " /")) for out in listed)
    wanted = [BEGIN, *(f"/{out}" if plain else _pattern(out) for out in listed), END]
    start = next((i for i, line in enumerate(lines) if line.startswith(_BEGIN_PREFIX)), None)
    if start is None:
        if len(wanted) == 2:
            return False  # nothing to ignore, and no block to keep
        kept = [*lines, *([""] if lines and lines[-1].strip() else []), *wanted]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i] == END), len(lines) - 1)
        kept = [*lines[:start], *wanted, *lines[end + 1:]]
    new = "\n".join(kept) + "\n"
    if new == text:
        return False
    write_atomic(path, new.encode(), mode=0o644)
    return True


_SPECIAL = re.compile(r"([\\*?\[])")


def _pattern(out: str) -> str:
    """`out` (a folder ends with `/`) as a .gitignore line matching exactly that path from
    the root: git reads `*`, `?`, `[` and `\\` in a line as a pattern, and drops its
    trailing spaces; escaped, `out [1].txt` ignores that file and no other."""
    folder = out.endswith("/")
    body = _SPECIAL.sub(r"\\\1", out.rstrip("/") if folder else out)
    stripped = body.rstrip(" ")
    body = stripped + "\\ " * (len(body) - len(stripped))
    return f"/{body}{'/' if folder else ''}"
