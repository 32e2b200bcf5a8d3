"""Why a stage runs, is skipped or did not run: a code from a fixed enum, details, a message.

The code is the contract (JSON outputs carry it as `reason_code` / `code`); the message is
for people; `details` holds what the message names (paths, qualified names, param values)
so tools need not parse messages.
"""

from __future__ import annotations

import enum
from dataclasses import field
from typing import Any

from pivot.protocol.record import Record, record

__all__ = ["Reason", "ReasonCode"]


class ReasonCode(enum.StrEnum):
    UP_TO_DATE = "up_to_date"
    NEVER_RAN = "never_ran"
    LOCK_CORRUPT = "lock_corrupt"  # its lock file exists but cannot be read
    FORCED = "forced"
    CODE_CHANGED = "code_changed"
    PARAMS_CHANGED = "params_changed"
    DEPS_CHANGED = "deps_changed"
    UPSTREAM_CHANGED = "upstream_changed"
    DEFINITION_CHANGED = "definition_changed"
    OUT_MISSING = "out_missing"
    OUT_MODIFIED = "out_modified"
    UPSTREAM_STALE = "upstream_stale"
    DEP_MISSING = "dep_missing"
    RESTORED = "restored"
    FAILED = "failed"
    OUT_NOT_PRODUCED = "out_not_produced"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"
    # Its code changed after the pipeline was loaded: not run under the fingerprint taken
    # before (it runs on the new code once loaded again).
    CODE_OUTDATED = "code_outdated"
    POOL_LOST = "pool_lost"
    WORKER_DIED = "worker_died"
    NO_POOL = "no_pool"  # no connected worker pool has the tags the stage needs
    ALWAYS_CHANGED = "always_changed"  # dvc.yaml's always_changed: it runs every time


@record
class Reason(Record):
    code: ReasonCode
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"code": str(self.code), "message": self.message, "details": self.details}
