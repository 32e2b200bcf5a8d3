"""Which stages a command names, and which of them (with what around them) it runs.

Names, as `pivot repro` and the other commands take them:
- a stage's name;
- a variant group: `fit` when `fit@linear` and `fit@quadratic` exist (and no stage is
  called `fit`) names every `fit@...`;
- with `glob`, a shell pattern (`fit@*`, `eval_?`): every stage it matches.
A name that is none of these is a UserError naming it, with the closest stage name.

What runs (`Selection`), as DVC's `repro` options say it:
- UPSTREAM (default): the stages and everything they depend on (what is up to date is
  skipped, so nothing runs on stale inputs);
- SINGLE (`-s`): those stages alone, whatever the state of their upstream;
- DOWNSTREAM (`--downstream`): the stages and everything after them, plus the upstream
  those need (again skipped when up to date).
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pivot.errors import UserError

if TYPE_CHECKING:
    from pivot.pipeline.graph import StageGraph

__all__ = ["Selection", "check_text", "resolve_names", "to_run"]


class Selection(enum.StrEnum):
    UPSTREAM = "upstream"
    SINGLE = "single"
    DOWNSTREAM = "downstream"


def check_text(requested: Sequence[str]) -> None:
    """A UserError for a name given on the command line that is not UTF-8 text (bytes
    of another encoding): no stage has such a name, and it cannot be sent to an engine
    (it was a traceback of the message codec)."""
    for name in requested:
        if not name.isascii():
            try:
                name.encode()
            except UnicodeEncodeError:
                raise UserError(f"unknown stage {name!r}: it is not UTF-8 text, as every stage name is") from None


def resolve_names(requested: Sequence[str], known: Sequence[str], *, glob: bool = False) -> list[str]:
    """The stages `requested` names, in `known`'s order; UserError for a name that names
    none (every such name said at once)."""
    chosen: set[str] = set()
    unknown: list[str] = []
    for name in dict.fromkeys(requested):
        found = _named(name, known, glob)
        if found:
            chosen.update(found)
        else:
            unknown.append(name)
    if unknown:
        import difflib  # (only to say what a mistyped name may have meant)

        groups = sorted({k.partition("@")[0] for k in known if "@" in k} - set(known))
        parts = []
        for name in unknown:
            # A stage of a dvc.yaml below the root is `sub/dvc.yaml:NAME` (DVC's own name for
            # it seen from the root), which difflib does not find from NAME alone.
            close = [k for k in known if k.endswith(f"dvc.yaml:{name}")][:1]
            close = close or difflib.get_close_matches(name, [*known, *groups], n=1)
            parts.append(f"{name} (did you mean {close[0]}?)" if close else name)
        what = "no stage matches" if glob else "unknown stage(s)"
        raise UserError(f"{what}: {', '.join(parts)}; stages are: {', '.join(known)}")
    return [name for name in known if name in chosen]


def _named(name: str, known: Sequence[str], glob: bool) -> list[str]:
    if name in known:
        return [name]
    if glob and any(c in name for c in "*?["):
        return [k for k in known if fnmatch.fnmatchcase(k, name)]
    return [k for k in known if k.startswith(name + "@")]  # a variant group


def to_run(graph: StageGraph, targets: Sequence[str], selection: Selection) -> set[str]:
    """The stages a run of `targets` (resolved names; none = all) takes in."""
    if not targets:
        return set(graph.order)
    if selection is Selection.SINGLE:
        return set(targets)
    if selection is Selection.DOWNSTREAM:
        return graph.with_upstream(sorted(set(targets) | graph.downstream_of(set(targets))))
    return graph.with_upstream(list(targets))
