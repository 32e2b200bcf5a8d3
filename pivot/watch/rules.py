"""Which changed paths count as changes to the project: built-in rules plus `.pivotignore`.

Paths are project-relative POSIX paths as the watcher produces them (`data/a.csv`, no
leading `./` or `/`, no trailing `/`). A path inside an ignored folder is ignored, and
nothing can bring it back (as in git: a negation cannot re-include a file whose folder
is excluded).

Always ignored (no `.pivotignore` line can re-include these):
- `.pivot` at the root: Pivot's own state is never a trigger (a `data/.pivot` is data);
- a path component `.git` (at any depth: git's internals are never data; the watcher
  looks at `.git/index.lock` itself), `__pycache__`, `.venv`, `venv`, `node_modules`,
  `.mypy_cache`, `.pytest_cache`, `.ruff_cache`;
- a folder holding a `pyvenv.cfg` (a virtual environment under another name), checked
  on disk once per folder and cached; `note_change` drops the cache when a
  `pyvenv.cfg` appears or disappears, or a cached folder does;
- editor temp and backup files, by name: `*.swp`, `*.swx` (vim), `*~`, `.#*` (emacs),
  `4913` (vim's write test). `*.tmp` is not ignored: tools write real data like that.

`.pivotignore` at the root, in the subset of gitignore syntax below. `.gitignore` is
deliberately not read: data folders are usually git-ignored, and they are what a
pipeline depends on.
- blank lines and lines starting with `#` are skipped; `\\#` and `\\!` start a pattern
  with a literal `#` or `!`; trailing spaces are dropped unless escaped (`\\ `);
- `!pattern` negates: the last matching line wins;
- a trailing `/` matches folders only;
- a `/` at the start or in the middle anchors the pattern to the root (a leading `/`
  is dropped); otherwise the pattern matches the name at any depth;
- `*` matches within one path component, `?` one character other than `/`, `[abc]`,
  `[a-z]`, `[!a-z]` / `[^a-z]` one character of (not of) a set; `\\x` is a literal `x`;
- `**/` at the start matches in every folder, `/**` at the end everything inside, and
  `/**/` in the middle zero or more folders; any other `**` acts like `*`.
Not supported: POSIX classes (`[[:alpha:]]`), `.pivotignore` files in subfolders, and
case-insensitive matching. A line that does not compile is logged and skipped.

When the kind of the last component is unknown (`is_dir=None`, e.g. a path that was just
deleted) it is taken as a file: a folder-only pattern does not hide it. That errs
towards reporting an extra path rather than missing a change.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ALWAYS_IGNORED_NAMES", "IGNORE_FILE", "IgnoreRules"]

log = logging.getLogger(__name__)

IGNORE_FILE = ".pivotignore"
ALWAYS_IGNORED_NAMES = frozenset(
    {
        ".git",
        ".dvc",  # DVC's own cache and state (a project used with both tools)
        "__pycache__",
        ".venv",
        "venv",
        "node_modules",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
    }
)
_STATE_DIR = ".pivot"
_VENV_MARKER = "pyvenv.cfg"
_EDITOR_TEMP = re.compile(r".*\.sw[px]|.*~|\.#.*|4913", re.DOTALL)
# Per-folder answers are cached; a project with more folders than this (seen in events)
# just starts the cache over.
_MAX_CACHED_DIRS = 100_000


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool
    line: int


class IgnoreRules:
    """Answers `ignored(rel, is_dir)` for one project root. Not thread-safe."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._patterns: list[_Pattern] = []
        self._dirs: dict[str, bool] = {}  # folder -> it or one of its parents is ignored
        self.reload()

    def reload(self) -> None:
        """Read `.pivotignore` again (a missing file means no patterns)."""
        self._patterns = _parse(self.root / IGNORE_FILE)
        self._dirs.clear()

    def note_change(self, rel: str) -> bool:
        """Tell the rules that `rel` changed on disk, before asking about that batch:
        `.pivotignore` is read again, and a `pyvenv.cfg` appearing or vanishing drops
        the cached per-folder answers. True when that may change which folders are
        ignored (the watcher then plans its watches again).

        A cached folder that appears or vanishes drops the cache too: the watcher does
        not watch inside ignored folders, so when a virtual environment is deleted it
        sees the folder go, never its `pyvenv.cfg`, and a new folder of that name must
        not inherit the old answer."""
        if rel == IGNORE_FILE:
            self.reload()
            return True
        if rel == _VENV_MARKER or rel.endswith("/" + _VENV_MARKER):
            self._dirs.clear()
            return True
        if rel in self._dirs:
            self._dirs.clear()
        return False

    @staticmethod
    def is_rule_file(rel: str) -> bool:
        """Whether a change to `rel` may change the rules (see note_change)."""
        return rel in (IGNORE_FILE, _VENV_MARKER) or rel.endswith("/" + _VENV_MARKER)

    def ignored(self, rel: str, is_dir: bool | None = None) -> bool:
        if not rel or rel == ".":
            return False
        parent, _, name = rel.rpartition("/")
        if parent and self._dir_ignored(parent):
            return True
        if is_dir:
            return self._dir_ignored(rel)
        return self._own(rel, name, is_dir=False)

    # --- internals -----------------------------------------------------------------

    def _dir_ignored(self, path: str) -> bool:
        hit = self._dirs.get(path)
        if hit is None:
            parent, _, name = path.rpartition("/")
            hit = bool(parent) and self._dir_ignored(parent)
            hit = hit or self._own(path, name, is_dir=True)
            if len(self._dirs) >= _MAX_CACHED_DIRS:
                self._dirs.clear()
            self._dirs[path] = hit
        return hit

    def _own(self, path: str, name: str, *, is_dir: bool) -> bool:
        """Whether `path` itself is ignored (its parents are known not to be)."""
        if name in ALWAYS_IGNORED_NAMES or path == _STATE_DIR:
            return True
        if _EDITOR_TEMP.fullmatch(name):
            return True
        if is_dir and os.path.isfile(os.path.join(self.root, path, _VENV_MARKER)):
            return True
        for pattern in reversed(self._patterns):
            if pattern.dir_only and not is_dir:
                continue
            if pattern.regex.fullmatch(path):
                return not pattern.negate
        return False


def _parse(path: Path) -> list[_Pattern]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("cannot read %s, using no patterns from it: %s", path, exc)
        return []
    patterns = []
    for number, raw in enumerate(text.splitlines(), start=1):
        try:
            pattern = _parse_line(raw, number)
        except re.error as exc:
            log.warning("%s line %d: skipped %r: %s", path, number, raw, exc)
            continue
        if pattern is not None:
            patterns.append(pattern)
    return patterns


def _parse_line(raw: str, number: int) -> _Pattern | None:
    line = raw.rstrip("\r")
    while line.endswith(" ") and not line.endswith("\\ "):
        line = line[:-1]
    if not line or line.startswith("#"):
        return None
    negate = line.startswith("!")
    if negate:
        line = line[1:]
    dir_only = line.endswith("/") and not line.endswith("\\/")
    body = line.rstrip("/") if dir_only else line
    anchored = "/" in body
    body = body.lstrip("/")
    if not body:
        return None
    regex = _translate(body)
    if not anchored:
        regex = "(?:.*/)?" + regex
    return _Pattern(re.compile(regex, re.DOTALL), negate, dir_only, number)


def _translate(body: str) -> str:
    """A gitignore pattern (without `!` or trailing `/`) as a regex for `fullmatch`."""
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == "*":
            j = i
            while j < n and body[j] == "*":
                j += 1
            whole_component = (i == 0 or body[i - 1] == "/") and (j == n or body[j] == "/")
            if j - i >= 2 and whole_component:
                if j == n:
                    out.append(".*")  # trailing "/**" (or "**" alone): everything inside
                else:
                    out.append("(?:.*/)?")  # "**/": zero or more folders
                    j += 1
            else:
                out.append("[^/]*")
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            piece, i = _bracket(body, i)
            out.append(piece)
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(body[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _bracket(body: str, start: int) -> tuple[str, int]:
    """The regex for the set starting at `body[start] == "["` and the index after it;
    an unclosed `[` is a literal."""
    n = len(body)
    j = start + 1
    if j < n and body[j] in "!^":
        j += 1
    if j < n and body[j] == "]":
        j += 1
    while j < n and body[j] != "]":
        j += 2 if body[j] == "\\" else 1
    if j >= n:
        return re.escape("["), start + 1
    inner = body[start + 1 : j]
    negate = inner[:1] in ("!", "^")
    if negate:
        inner = inner[1:]
    parts: list[str] = []
    k = 0
    while k < len(inner):
        ch = inner[k]
        if ch == "\\" and k + 1 < len(inner):
            parts.append(re.escape(inner[k + 1]))
            k += 2
        elif ch == "-" and parts and k + 1 < len(inner):
            parts.append("-")
            k += 1
        else:
            parts.append(re.escape(ch))
            k += 1
    chars = "".join(parts)
    # A set never matches "/" (gitignore matches with FNM_PATHNAME).
    return (f"[^/{chars}]" if negate else f"(?!/)[{chars}]"), j + 1
