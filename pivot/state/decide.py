"""Skip-or-run: compare a stage's declaration and files with its lock, with a reason."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from pivot.pipeline.manifest import StageSpec
from pivot.state.hashing import hash_path
from pivot.state.lock import read_lock

__all__ = ["Decision", "Reason", "decide"]


class Reason(enum.StrEnum):
    UP_TO_DATE = "up_to_date"
    NEVER_RAN = "never_ran"
    FORCED = "forced"
    CODE_CHANGED = "code_changed"
    PARAMS_CHANGED = "params_changed"
    DEPS_CHANGED = "deps_changed"
    DEFINITION_CHANGED = "definition_changed"
    OUT_MISSING = "out_missing"
    OUT_MODIFIED = "out_modified"
    UPSTREAM_STALE = "upstream_stale"
    DEP_MISSING = "dep_missing"
    FAILED = "failed"
    OUT_NOT_PRODUCED = "out_not_produced"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"
    POOL_LOST = "pool_lost"
    WORKER_DIED = "worker_died"


@dataclass(frozen=True)
class Decision:
    run: bool
    code: Reason
    message: str
    dep_hashes: dict[str, str] = field(default_factory=dict)
    missing_deps: tuple[str, ...] = ()


def decide(root: Path, spec: StageSpec, force: bool = False) -> Decision:
    """Whether `spec` must run. Dep hashes are returned so the run records what it read."""
    dep_hashes: dict[str, str] = {}
    missing: list[str] = []
    for dep in spec.deps:
        digest = hash_path(root / dep)
        if digest is None:
            missing.append(dep)
        else:
            dep_hashes[dep] = digest
    lock = read_lock(root, spec.name)
    if lock is None:  # deps may be missing only because upstream has not run yet either
        return Decision(True, Reason.NEVER_RAN, "never ran", dep_hashes, tuple(missing))
    if missing:
        return Decision(
            True, Reason.DEP_MISSING, f"dependency missing: {', '.join(missing)}",
            dep_hashes, tuple(missing),
        )
    if force:
        return Decision(True, Reason.FORCED, "forced", dep_hashes)
    if lock.code != spec.fingerprint:
        return Decision(True, Reason.CODE_CHANGED, f"code changed: {spec.func}()", dep_hashes)
    if set(lock.deps) != set(spec.deps) or set(lock.outs) != set(spec.outs):
        return Decision(
            True, Reason.DEFINITION_CHANGED, "deps or outs declaration changed", dep_hashes
        )
    if lock.params != spec.params:
        return Decision(True, Reason.PARAMS_CHANGED, _params_diff(lock.params, spec.params), dep_hashes)
    changed = sorted(d for d in spec.deps if lock.deps.get(d) != dep_hashes[d])
    if changed:
        return Decision(True, Reason.DEPS_CHANGED, f"dep changed: {', '.join(changed)}", dep_hashes)
    for out in spec.outs:
        digest = hash_path(root / out)
        if digest is None:
            return Decision(True, Reason.OUT_MISSING, f"output missing: {out}", dep_hashes)
        if digest != lock.outs.get(out):
            return Decision(True, Reason.OUT_MODIFIED, f"output modified: {out}", dep_hashes)
    return Decision(False, Reason.UP_TO_DATE, "up to date", dep_hashes)


def _params_diff(old: dict[str, object], new: dict[str, object]) -> str:
    parts = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            parts.append(f"{key} {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}")
    return "param changed: " + ", ".join(parts)
