"""Every message Pivot sends between its processes, as frozen dataclasses.

Each class carries its wire tag in `TAG`. `MESSAGES` is the closed union the codec
builds its registry from. Fields are msgpack-native only (str, int, float, bool, None,
lists and str-keyed maps of those). Commands are imperative, events past tense.

Sockets (see docs/protocol.md):
- work:    pool DEALER  <-> broker ROUTER   (hello, manifests, stages, results, heartbeats)
- control: client DEALER <-> broker ROUTER  (run, snapshot, pool exits, shutdown)
- events:  broker XPUB   --> display SUB    (state events with sequence numbers; logs)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "MESSAGES",
    "STATUSES",
    "BusTick",
    "CancelStage",
    "EngineStopped",
    "EventsWelcome",
    "FilesChanged",
    "Heartbeat",
    "LoadManifest",
    "LogLine",
    "ManifestAccepted",
    "ManifestFailed",
    "ManifestLoaded",
    "Message",
    "PauseRequest",
    "Paused",
    "PipelineInvalid",
    "PipelineLoaded",
    "PlanWave",
    "PoolExited",
    "PoolHello",
    "PoolLost",
    "PoolShutdown",
    "PoolWelcome",
    "ResultAck",
    "Resumed",
    "RunReply",
    "RunRequest",
    "RunStage",
    "ShutdownReply",
    "ShutdownRequest",
    "Snapshot",
    "SnapshotRequest",
    "StageFinished",
    "StageResult",
    "StageRunning",
    "StageStarted",
    "WatcherReady",
    "WaveFinished",
    "WavePlan",
    "WaveStarted",
]

# Stage outcomes in `stage_finished` and the snapshot. "lost" = its pool died under it;
# "restored" = its outputs were placed from the run cache instead of running it.
STATUSES = ("ran", "restored", "skipped", "failed", "blocked", "cancelled", "lost")


@dataclass(frozen=True)
class Message:
    TAG: ClassVar[str] = ""


# --- work link: pool <-> broker -------------------------------------------------------


@dataclass(frozen=True)
class PoolHello(Message):
    """Pool -> broker, first message on connect. `slots` = stages it runs at once."""

    TAG: ClassVar[str] = "pool_hello"
    pool: str
    pid: int
    slots: int


@dataclass(frozen=True)
class PoolWelcome(Message):
    """Broker -> pool: accepted; heartbeat every `heartbeat_s`, lost after `liveness` misses."""

    TAG: ClassVar[str] = "pool_welcome"
    pool: str
    heartbeat_s: float
    liveness: int


@dataclass(frozen=True)
class Heartbeat(Message):
    """Both directions on the work link, from each side's own main loop."""

    TAG: ClassVar[str] = "heartbeat"
    pool: str


@dataclass(frozen=True)
class ManifestLoaded(Message):
    """Pool -> broker: the loader imported the pipeline; `manifest` is Manifest.to_wire()."""

    TAG: ClassVar[str] = "manifest_loaded"
    pool: str
    manifest: dict[str, Any]


@dataclass(frozen=True)
class ManifestFailed(Message):
    """Pool -> broker: the pipeline could not be loaded. `detail` = the user's traceback."""

    TAG: ClassVar[str] = "manifest_failed"
    pool: str
    message: str
    detail: str


@dataclass(frozen=True)
class WatcherReady(Message):
    """Watcher -> broker (changes link): the OS watch is registered; edits from now on
    are seen."""

    TAG: ClassVar[str] = "watcher_ready"
    pid: int


@dataclass(frozen=True)
class FilesChanged(Message):
    """Watcher -> broker (changes link): project-relative POSIX paths that were created,
    modified or deleted, ignore rules already applied. Coalesced: one message may stand
    for many file-system events."""

    TAG: ClassVar[str] = "files_changed"
    paths: list[str]


@dataclass(frozen=True)
class LoadManifest(Message):
    """Broker -> pool: load the pipeline again in a fresh loader process.

    With `restart_workers` (Python code changed) the pool cancels the stages it is
    running at once, and replaces its workers once the new manifest loaded: no stage
    runs old code after a code change was seen. A failed load keeps idle workers.
    """

    TAG: ClassVar[str] = "load_manifest"
    restart_workers: bool = False


@dataclass(frozen=True)
class ManifestAccepted(Message):
    """Broker -> pool: the manifest the pool last sent is the engine's now (its graph is
    valid). A pool told to restart its workers replaces them only now: a reload the
    broker rejects (a cycle, two producers of one path) leaves the workers as they were."""

    TAG: ClassVar[str] = "manifest_accepted"


@dataclass(frozen=True)
class RunStage(Message):
    """Broker -> pool: decide skip-or-run for one stage and run it if stale."""

    TAG: ClassVar[str] = "run_stage"
    wave: int
    stage: str
    attempt: str
    force: bool


@dataclass(frozen=True)
class PlanWave(Message):
    """Broker -> pool: which of these stages are up to date as they stand?

    `stages` is in topological order; `upstream` maps each to its upstream stages in the
    wave. A stage counts as up to date only if every upstream one does too, so the
    answer holds for the whole wave (nothing upstream of it will run).
    """

    TAG: ClassVar[str] = "plan_wave"
    wave: int
    stages: list[str]
    upstream: dict[str, list[str]]


@dataclass(frozen=True)
class WavePlan(Message):
    """Pool -> broker: the stages of `wave` found up to date (skipped without dispatch)."""

    TAG: ClassVar[str] = "wave_plan"
    wave: int
    up_to_date: list[str]


@dataclass(frozen=True)
class StageRunning(Message):
    """Pool -> broker: the stage was found stale and was handed to a worker."""

    TAG: ClassVar[str] = "stage_running"
    attempt: str
    reason_code: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageResult(Message):
    """Pool -> broker, resent until acknowledged by `ResultAck`.

    `logs` holds (stream, line) pairs captured while the stage ran.
    """

    TAG: ClassVar[str] = "stage_result"
    attempt: str
    stage: str
    status: str
    reason_code: str
    reason: str
    duration_s: float
    error: str | None
    logs: list[tuple[str, str]]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ResultAck(Message):
    """Broker -> pool: the result of `attempt` is recorded; stop resending it."""

    TAG: ClassVar[str] = "result_ack"
    attempt: str


@dataclass(frozen=True)
class CancelStage(Message):
    """Broker -> pool: stop `attempt` now (`pivot up --restart`: its inputs changed while
    it ran). The pool answers with a `cancelled` StageResult, or with the attempt's real
    result when it finished first."""

    TAG: ClassVar[str] = "cancel_stage"
    attempt: str
    reason: str


@dataclass(frozen=True)
class PoolShutdown(Message):
    """Broker -> pool: finish nothing new, stop workers, exit."""

    TAG: ClassVar[str] = "pool_shutdown"


# --- control link: client <-> broker --------------------------------------------------


@dataclass(frozen=True)
class RunRequest(Message):
    """Client -> broker: run `stages` (and their upstream); all stages when empty."""

    TAG: ClassVar[str] = "run_request"
    stages: list[str]
    force: bool
    keep_going: bool


@dataclass(frozen=True)
class RunReply(Message):
    """Broker -> client: whether the run was queued; `message` says why not."""

    TAG: ClassVar[str] = "run_reply"
    accepted: bool
    message: str


@dataclass(frozen=True)
class SnapshotRequest(Message):
    TAG: ClassVar[str] = "snapshot_request"


@dataclass(frozen=True)
class Snapshot(Message):
    """Broker -> client: everything a display shows, as of state event `seq`.

    `stages` maps name -> {"status", "reason_code", "reason", "duration_s", "wave", "error"};
    `status` is "pending", "running" or one of STATUSES. `last_wave` is the last
    wave_finished body, or None. `trigger` and `paths` are those of wave `wave` (the last
    change); `logs` maps a stage to the last lines (stream, line) of its last run.
    """

    TAG: ClassVar[str] = "snapshot"
    seq: int
    log_seq: int
    wave: int
    wave_running: bool
    stages: dict[str, Any]
    order: list[str]
    pipeline_error: dict[str, Any] | None
    last_wave: dict[str, Any] | None
    paused: bool = False
    trigger: str = "run"
    paths: list[str] = field(default_factory=list)
    logs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class PoolExited(Message):
    """Supervisor -> broker: the pool process it started has exited."""

    TAG: ClassVar[str] = "pool_exited"
    pool: str
    returncode: int


@dataclass(frozen=True)
class PauseRequest(Message):
    """Client -> broker: stop (`paused`) or resume starting waves; answered with `RunReply`.

    While paused, changes are still collected; the wave in flight finishes."""

    TAG: ClassVar[str] = "pause_request"
    paused: bool


@dataclass(frozen=True)
class ShutdownRequest(Message):
    """Client -> broker: stop the pools; the broker answers with `ShutdownReply`.

    Nothing new starts. Stages running get `grace_s` seconds to finish (their outputs
    are committed); then they are cancelled (nothing of them is committed). A second
    request with a shorter grace cuts the wait short."""

    TAG: ClassVar[str] = "shutdown_request"
    grace_s: float = 0.0


@dataclass(frozen=True)
class ShutdownReply(Message):
    """Broker -> client: everything stopped; `seq` is the last state event published (a
    display that wants to show how the stages ended reads up to it)."""

    TAG: ClassVar[str] = "shutdown_reply"
    seq: int = 0


# --- events: broker XPUB -> displays ---------------------------------------------------
# State events carry the state sequence number in the envelope; logs carry their own.


@dataclass(frozen=True)
class EventsWelcome(Message):
    """Published whenever a subscription arrives: the subscriber is now live at `seq`."""

    TAG: ClassVar[str] = "welcome"
    seq: int


@dataclass(frozen=True)
class BusTick(Message):
    """Published every second: the latest state `seq`, so a display sees a trailing gap."""

    TAG: ClassVar[str] = "tick"
    seq: int
    log_seq: int


@dataclass(frozen=True)
class PipelineLoaded(Message):
    TAG: ClassVar[str] = "pipeline_loaded"
    added: list[str]
    removed: list[str]
    changed: list[str]


@dataclass(frozen=True)
class PipelineInvalid(Message):
    TAG: ClassVar[str] = "pipeline_invalid"
    message: str
    detail: str


@dataclass(frozen=True)
class WaveStarted(Message):
    TAG: ClassVar[str] = "wave_started"
    wave: int
    stages: list[str]
    # What started it: "run" (a request), "files" (data changed), "code" (Python code
    # changed), "params" (params.yaml changed); `paths` are the changed paths.
    trigger: str = "run"
    paths: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StageStarted(Message):
    """A stage was found stale and started running (skipped stages never start)."""

    TAG: ClassVar[str] = "stage_started"
    wave: int
    stage: str
    reason_code: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageFinished(Message):
    TAG: ClassVar[str] = "stage_finished"
    wave: int
    stage: str
    status: str
    reason_code: str
    reason: str
    duration_s: float
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LogLine(Message):
    TAG: ClassVar[str] = "log"
    stage: str
    stream: str
    line: str


@dataclass(frozen=True)
class Paused(Message):
    """No new wave starts until `resumed` (the live view's `p` key)."""

    TAG: ClassVar[str] = "paused"


@dataclass(frozen=True)
class Resumed(Message):
    TAG: ClassVar[str] = "resumed"


@dataclass(frozen=True)
class EngineStopped(Message):
    """The engine stopped (its `pivot up` was asked to): the last event; an attached
    display ends on it."""

    TAG: ClassVar[str] = "engine_stopped"


@dataclass(frozen=True)
class WaveFinished(Message):
    TAG: ClassVar[str] = "wave_finished"
    wave: int
    ran: list[str]
    restored: list[str]
    skipped: list[str]
    failed: list[str]
    blocked: list[str]
    cancelled: list[str]
    lost: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PoolLost(Message):
    TAG: ClassVar[str] = "pool_lost"
    pool: str
    reason: str
    stages: list[str]


MESSAGES: tuple[type[Message], ...] = (
    PoolHello,
    PoolWelcome,
    Heartbeat,
    ManifestLoaded,
    ManifestFailed,
    LoadManifest,
    ManifestAccepted,
    WatcherReady,
    FilesChanged,
    RunStage,
    PlanWave,
    WavePlan,
    StageRunning,
    StageResult,
    ResultAck,
    CancelStage,
    PoolShutdown,
    RunRequest,
    RunReply,
    SnapshotRequest,
    Snapshot,
    PoolExited,
    PauseRequest,
    ShutdownRequest,
    ShutdownReply,
    EventsWelcome,
    BusTick,
    PipelineLoaded,
    PipelineInvalid,
    WaveStarted,
    StageStarted,
    StageFinished,
    LogLine,
    WaveFinished,
    Paused,
    Resumed,
    EngineStopped,
    PoolLost,
)
