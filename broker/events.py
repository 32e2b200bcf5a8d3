"""Typed inputs and outputs of the broker's state machine (no I/O, no clock reads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pivot.pipeline.graph import StageGraph
from pivot.pipeline.manifest import Manifest
from pivot.protocol.messages import Message

__all__ = [
    "ChangesConfirmed",
    "Command",
    "ConfirmChanges",
    "Event",
    "FilesReported",
    "LoadOwnManifest",
    "ManifestArrived",
    "ManifestRejected",
    "Note",
    "Noticed",
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


@dataclass(frozen=True)
class PoolJoined:
    pool: str
    slots: int
    now: float
    incarnation: str = ""
    tags: frozenset[str] = frozenset()
    host: str = ""
    pid: int = 0
    running: tuple[tuple[str, str], ...] = ()  # (attempt, stage) still in flight at hello


@dataclass(frozen=True)
class PoolHeard:
    """Any message from a pool proves it alive."""

    pool: str
    now: float


@dataclass(frozen=True)
class PoolGone:
    """A pool is gone. `confirmed`: its processes are known dead (its supervisor killed
    its group and saw it exit), so its stages may run elsewhere at once; otherwise (no
    heartbeat) only after the fencing time."""

    pool: str
    reason: str
    confirmed: bool = True
    leaving: bool = False  # it said goodbye: nothing new for it; forgotten once its results are in


@dataclass(frozen=True)
class ManifestArrived:
    pool: str  # whose loader made it
    manifest: Manifest
    graph: StageGraph


@dataclass(frozen=True)
class PoolManifest:
    """A pool that is not the engine's manifest source loaded the pipeline: its
    manifest (None: its load failed, `error` says why) is compared with the engine's."""

    pool: str
    manifest: Manifest | None
    error: str = ""


@dataclass(frozen=True)
class ManifestRejected:
    message: str
    detail: str


@dataclass(frozen=True)
class RunRequested:
    client: bytes
    stages: tuple[str, ...]
    force: bool
    keep_going: bool
    cause: str = ""  # the run_request's message id


@dataclass(frozen=True)
class SnapshotRequested:
    client: bytes


@dataclass(frozen=True)
class PauseRequested:
    client: bytes
    paused: bool


@dataclass(frozen=True)
class ShutdownRequested:
    client: bytes  # b"": the broker's own (a signal, its owner gone, giving up)
    grace_s: float = 0.0
    now: float = 0.0
    reason: str = ""  # set when the engine gives up: engine_stopped carries it


@dataclass(frozen=True)
class Noticed:
    """Something to tell the displays (a supervised role was restarted)."""

    message: str


@dataclass(frozen=True)
class StageRunningReported:
    pool: str
    attempt: str
    reason_code: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WavePlanned:
    pool: str
    wave: int
    up_to_date: tuple[str, ...]


@dataclass(frozen=True)
class ResultReceived:
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


@dataclass(frozen=True)
class FilesReported:
    """The watcher saw these paths change (raw: not yet checked against the state cache)."""

    paths: tuple[str, ...]
    now: float
    cause: str = ""  # the files_changed message's id


@dataclass(frozen=True)
class ChangesConfirmed:
    """Of the paths in the last `ConfirmChanges`, those whose content really changed."""

    paths: tuple[str, ...]


@dataclass(frozen=True)
class WatcherJoined:
    pid: int


@dataclass(frozen=True)
class Tick:
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
    | ResultReceived
    | WavePlanned
    | FilesReported
    | ChangesConfirmed
    | WatcherJoined
    | Noticed
    | Tick
)

# --- commands out ------------------------------------------------------------------


@dataclass(frozen=True)
class SendWork:
    pool: str
    msg: Message


@dataclass(frozen=True)
class Reply:
    client: bytes
    msg: Message


@dataclass(frozen=True)
class ConfirmChanges:
    """Check these paths against the state cache (hashing, off the loop); answer with
    `ChangesConfirmed`."""

    paths: tuple[str, ...]


@dataclass(frozen=True)
class Publish:
    """A state event, with its sequence number."""

    msg: Message
    seq: int
    parent: str | None = None  # the id of the message that caused it


@dataclass(frozen=True)
class PublishLog:
    """A log line, with its own sequence number (log lines may be dropped)."""

    msg: Message
    seq: int


@dataclass(frozen=True)
class LoadOwnManifest:
    """Load the pipeline in a loader process beside the broker (the broker is its own
    manifest source); answer with ManifestArrived(pool="") or ManifestRejected."""


@dataclass(frozen=True)
class Note:
    """Something the service should log (a warning: a message the state refused)."""

    text: str


Command = SendWork | Reply | Publish | PublishLog | ConfirmChanges | Note | LoadOwnManifest
