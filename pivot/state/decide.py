"""Skip-or-run: compare a stage's declaration and files with its lock, with typed reasons."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, Protocol

from pivot.pipeline.manifest import StageSpec
from pivot.protocol.record import Record, record
from pivot.state.lock import StageLock, lock_path, lock_problem, read_lock
from pivot.state.reasons import Reason, ReasonCode

__all__ = ["Decision", "PathHasher", "decide", "params_changes"]

UP_TO_DATE = Reason(ReasonCode.UP_TO_DATE, "up to date")


class PathHasher(Protocol):
    def hash_path(self, path: str) -> str | None: ...


@record
class Decision(Record):
    run: bool
    reasons: tuple[Reason, ...]  # the first is the one shown; more only when asked for all
    dep_hashes: dict[str, str] = field(default_factory=dict)
    missing_deps: tuple[str, ...] = ()
    lock: StageLock | None = None
    # A frozen stage's declared outputs that do not exist: it fails without running, as
    # `dvc repro` fails it ("missing data"), since nothing would ever make them.
    frozen_missing: tuple[str, ...] = ()

    @property
    def reason(self) -> Reason:
        return self.reasons[0] if self.reasons else UP_TO_DATE


def decide(
    root: Path,
    spec: StageSpec,
    hasher: PathHasher,
    *,
    force: bool = False,
    producers: Mapping[str, frozenset[str]] | None = None,
    all_reasons: bool = False,
    read: Callable[[Path, str], StageLock | None] = read_lock,
) -> Decision:
    """Whether `spec` must run, and why. Dep hashes are returned so a run records what it read.

    `producers` maps a dep path to the stages writing it: a changed dep with a producer is
    reported as "upstream changed". With `all_reasons`, every reason is listed (for
    `status --explain`); otherwise checking stops at the first, sparing output hashing.
    """
    dep_hashes: dict[str, str] = {}
    missing: list[str] = []
    top = os.fspath(root)  # str joins: pathlib's cost as much as a cached hash lookup
    # + a declared (relative, normal) path: os.path.join's string, without its checks
    # (10,000 stages: 25,000 joins, and a join here each was 2 % of a `status`).
    under = top if top.endswith("/") else top + "/"
    for dep in spec.deps:
        digest = hasher.hash_path(under + dep)
        if digest is None:
            missing.append(dep)
        else:
            dep_hashes[dep] = digest
    lock = read(root, spec.name)

    def verdict(*reasons: Reason) -> Decision:
        return Decision(bool(reasons), reasons, dep_hashes, tuple(missing), lock)

    if spec.frozen:  # dvc.yaml's frozen: never run, whatever changed
        gone = tuple(out for out in spec.outs if not os.path.lexists(os.path.join(top, out)))
        if gone:
            return Decision(False, (Reason(
                ReasonCode.OUT_MISSING,
                f"frozen and its output is missing: {', '.join(gone)}; a frozen stage never "
                "runs: put the output back (`pivot checkout`, or by hand) or remove `frozen: true`",
                {"paths": list(gone)},
            ),), dep_hashes, (), lock, gone)
        return Decision(False, (Reason(ReasonCode.UP_TO_DATE, "frozen: never run"),), dep_hashes, (), lock)
    if not (force or all_reasons or missing or spec.always) and _unchanged(under, spec, lock, dep_hashes, hasher):
        return Decision(False, (), dep_hashes, (), lock)

    if lock is None:  # deps may be missing only because upstream has not run yet either
        problem = lock_problem(root, spec.name)
        if problem is not None:
            where = lock_path(root, spec.name).relative_to(root).as_posix()
            return verdict(Reason(
                ReasonCode.LOCK_CORRUPT,
                f"its lock file {where} cannot be read ({problem}): it runs again and writes a new one",
                {"path": where},
            ))
        return verdict(Reason(ReasonCode.NEVER_RAN, "never ran"))
    if missing:
        msg = f"dependency missing: {', '.join(missing)}"
        return verdict(Reason(ReasonCode.DEP_MISSING, msg, {"paths": missing}))
    reasons: list[Reason] = []
    if force:
        reasons.append(Reason(ReasonCode.FORCED, "forced"))
    if spec.always:
        reasons.append(Reason(ReasonCode.ALWAYS_CHANGED, "always_changed: it runs every time"))
    for check in (_definition, _code, _params, _deps):
        if reasons and not all_reasons:
            return verdict(*reasons)
        reasons.extend(check(spec, lock, dep_hashes, producers))
    if reasons and not all_reasons:
        return verdict(*reasons)
    reasons.extend(_outs(root, spec, lock, hasher))
    return verdict(*reasons)


def _unchanged(
    under: str, spec: StageSpec, lock: StageLock | None, dep_hashes: dict[str, str], hasher: PathHasher,
) -> bool:
    """Whether every check below would find nothing, in one pass without building their
    reasons: the usual answer, and 10,000 stages decide in a no-op. False sends the
    stage through the checks, which say what changed."""
    if (
        lock is None or lock.code != spec.fingerprint or not same_params(lock.params, spec.params)
        or lock.deps != dep_hashes or len(lock.outs) != len(spec.outs)
    ):
        return False
    outs = lock.outs
    for out in spec.outs:
        digest = outs.get(out)
        if digest is None or hasher.hash_path(under + out) != digest:
            return False
    return True


def _definition(
    spec: StageSpec, lock: StageLock, _hashes: dict[str, str], _p: object
) -> list[Reason]:
    if lock.deps.keys() == set(spec.deps) and lock.outs.keys() == set(spec.outs):
        return []  # the usual case, without the four sorted lists
    details: dict[str, list[str]] = {
        "added_deps": sorted(set(spec.deps) - set(lock.deps)),
        "removed_deps": sorted(set(lock.deps) - set(spec.deps)),
        "added_outs": sorted(set(spec.outs) - set(lock.outs)),
        "removed_outs": sorted(set(lock.outs) - set(spec.outs)),
    }
    if not any(details.values()):
        return []
    words = [f"{k.replace('_', ' ')} {', '.join(v)}" for k, v in details.items() if v]
    return [Reason(ReasonCode.DEFINITION_CHANGED, "declaration changed: " + "; ".join(words), details)]


def _code(spec: StageSpec, lock: StageLock, _hashes: dict[str, str], _p: object) -> list[Reason]:
    if lock.code == spec.fingerprint:
        return []
    old, new = lock.code_parts, spec.code_parts
    changed = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    details = {"changed": changed, "added": added, "removed": removed}
    names = changed + [f"+{n}" for n in added] + [f"-{n}" for n in removed]
    # An old lock without parts (or a fingerprint scheme change) cannot name the piece.
    what = ", ".join(names) if names else spec.func
    return [Reason(ReasonCode.CODE_CHANGED, f"code changed: {what}", details)]


def params_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    """key -> [old, new] for every param that differs (None stands for unset)."""
    return {
        key: [old.get(key), new.get(key)]
        for key in sorted(set(old) | set(new))
        if key not in old or key not in new or not _same(old[key], new[key])
    }


def same_params(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Equal values of equal types: Python's 1 == 1.0 == True, but a command gets `1`,
    `1.0` or `true` in its `${...}` (and a function an int, a float or a bool). A list
    and a tuple are one (a lock is JSON). A NaN is the same NaN (Python's NaN != NaN: a
    stage with one was stale at every check)."""
    return (old == new or old.keys() == new.keys()) and all(_same(old[key], new[key]) for key in old)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if type(a) is float and a != a:  # NaN
        return b != b
    return bool(a == b)


def _params(spec: StageSpec, lock: StageLock, _hashes: dict[str, str], _p: object) -> list[Reason]:
    changes = params_changes(lock.params, spec.params)
    if not changes:
        return []

    def show(value: Any, present: bool) -> str:
        return repr(value) if present else "<unset>"

    parts = [
        f"{k} {show(o, k in lock.params)} -> {show(n, k in spec.params)}"
        for k, (o, n) in changes.items()
    ]
    return [Reason(ReasonCode.PARAMS_CHANGED, "params changed: " + ", ".join(parts), {"changes": changes})]


def _deps(
    spec: StageSpec,
    lock: StageLock,
    hashes: dict[str, str],
    producers: Mapping[str, frozenset[str]] | None,
) -> list[Reason]:
    changed = [d for d in spec.deps if lock.deps.get(d) != hashes[d]]
    if not changed:
        return []
    producers = producers or {}
    made = [d for d in changed if producers.get(d)]
    plain = [d for d in changed if not producers.get(d)]
    reasons = []
    if plain:
        reasons.append(Reason(ReasonCode.DEPS_CHANGED, f"dep changed: {', '.join(plain)}", {"paths": plain}))
    if made:
        stages = sorted({s for d in made for s in producers[d]})
        msg = f"upstream changed: {', '.join(made)} (from {', '.join(stages)})"
        reasons.append(Reason(ReasonCode.UPSTREAM_CHANGED, msg, {"paths": made, "stages": stages}))
    return reasons


def _outs(root: Path, spec: StageSpec, lock: StageLock, hasher: PathHasher) -> list[Reason]:
    missing, modified = [], []
    top = os.fspath(root)
    for out in spec.outs:
        digest = hasher.hash_path(os.path.join(top, out))
        if digest is None:
            missing.append(out)
        elif digest != lock.outs.get(out):
            modified.append(out)
    reasons = []
    if missing:
        reasons.append(Reason(ReasonCode.OUT_MISSING, f"output missing: {', '.join(missing)}", {"paths": missing}))
    if modified:
        reasons.append(
            Reason(ReasonCode.OUT_MODIFIED, f"output modified: {', '.join(modified)}", {"paths": modified})
        )
    return reasons
