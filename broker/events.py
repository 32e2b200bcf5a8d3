"""Typed inputs and outputs of the broker's state machine (no I/O, no clock reads)."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from pivot.pipeline.graph import StageGraph
from pivot.pipeline.manifest import Manifest
from pivot.protocol.messages import Message
from pivot.protocol.record import Record, record

__all__ = [
    "ChangesConfirmed",
    "Command",
    "ConfirmChanges",
    "Event",
    "FilesReported",
    "InstallReported",
    "LoadOwnManifest",
    "ManifestArrived",
    "ManifestRejected",
    "Note",
    "Noticed",
    "OutputReceived",
    "PauseRequested",
    "PoolGone",
    "PoolHeard",
    "PoolJoined",
    "PoolManifest",
    "Publish",
    "PublishLog",
    "Reply",
    "ResultReceived",
    "RunRequested",
    "SendWork",
    "ShutdownRequested",
    "SnapshotRequested",
    "StageRunningReported",
    "Tick",
    "WatcherJoined",
    "WavePlanned",
]

# --- events in ---------------------------------------------------------------------


@record
class PoolJoined(Record):
    pool: str
    slots: int
    now: float
    incarnation: str = ""
    tags: frozenset[str] = frozenset()
    host: str = ""
    pid: int = 0
    running: tuple[tuple[str, str], ...] = ()  # (attempt, stage) still in flight at hello
    queue: int = 0  # stages it holds decided beyond its slots


@record
class PoolHeard(Record):
    """Any message from a pool proves it alive."""

    pool: str
    now: float


@record
class PoolGone(Record):
    """A pool is gone. `confirmed`: its processes are known dead (its supervisor killed
    its group and saw it exit), so its stages may run elsewhere at once; otherwise (no
    heartbeat) only after the fencing time."""

    pool: str
    reason: str
    confirmed: bool = True
    leaving: bool = False  # it said goodbye: nothing new for it; forgotten once its results are in


@record
class ManifestArrived(Record):
    pool: str  # whose loader made it
    manifest: Manifest
    graph: StageGraph
    load: int = 0  # the load it answers (LoadManifest, LoadOwnManifest; 0: a first load)


@record
class PoolManifest(Record):
    """A pool that is not the engine's manifest source loaded the pipeline: its
    manifest (None: its load failed, `error` says why) is compared with the engine's."""

    pool: str
    manifest: Manifest | None
    error: str = ""
    load: int = 0


@record
class ManifestRejected(Record):
    message: str
    detail: str
    pool: str = ""  # whose loader failed ("": the broker's own)
    load: int = 0


@record
class RunRequested(Record):
    client: bytes
    stages: tuple[str, ...]
    force: bool
    keep_going: bool
    cause: str = ""  # the run_request's message id
    select: str = "upstream"  # pivot/pipeline/select.py: Selection
    glob: bool = False


@record
class SnapshotRequested(Record):
    client: bytes


@record
class PauseRequested(Record):
    client: bytes
    paused: bool


@record
class ShutdownRequested(Record):
    client: bytes  # b"": the broker's own (a signal, its owner gone, giving up)
    grace_s: float = 0.0
    now: float = 0.0
    reason: str = ""  # set when the engine gives up: engine_stopped carries it


@record
class Noticed(Record):
    """Something to tell the displays (a supervised role was restarted)."""

    message: str


@record
class StageRunningReported(Record):
    pool: str
    attempt: str
    reason_code: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


@record
class OutputReceived(Record):
    """What a running attempt printed (stream, text, partial), from its pool."""

    pool: str
    attempt: str
    lines: tuple[tuple[str, str, bool], ...]


@record
class WavePlanned(Record):
    pool: str
    wave: int
    up_to_date: tuple[str, ...]


@record
class ResultReceived(Record):
    pool: str
    attempt: str
    status: str
    reason_code: str
    reason: str
    duration_s: float
    error: str | None
    logs: tuple[tuple[str, str], ...]
    details: dict[str, Any] = field(default_factory=dict)
    incarnation: str = ""  # of the pool that ran it ("" = not checked)


@record
class FilesReported(Record):
    """The watcher saw these paths change (raw: not yet checked against the state cache)."""

    paths: tuple[str, ...]
    now: float
    cause: str = ""  # the files_changed message's id
    settled: bool = False  # every write in it complete, its burst over (a save, maybe)


@record
class ChangesConfirmed(Record):
    """Of the paths in the last `ConfirmChanges`, those whose content really changed."""

    paths: tuple[str, ...]


@record
class InstallReported(Record):
    """A pool's `install_changed`: third-party code on its `sys.path` changed."""

    pool: str
    folders: tuple[str, ...]


@record
class WatcherJoined(Record):
    pid: int


@record
class Tick(Record):
    now: float


Event = (
    PoolJoined
    | PoolHeard
    | PoolGone
    | ManifestArrived
    | PoolManifest
    | ManifestRejected
    | RunRequested
    | SnapshotRequested
    | ShutdownRequested
    | PauseRequested
    | StageRunningReported
    | OutputReceived
    | ResultReceived
    | WavePlanned
    | FilesReported
    | ChangesConfirmed
    | InstallReported
    | WatcherJoined
    | Noticed
    | Tick
)

# --- commands out ------------------------------------------------------------------


@record
class SendWork(Record):
    pool: str
    msg: Message


@record
class Reply(Record):
    client: bytes
    msg: Message


@record
class ConfirmChanges(Record):
    """Check these paths against the state cache (hashing, off the loop); answer with
    `ChangesConfirmed`. `unsettled`: stages whose last run here failed or was cancelled
    (what it left of its outputs is no hand edit)."""

    paths: tuple[str, ...]
    unsettled: frozenset[str] = frozenset()


@record
class Publish(Record):
    """A state event, with its sequence number."""

    msg: Message
    seq: int
    parent: str | None = None  # the id of the message that caused it


@record
class PublishLog(Record):
    """A log line, with its own sequence number (log lines may be dropped)."""

    msg: Message
    seq: int


@record
class LoadOwnManifest(Record):
    """Load the pipeline in a loader process beside the broker (the broker is its own
    manifest source); answer with ManifestArrived(pool="") or ManifestRejected, naming
    `load`."""

    load: int = 0


@record
class Note(Record):
    """Something the service should log (a warning: a message the state refused)."""

    text: str


Command = SendWork | Reply | Publish | PublishLog | ConfirmChanges | Note | LoadOwnManifest
