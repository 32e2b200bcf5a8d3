"""Which folders get an OS watch: every folder the rules keep, none that they ignore.

inotify has no recursive watch: a "recursive" watch (notify's) is one kernel watch per
folder, added by walking the tree. Watching the project root that way watches `.venv/`,
`node_modules/`, `.git/` and `.pivotignore`d data too: thousands of watches, a slow
start, and a wake-up for every `pip install`. So the project is split:

- a *recursive root* is a folder with no ignored folder anywhere under it: notify walks
  it, and watches folders created in it later by itself;
- a *flat* folder has an ignored folder somewhere under it: it is watched alone (its
  files and the names of its entries), and its kept sub-folders are planned in turn.

watchfiles takes a single `recursive` flag per RustNotify, so the two lists go to two
instances (`pivot/watch/watchset.py`), and neither can grow: a new list means a new
instance, which for the recursive one means notify walking all its roots again. So
folders that appear later in a flat folder (a stage's output folder at the project
root, made again on every run) are added by `with_new_folders`: only the new tree is
walked, each of its kept folders watched alone, and the recursive instance is left as
it is. A full plan (at start, when the rules change, when an ignored folder appears
under a recursive root, or after the watcher's GROW_MAX such folders) folds them back
into recursive roots.

Symbolic links to folders are never walked into here (the link's parent becomes flat):
one pointing outside the project is a recursive root of its own (notify follows it and
detects loops; folders the rules would ignore inside it are watched), one pointing into
the project is skipped, its target being watched where it really is.

A folder that cannot be listed is planned flat: its watch may fail too, and watchfiles
then skips that one path (ignore_permission_denied) instead of the whole root.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pivot.watch.rules import IgnoreRules

__all__ = ["WatchPlan", "abs_path", "abs_paths", "plan_watches", "under_any"]


@dataclass(frozen=True)
class WatchPlan:
    """Project-relative POSIX folders ("" is the root) and how each is watched."""

    recursive: frozenset[str] = frozenset()
    flat: frozenset[str] = frozenset()
    # flat folder -> names of the folders it held when planned (see `unplanned_folders`)
    listed: dict[str, frozenset[str]] = field(default_factory=dict, compare=False)
    added: int = 0  # folders `with_new_folders` added since the last full plan

    def auto_watched(self, rel: str) -> bool:
        """Whether notify itself watches a folder created at `rel`: only when its parent
        is under a recursive root (a flat folder's new sub-folder is not watched)."""
        parent = rel.rpartition("/")[0]
        return any(p in self.recursive for p in _self_and_parents(parent))

    def covers(self, rel: str) -> bool:
        """Whether folder `rel` is watched under this plan."""
        return rel in self.flat or any(p in self.recursive for p in _self_and_parents(rel))

    def unplanned_folders(self, root: Path, flat: Iterable[str]) -> bool:
        """Whether one of these flat folders now holds a folder it did not hold when
        planned. That folder was made after the walk, maybe before its parent's watch
        existed, and then no event ever announces it: plan again."""
        for rel in flat:
            try:
                entries = list(os.scandir(abs_path(root, rel)))
            except OSError:
                continue  # gone or unreadable: its parent's events tell the rest
            names = self.listed.get(rel, frozenset())
            if any(e.name not in names and _is_folder(e) for e in entries):
                return True
        return False

    def with_new_folders(self, root: Path, rules: IgnoreRules, tops: list[str]) -> WatchPlan:
        """This plan plus folders that appeared in flat folders, each of their kept
        folders watched alone. Much cheaper than a full plan when the project is big:
        it walks only the new trees, and leaves the recursive instance (which notify
        would walk again) alone, at the same one watch per folder. New folders inside
        them are then handled the same way; the next full plan turns clean ones back
        into recursive roots."""
        stale = [rel for rel in self.flat | self.recursive if under_any(rel, tops)]
        recursive = set(self.recursive).difference(stale)
        flat = set(self.flat).difference(stale)
        listed = {rel: names for rel, names in self.listed.items() if rel in flat}
        added = 0
        for top in tops:
            for rel, listing in _walk(root, rules, top).items():
                flat.add(rel)
                listed[rel] = listing.names
                recursive.update(listing.links)
                added += 1
        return WatchPlan(frozenset(recursive), frozenset(flat), listed, self.added + added)


def plan_watches(root: Path, rules: IgnoreRules) -> WatchPlan:
    """Walk the folders the rules keep (never into an ignored one) and split them into
    recursive roots and flat folders."""
    listings = _walk(root, rules, "")
    clean = _clean_folders(listings)
    recursive: set[str] = set()
    flat: set[str] = set()
    for rel, listing in listings.items():
        if rel not in clean:
            flat.add(rel)
            recursive.update(listing.links)
        elif rel == "" or rel.rpartition("/")[0] not in clean:
            recursive.add(rel)
    listed = {rel: listings[rel].names for rel in flat}
    return WatchPlan(frozenset(recursive), frozenset(flat), listed)


def abs_paths(root: Path, rels: Iterable[str]) -> list[str]:
    """Absolute paths for RustNotify, sorted: a plan registers in the same order."""
    return sorted(abs_path(root, rel) for rel in rels)


def under_any(rel: str, tops: Iterable[str]) -> bool:
    """Whether `rel` is one of the folders `tops` or inside one ("" holds everything)."""
    return any(not top or rel == top or rel.startswith(top + "/") for top in tops)


# --- internals -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Listing:
    kids: tuple[str, ...]  # kept sub-folders (not links)
    links: tuple[str, ...]  # kept links to folders outside the project
    names: frozenset[str]  # every sub-folder name, kept or not, links included
    tainted: bool  # something under it must not be watched recursively


def _walk(root: Path, rules: IgnoreRules, top: str) -> dict[str, _Listing]:
    """The listing of `top` and of every kept folder under it."""
    listings: dict[str, _Listing] = {}
    stack = [top]
    while stack:
        rel = stack.pop()
        listing = _list(root, rel, rules)
        listings[rel] = listing
        stack.extend(listing.kids)
    return listings


def _list(root: Path, rel: str, rules: IgnoreRules) -> _Listing:
    try:
        entries = list(os.scandir(abs_path(root, rel)))
    except OSError:
        return _Listing((), (), frozenset(), tainted=True)
    kids: list[str] = []
    links: list[str] = []
    names: set[str] = set()
    tainted = False
    for entry in entries:
        if not _is_folder(entry):
            continue
        names.add(entry.name)
        child = f"{rel}/{entry.name}" if rel else entry.name
        if rules.ignored(child, is_dir=True):
            tainted = True
        elif entry.is_symlink():
            tainted = True  # notify would follow it: keep it out of a recursive walk
            if _outside(root, entry.path):
                links.append(child)
        else:
            kids.append(child)
    return _Listing(tuple(kids), tuple(links), frozenset(names), tainted)


def _clean_folders(listings: dict[str, _Listing]) -> set[str]:
    """Folders with nothing under them that a recursive watch must not cover."""
    clean: set[str] = set()
    # Deepest first, so that every sub-folder is decided before its parent.
    for rel in sorted(listings, key=lambda r: r.count("/") + bool(r), reverse=True):
        listing = listings[rel]
        if not listing.tainted and all(kid in clean for kid in listing.kids):
            clean.add(rel)
    return clean


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows a link: a link to a folder counts
    except OSError:
        return False


def _outside(root: Path, link: str) -> bool:
    """Whether a link leads outside the project (and not to one of its parents, which
    would bring the whole project back in under another name)."""
    target = os.path.realpath(link)
    top = str(root)
    return not (_within(target, top) or _within(top, target))


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def abs_path(root: Path, rel: str) -> str:
    return f"{root}/{rel}" if rel else str(root)


def _self_and_parents(rel: str) -> Iterable[str]:
    while rel:
        yield rel
        rel = rel.rpartition("/")[0]
    yield ""
