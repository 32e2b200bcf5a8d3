"""Every message Pivot sends between its processes, as frozen dataclasses.

Each class carries its wire tag in `TAG`. `MESSAGES` is the closed union the codec
builds its registry from. Fields are msgpack-native only (str, int, float, bool, None,
lists and str-keyed maps of those). Commands are imperative, events past tense.

Sockets (see docs/protocol.md):
- control: client DEALER <-> broker ROUTER  (hello first, from every role; run, snapshot,
           ps, shutdown)
- work:    pool DEALER  <-> broker ROUTER   (pool hello, manifests, stages, results, heartbeats)
- events:  broker XPUB   --> display SUB    (state events with sequence numbers; logs)
"""

from __future__ import annotations

import enum
from dataclasses import field
from typing import Any, ClassVar

from pivot.protocol.record import Record, record

__all__ = [
    "MESSAGES",
    "STATUSES",
    "BusTick",
    "CancelStage",
    "EngineStopped",
    "EventsWelcome",
    "FilesChanged",
    "Heartbeat",
    "Hello",
    "HelloReply",
    "InstallChanged",
    "LoadManifest",
    "LogLine",
    "ManifestAccepted",
    "ManifestFailed",
    "ManifestLoaded",
    "Message",
    "Notice",
    "PauseRequest",
    "Paused",
    "PipelineInvalid",
    "PipelineLoaded",
    "PlanWave",
    "PoolExited",
    "PoolHello",
    "PoolLeaving",
    "PoolLost",
    "PoolShutdown",
    "PoolWelcome",
    "PsReply",
    "PsRequest",
    "Refused",
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
    "StageOutput",
    "StageResult",
    "StageRunning",
    "StageStarted",
    "StageView",
    "Status",
    "WatcherReady",
    "WaveFinished",
    "WavePlan",
    "WaveStarted",
]

class Status(enum.StrEnum):
    """A stage's state in a wave: pending and running, then one of the outcomes
    (`STATUSES`) of `stage_finished` and the snapshot. "lost" = its pool died under it;
    "restored" = its outputs were placed from the run cache instead of running it."""

    PENDING = "pending"
    RUNNING = "running"
    RAN = "ran"
    RESTORED = "restored"
    SKIPPED = "skipped"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"
    LOST = "lost"


# The outcomes, in the order of wave_finished's lists.
STATUSES = tuple(str(s) for s in Status if s not in (Status.PENDING, Status.RUNNING))


@record
class Message(Record):
    TAG: ClassVar[str] = ""


@record
class StageView(Record):
    """A record inside a message (not a message of its own): one stage as the engine
    sees it, in the snapshot. On the wire a map of exactly these fields."""

    status: str  # a Status: pending, running, or an outcome
    reason_code: str
    reason: str
    duration_s: float
    wave: int
    error: str | None


# --- handshake: every role says hello on the control link first -----------------------


@record
class Hello(Message):
    """Any process -> broker (control link), before anything else: who it is. Answered
    with `hello_reply` (where the broker's other sockets are) or `refused`."""

    TAG: ClassVar[str] = "hello"
    role: str  # "pool", "watcher", "display" or "cli"
    name: str
    pid: int
    host: str
    project: str  # the project id in the sender's .pivot/; "" = not checked (a viewer)


@record
class HelloReply(Message):
    """Broker -> client: accepted. `work`, `events`, `changes` are its other endpoints
    (a wildcard host stands for the host the client reached the control socket at);
    `broker` is an id new at every start of the broker; `access` is what the client's
    key allows ("operator", "viewer", "pool", "watcher"; "local" without CURVE)."""

    TAG: ClassVar[str] = "hello_reply"
    broker: str
    pid: int
    host: str
    work: str
    events: str
    changes: str
    project: str
    heartbeat_s: float
    liveness: int
    access: str


@record
class Refused(Message):
    """Broker -> client: not accepted (`code`: "version", "project", "access"), and why.
    Its wire form is frozen: it is decoded whatever protocol version its envelope names,
    so a peer of another version can read why it was refused."""

    TAG: ClassVar[str] = "refused"
    code: str
    reason: str
    version: int  # the broker's protocol version


# --- work link: pool <-> broker -------------------------------------------------------


@record
class PoolHello(Message):
    """Pool -> broker, first message on the work link, and again after a silence of the
    broker (it may have restarted). `slots` = stages it runs at once; `queue` = stages
    more it takes, decided and held until one of its workers frees (the next stage
    starts without a round trip to the broker); `incarnation` is new at every start of
    the pool; a stage with tags goes only to a pool with all of them; `running` maps the
    attempts still in flight (from before a broker restart) to their stages: the broker
    starts no other attempt of those until they end."""

    TAG: ClassVar[str] = "pool_hello"
    pool: str
    pid: int
    slots: int
    incarnation: str = ""
    host: str = ""
    tags: list[str] = field(default_factory=list)
    running: dict[str, str] = field(default_factory=dict)
    queue: int = 0


@record
class PoolWelcome(Message):
    """Broker -> pool: accepted; heartbeat every `heartbeat_s`, lost after `liveness` misses."""

    TAG: ClassVar[str] = "pool_welcome"
    pool: str
    heartbeat_s: float
    liveness: int
    broker: str = ""  # the broker's id (new at every start of it)


@record
class Heartbeat(Message):
    """Both directions on the work link, from each side's own main loop."""

    TAG: ClassVar[str] = "heartbeat"
    pool: str


@record
class ManifestLoaded(Message):
    """Pool -> broker: the loader imported the pipeline; `manifest` is Manifest.to_wire().
    `load`: the `load_manifest` it answers (0: the pool's own first load). A pool answers
    only the last one it was sent; the broker takes only the answer to the last one it
    sent (an answer to an earlier one may cross it, read before a later save).
    `handed`: the pipeline the pool was forked with, which the broker of the process that
    forked it holds under this token (`pivot repro`'s engine); `manifest` is empty then."""

    TAG: ClassVar[str] = "manifest_loaded"
    pool: str
    manifest: dict[str, Any]
    load: int = 0
    handed: str = ""


@record
class ManifestFailed(Message):
    """Pool -> broker: the pipeline could not be loaded. `detail` = the user's traceback."""

    TAG: ClassVar[str] = "manifest_failed"
    pool: str
    message: str
    detail: str
    load: int = 0  # as manifest_loaded's


@record
class InstallChanged(Message):
    """Pool -> broker: the third-party code its workers import changed on disk (a folder
    on its `sys.path`, outside the project, changed: an install, upgrade or removal).
    Under `pivot up` the broker loads the pipeline again as for a code edit: the stages
    whose fingerprints name another version now run again, on new workers."""

    TAG: ClassVar[str] = "install_changed"
    folders: list[str]


@record
class WatcherReady(Message):
    """Watcher -> broker (changes link): the OS watch is registered; edits from now on
    are seen."""

    TAG: ClassVar[str] = "watcher_ready"
    pid: int


@record
class FilesChanged(Message):
    """Watcher -> broker (changes link): project-relative POSIX paths that were created,
    modified or deleted, ignore rules already applied. Coalesced: one message may stand
    for many file-system events. `settled`: a burst of completed writes (closed after
    writing, renamed into place, deleted) that is over, no file in it open for writing:
    the broker checks a lone save (a few paths, the last wave's outputs not counted)
    without waiting for a quiet window."""

    TAG: ClassVar[str] = "files_changed"
    paths: list[str]
    settled: bool = False


@record
class LoadManifest(Message):
    """Broker -> pool: load the pipeline again in a fresh loader process.

    With `restart_workers` (Python code changed) the pool cancels at once the stages no
    worker has begun, and replaces its workers once the new manifest is accepted: no
    stage starts on old code after a code change was seen. The stages begun run on
    until the broker cancels those whose code changed; the others end on their old
    workers, which take nothing else. A failed load keeps idle workers.
    `load` numbers the broker's loads (from 1); the answer names it.
    """

    TAG: ClassVar[str] = "load_manifest"
    restart_workers: bool = False
    load: int = 0


@record
class ManifestAccepted(Message):
    """Broker -> pool: the manifest the pool last sent is the engine's now (its graph is
    valid). A pool told to restart its workers replaces them only now: a reload the
    broker rejects (a cycle, two producers of one path) leaves the workers as they were."""

    TAG: ClassVar[str] = "manifest_accepted"


@record
class RunStage(Message):
    """Broker -> pool: decide skip-or-run for one stage and run it if stale.

    `after`: attempts of its upstream stages given to this same pool and not finished
    when it was sent. The pool holds it until each has ended as ran, skipped or restored
    here, then decides it (a chain's next stage starts without a round trip to the
    broker); when one ends otherwise, or is not this pool's, it reports it `lost`,
    unstarted, and the broker, which drops it on that upstream result, runs it again
    when its upstream has finished."""

    TAG: ClassVar[str] = "run_stage"
    wave: int
    stage: str
    attempt: str
    force: bool
    after: list[str] = field(default_factory=list)


@record
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


@record
class WavePlan(Message):
    """Pool -> broker: the stages of `wave` found up to date (skipped without dispatch)."""

    TAG: ClassVar[str] = "wave_plan"
    wave: int
    up_to_date: list[str]


@record
class StageRunning(Message):
    """Pool -> broker: the stage was found stale and was handed to a worker."""

    TAG: ClassVar[str] = "stage_running"
    attempt: str
    reason_code: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


@record
class StageOutput(Message):
    """Pool -> broker, best effort (never resent): what a running attempt printed since
    the last one, in order. Each line is (stream, text, partial): `partial` is the
    latest state of a line not ended yet (a progress bar), shown in place of the last."""

    TAG: ClassVar[str] = "stage_output"
    attempt: str
    lines: list[tuple[str, str, bool]]


@record
class StageResult(Message):
    """Pool -> broker, resent until acknowledged by `ResultAck`.

    `logs` holds Pivot's (stream "pivot", line) notes on how it was decided (a stage's
    output was streamed while it ran, as `StageOutput`).
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
    incarnation: str = ""  # of the pool that ran it: a result of an older one is rejected


@record
class ResultAck(Message):
    """Broker -> pool: the result of `attempt` is recorded; stop resending it."""

    TAG: ClassVar[str] = "result_ack"
    attempt: str


@record
class CancelStage(Message):
    """Broker -> pool: stop `attempt` now (`pivot up --restart`: its inputs changed while
    it ran). The pool answers with a `cancelled` StageResult, or with the attempt's real
    result when it finished first."""

    TAG: ClassVar[str] = "cancel_stage"
    attempt: str
    reason: str


@record
class PoolLeaving(Message):
    """Pool -> broker: this pool stops (SIGTERM). Send it nothing new; what it runs comes
    back as `lost` results (run again elsewhere, uncharged); then forget it."""

    TAG: ClassVar[str] = "pool_leaving"
    pool: str


@record
class PoolShutdown(Message):
    """Broker -> pool: finish nothing new, stop workers, exit."""

    TAG: ClassVar[str] = "pool_shutdown"


# --- control link: client <-> broker --------------------------------------------------


@record
class RunRequest(Message):
    """Client -> broker: run `stages` (all when empty) as `select` says: "upstream" (and
    what they depend on), "single" (alone) or "downstream" (and what follows them);
    with `glob`, names are shell patterns (pivot/pipeline/select.py)."""

    TAG: ClassVar[str] = "run_request"
    stages: list[str]
    force: bool
    keep_going: bool
    select: str = "upstream"
    glob: bool = False


@record
class RunReply(Message):
    """Broker -> client: whether the run was queued; `message` says why not."""

    TAG: ClassVar[str] = "run_reply"
    accepted: bool
    message: str


@record
class SnapshotRequest(Message):
    TAG: ClassVar[str] = "snapshot_request"


@record
class Snapshot(Message):
    """Broker -> client: everything a display shows, as of state event `seq`.

    `stages` maps name -> its StageView. `pipeline_error` is the `pipeline_invalid` in
    force (None once the pipeline loads), `last_wave` the last `wave_finished`, or None:
    each on the wire as its message's body. `trigger` and `paths` are those of wave `wave` (the last
    change); `logs` maps a stage to the last lines (stream, line) of its last run.
    """

    TAG: ClassVar[str] = "snapshot"
    seq: int
    log_seq: int
    wave: int
    wave_running: bool
    stages: dict[str, StageView]
    order: list[str]
    pipeline_error: PipelineInvalid | None
    last_wave: WaveFinished | None
    paused: bool = False
    trigger: str = "run"
    paths: list[str] = field(default_factory=list)
    logs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


@record
class PsRequest(Message):
    """Client -> broker: the engine's processes (`pivot ps`); answered with `ps_reply`."""

    TAG: ClassVar[str] = "ps_request"


@record
class PsReply(Message):
    """Broker -> client: one map per process: `role`, `name`, `pid`, `host`, `uptime_s`,
    `endpoint`, `dropped` (the broker), `slots`, `busy`, `tags`, `current` (its pipeline matches
    the engine's, checked), `mismatched` (stages it loaded other code for) (pools)."""

    TAG: ClassVar[str] = "ps_reply"
    processes: list[dict[str, Any]]


@record
class PoolExited(Message):
    """Supervisor -> broker: the pool process it started has exited."""

    TAG: ClassVar[str] = "pool_exited"
    pool: str
    returncode: int


@record
class PauseRequest(Message):
    """Client -> broker: stop (`paused`) or resume starting waves; answered with `RunReply`.

    While paused, changes are still collected; the wave in flight finishes."""

    TAG: ClassVar[str] = "pause_request"
    paused: bool


@record
class ShutdownRequest(Message):
    """Client -> broker: stop the pools; the broker answers with `ShutdownReply`.

    Nothing new starts. Stages running get `grace_s` seconds to finish (their outputs
    are committed); then they are cancelled (nothing of them is committed). A second
    request with a shorter grace cuts the wait short."""

    TAG: ClassVar[str] = "shutdown_request"
    grace_s: float = 0.0


@record
class ShutdownReply(Message):
    """Broker -> client: everything stopped; `seq` is the last state event published (a
    display that wants to show how the stages ended reads up to it)."""

    TAG: ClassVar[str] = "shutdown_reply"
    seq: int = 0


# --- events: broker XPUB -> displays ---------------------------------------------------
# State events carry the state sequence number in the envelope; logs carry their own.


@record
class EventsWelcome(Message):
    """Published whenever a subscription arrives: the subscriber is now live at `seq`."""

    TAG: ClassVar[str] = "welcome"
    seq: int


@record
class BusTick(Message):
    """Published every second: the latest state `seq`, so a display sees a trailing gap."""

    TAG: ClassVar[str] = "tick"
    seq: int
    log_seq: int


@record
class PipelineLoaded(Message):
    TAG: ClassVar[str] = "pipeline_loaded"
    added: list[str]
    removed: list[str]
    changed: list[str]


@record
class PipelineInvalid(Message):
    TAG: ClassVar[str] = "pipeline_invalid"
    message: str
    detail: str


@record
class WaveStarted(Message):
    TAG: ClassVar[str] = "wave_started"
    wave: int
    stages: list[str]
    # What started it: "run" (a request), "files" (data changed), "code" (Python code
    # changed), "params" (params.yaml changed); `paths` are the changed paths.
    trigger: str = "run"
    paths: list[str] = field(default_factory=list)


@record
class StageStarted(Message):
    """A stage was found stale and started running (skipped stages never start)."""

    TAG: ClassVar[str] = "stage_started"
    wave: int
    stage: str
    reason_code: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


@record
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


@record
class LogLine(Message):
    TAG: ClassVar[str] = "log"
    stage: str
    stream: str
    line: str
    partial: bool = False  # the latest state of a line not ended yet: shown in place


@record
class Paused(Message):
    """No new wave starts until `resumed` (the live view's `p` key). Sent again, with
    `waiting` (the changed paths whose wave waits), each time a change is held back."""

    TAG: ClassVar[str] = "paused"
    waiting: list[str] = field(default_factory=list)


@record
class Resumed(Message):
    TAG: ClassVar[str] = "resumed"


@record
class EngineStopped(Message):
    """The engine stopped: the last event; an attached display ends on it. `reason` is
    "" for a requested stop, else why the engine gave up (its processes kept crashing)."""

    TAG: ClassVar[str] = "engine_stopped"
    reason: str = ""


@record
class Notice(Message):
    """Something the engine did on its own that a user should know (a pool or watcher
    it started exited and was restarted)."""

    TAG: ClassVar[str] = "notice"
    message: str


@record
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
    # Still running, taken over by the next wave: a code change stopped this one and
    # left their code as it was (their outcome comes in that wave).
    moved: list[str] = field(default_factory=list)


@record
class PoolLost(Message):
    TAG: ClassVar[str] = "pool_lost"
    pool: str
    reason: str
    stages: list[str]


MESSAGES: tuple[type[Message], ...] = (
    Hello,
    HelloReply,
    Refused,
    PoolHello,
    PoolWelcome,
    Heartbeat,
    ManifestLoaded,
    ManifestFailed,
    LoadManifest,
    ManifestAccepted,
    InstallChanged,
    WatcherReady,
    FilesChanged,
    RunStage,
    PlanWave,
    WavePlan,
    StageRunning,
    StageOutput,
    StageResult,
    ResultAck,
    CancelStage,
    PoolLeaving,
    PoolShutdown,
    RunRequest,
    RunReply,
    SnapshotRequest,
    Snapshot,
    PsRequest,
    PsReply,
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
    Notice,
    PoolLost,
)
