"""Unit tests for the wire codec (pivot.protocol.codec) and the manifest's wire form.

No sockets, no sleeps: everything here is pure encode/decode.
"""

from __future__ import annotations

import dataclasses
import pickle
import time
from collections.abc import Callable
from typing import Any, ClassVar

import msgpack
import pytest

from pivot.errors import ProtocolError
from pivot.pipeline.manifest import ROW, Manifest, StageSpec
from pivot.protocol import codec
from pivot.protocol.codec import PROTOCOL_VERSION, Envelope, decode, encode, new_id
from pivot.protocol.messages import (
    MESSAGES,
    BusTick,
    CancelStage,
    EngineStopped,
    EventsWelcome,
    FilesChanged,
    Heartbeat,
    Hello,
    HelloReply,
    InstallChanged,
    LoadManifest,
    LogLine,
    ManifestAccepted,
    ManifestFailed,
    ManifestLoaded,
    Message,
    Notice,
    Paused,
    PauseRequest,
    PipelineInvalid,
    PipelineLoaded,
    PlanWave,
    PoolExited,
    PoolHello,
    PoolLeaving,
    PoolLost,
    PoolShutdown,
    PoolWelcome,
    PsReply,
    PsRequest,
    Refused,
    ResultAck,
    Resumed,
    RunReply,
    RunRequest,
    RunStage,
    ShutdownReply,
    ShutdownRequest,
    Snapshot,
    SnapshotRequest,
    StageFinished,
    StageOutput,
    StageResult,
    StageRunning,
    StageStarted,
    StageView,
    WatcherReady,
    WaveFinished,
    WavePlan,
    WaveStarted,
)
from pivot.protocol.record import record

# --- samples -----------------------------------------------------------------------------


def _manifest() -> Manifest:
    return Manifest(
        stages=(
            StageSpec(
                name="prepare",
                module="pipeline",
                func="pipeline.prepare",
                deps=("data/raw.csv",),
                outs=("data/clean.csv",),
                metrics=(),
                params={"split": 0.2, "seed": 7},
                fingerprint="3f9a1c",
            ),
            StageSpec(
                name="train",
                module="pipeline.train",
                func="pipeline.train.train",
                deps=("data/clean.csv", "src/model.py"),
                outs=("model.pkl", "metrics.json"),
                metrics=("metrics.json",),
                params={"lr": 0.01, "layers": [64, 32], "opt": {"name": "adam", "nesterov": True}},
                fingerprint="b27e40",
            ),
        ),
        sources=("pipeline/__init__.py", "pipeline/train.py"),
        warnings=("stage 'train' writes outside the project",),
    )


_STAGE_ROW = {
    "status": "failed",
    "reason_code": "code_changed",
    "reason": "pipeline.train.train changed",
    "duration_s": 12.75,
    "wave": 3,
    "error": "ValueError: bad shape",
}

_LAST_WAVE = WaveFinished(2, ran=["prepare"], restored=[], skipped=[], failed=[], blocked=[], cancelled=[], lost=["x"])

# One realistic instance per wire message, every field set away from its default.
SAMPLES: dict[type[Message], Message] = {
    Hello: Hello(role="pool", name="gpu-box-1", pid=4242, host="gpu-box", project="9f0e1d2c"),
    HelloReply: HelloReply(
        broker="a1b2c3d4e5f6", pid=4000, host="dev", work="tcp://0.0.0.0:41001",
        events="tcp://0.0.0.0:41002", changes="tcp://0.0.0.0:41003", project="9f0e1d2c",
        heartbeat_s=0.5, liveness=3, access="operator",
    ),
    Refused: Refused(code="version", reason="protocol version 3 is not 4", version=4),
    PoolHello: PoolHello(
        pool="pool-1", pid=4242, slots=4, incarnation="77aa", host="gpu-box", tags=["gpu"],
        running={"a1w3-7": "train"}, queue=4,
    ),
    PoolWelcome: PoolWelcome(pool="pool-1", heartbeat_s=0.5, liveness=3, broker="a1b2c3d4e5f6"),
    Heartbeat: Heartbeat(pool="pool-1"),
    ManifestLoaded: ManifestLoaded(pool="pool-1", manifest=_manifest().to_wire(), load=3, handed="a1b2"),
    ManifestFailed: ManifestFailed(
        pool="pool-1",
        message="pipeline.py failed to import: NameError",
        detail='Traceback (most recent call last):\n  File "pipeline.py", line 3\nNameError: x',
        load=3,
    ),
    LoadManifest: LoadManifest(restart_workers=True, load=3),
    ManifestAccepted: ManifestAccepted(),
    WatcherReady: WatcherReady(pid=4243),
    InstallChanged: InstallChanged(folders=["/venv/lib/python3.11/site-packages"]),
    FilesChanged: FilesChanged(paths=["data/raw.csv", "helpers.py"], settled=True),
    RunStage: RunStage(wave=3, stage="train", attempt="1a2b-c3d4-7", force=True, after=["1a2b-c3d4-6"]),
    PlanWave: PlanWave(wave=3, stages=["prepare", "train"], upstream={"prepare": [], "train": ["prepare"]}),
    WavePlan: WavePlan(wave=3, up_to_date=["prepare"]),
    StageRunning: StageRunning(
        attempt="1a2b-c3d4-7",
        reason_code="deps_changed",
        reason="dep changed: data/clean.csv",
        details={"paths": ["data/clean.csv"]},
    ),
    StageOutput: StageOutput(
        attempt="1a2b-c3d4-7", lines=[("stdout", "epoch 1", False), ("stderr", " 50%|##", True)],
    ),
    StageResult: StageResult(
        attempt="1a2b-c3d4-7",
        stage="train",
        status="failed",
        reason_code="dep_changed",
        reason="data/clean.csv changed",
        duration_s=12.75,
        error="Traceback ...\nValueError: bad shape",
        logs=[("stdout", "epoch 1/10"), ("stderr", "warning: slow")],
        details={"paths": ["data/clean.csv"]},
        incarnation="77aa",
    ),
    ResultAck: ResultAck(attempt="1a2b-c3d4-7"),
    CancelStage: CancelStage(attempt="w3-17", reason="its inputs changed while it ran (data/raw.csv)"),
    PoolLeaving: PoolLeaving(pool="gpu-box-1"),
    PoolShutdown: PoolShutdown(),
    RunRequest: RunRequest(stages=["train", "evaluate"], force=True, keep_going=True, select="single", glob=True),
    RunReply: RunReply(accepted=False, message="the pipeline is invalid"),
    SnapshotRequest: SnapshotRequest(),
    Snapshot: Snapshot(
        seq=42,
        log_seq=17,
        wave=3,
        wave_running=True,
        stages={
            "prepare": StageView(**{**_STAGE_ROW, "status": "ran", "error": None}),
            "train": StageView(**_STAGE_ROW),
        },
        order=["prepare", "train"],
        pipeline_error=PipelineInvalid("stage 'x' is defined twice", "the detail"),
        last_wave=_LAST_WAVE,
        paused=True,
        trigger="files",
        paths=["data/raw.csv"],
        logs={"train": [("stdout", "epoch 1"), ("stderr", "warning: slow")]},
    ),
    PsRequest: PsRequest(),
    PsReply: PsReply(processes=[{"role": "pool", "name": "pool-1", "pid": 4242, "slots": 2, "tags": ["gpu"]}]),
    PoolExited: PoolExited(pool="pool-1", returncode=-9),
    ShutdownRequest: ShutdownRequest(grace_s=5.0),
    PauseRequest: PauseRequest(paused=True),
    Paused: Paused(waiting=["data/raw.csv"]),
    Resumed: Resumed(),
    EngineStopped: EngineStopped(reason="the worker pool crashed 6 times within 60 s"),
    Notice: Notice(message="the worker pool stopped (it was killed by SIGKILL); restarting it"),
    ShutdownReply: ShutdownReply(seq=42),
    EventsWelcome: EventsWelcome(seq=42),
    BusTick: BusTick(seq=42, log_seq=17),
    PipelineLoaded: PipelineLoaded(added=["evaluate"], removed=["old"], changed=["train"]),
    PipelineInvalid: PipelineInvalid(message="cycle: a -> b -> a", detail="stage a, stage b"),
    WaveStarted: WaveStarted(wave=3, stages=["prepare", "train"], trigger="files", paths=["data/raw.csv"]),
    StageStarted: StageStarted(
        wave=3,
        stage="train",
        reason_code="params_changed",
        reason="params changed: lr 0.1 -> 0.01",
        details={"changes": {"lr": [0.1, 0.01]}},
    ),
    StageFinished: StageFinished(
        wave=3,
        stage="train",
        status="failed",
        reason_code="param_changed",
        reason="params.lr 0.1 -> 0.01",
        duration_s=3.25,
        error="ValueError: bad shape",
        details={"changes": {"lr": [0.1, 0.01]}},
    ),
    LogLine: LogLine(stage="train", stream="stderr", line="epoch 2/10 loss=0.31 ünïcode", partial=True),
    WaveFinished: WaveFinished(
        wave=3,
        ran=["prepare"],
        restored=["fit"],
        skipped=["fetch"],
        failed=["train"],
        blocked=["evaluate"],
        cancelled=["report"],
        lost=["upload"],
        moved=["long"],
    ),
    PoolLost: PoolLost(pool="pool-1", reason="missed 3 heartbeats", stages=["train"]),
}


# --- round trips -------------------------------------------------------------------------


def test_samples_cover_every_message_class() -> None:
    missing = [cls.__name__ for cls in MESSAGES if cls not in SAMPLES]
    stale = [cls.__name__ for cls in SAMPLES if cls not in MESSAGES]
    assert not missing, f"add a sample to SAMPLES for: {missing}"
    assert not stale, f"SAMPLES holds classes not in MESSAGES: {stale}"
    for cls, sample in SAMPLES.items():
        assert type(sample) is cls


def test_samples_use_non_default_values() -> None:
    for cls, sample in SAMPLES.items():
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                continue
            assert getattr(sample, f.name) != default, f"{cls.__name__}.{f.name} is default"


@pytest.mark.parametrize("cls", MESSAGES, ids=[c.TAG for c in MESSAGES])
def test_round_trip(cls: type[Message]) -> None:
    assert cls in SAMPLES, f"no sample for {cls.__name__}: add one to SAMPLES"
    sample = SAMPLES[cls]
    data = encode(
        sample, sender="broker", seq=99, parent="abc-1", msg_id="abc-2", ts=1700000000.125
    )
    assert isinstance(data, bytes)
    env = decode(data)
    assert env == Envelope(sample, "abc-2", "abc-1", "broker", 99, 1700000000.125)
    assert type(env.msg) is cls
    for f in dataclasses.fields(cls):
        # same value *and* same type: no int/float or list/tuple drift
        assert type(getattr(env.msg, f.name)) is type(getattr(sample, f.name)), f.name
    # decoding is stable: re-encoding the decoded message gives identical bytes
    again = encode(
        env.msg, sender=env.sender, seq=env.seq, parent=env.parent, msg_id=env.id, ts=env.ts
    )
    assert again == data


@pytest.mark.parametrize("cls", MESSAGES, ids=[c.TAG for c in MESSAGES])
def test_round_trip_without_parent(cls: type[Message]) -> None:
    env = decode(encode(SAMPLES[cls], sender="pool-7", msg_id="x-1", ts=12.5))
    assert env == Envelope(SAMPLES[cls], "x-1", None, "pool-7", 0, 12.5)


def test_encode_fills_id_and_ts() -> None:
    before = time.time()
    env1 = decode(encode(Heartbeat(pool="p"), sender="p"))
    env2 = decode(encode(Heartbeat(pool="p"), sender="p"))
    after = time.time()
    assert isinstance(env1.id, str) and env1.id
    assert env1.id != env2.id
    assert before <= env1.ts <= env2.ts <= after
    assert isinstance(env1.ts, float)


def test_new_id_is_unique() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(isinstance(i, str) for i in ids)


def test_integer_ts_decodes_as_float() -> None:
    data = msgpack.packb(_wire(t=1700000000), use_bin_type=True)
    env = decode(data)
    assert env.ts == 1700000000.0
    assert isinstance(env.ts, float)


def test_wire_tags_are_unique_and_registered() -> None:
    tags = [cls.TAG for cls in MESSAGES]
    assert len(tags) == len(set(tags))
    assert all(tags)
    assert set(codec._build_registry()) == set(tags)


# --- golden bytes ------------------------------------------------------------------------
# If one of these fails, the wire format changed: bump PROTOCOL_VERSION, update
# docs/protocol.md (Changelog) and only then paste the new bytes here.

GOLDEN_POOL_HELLO = (
    b"\x88\xa1v\x10\xa1k\xaapool_hello\xa2id\xab1a2b-c3d4-1\xa1p\xc0\xa1s\xa6pool-1"
    b"\xa1n\x00\xa1t\xcbA\xd9T\xfc@\x10\x00\x00\xa1b\x88\xa4pool\xa6pool-1\xa3pid"
    b"\xcd\x10\x92\xa5slots\x04\xabincarnation\xa0\xa4host\xa0\xa4tags\x90\xa7running\x80"
    b"\xa5queue\x00"
)

GOLDEN_STAGE_FINISHED = (
    b"\x88\xa1v\x10\xa1k\xaestage_finished\xa2id\xab5e6f-7a8b-9\xa1p\xab1a2b-c3d4-2"
    b"\xa1s\xa6broker\xa1n\x07\xa1t\xcbA\xd9T\xfc@`\x00\x00\xa1b\x88\xa4wave\x03"
    b"\xa5stage\xa5train\xa6status\xa3ran\xabreason_code\xabdep_changed\xa6reason"
    b"\xb4data/raw.csv changed\xaaduration_s\xcb?\xf8\x00\x00\x00\x00\x00\x00\xa5error\xc0"
    b"\xa7details\x80"
)


def test_golden_pool_hello() -> None:
    msg = PoolHello(pool="pool-1", pid=4242, slots=4)
    kwargs: dict[str, Any] = {
        "sender": "pool-1",
        "seq": 0,
        "parent": None,
        "msg_id": "1a2b-c3d4-1",
        "ts": 1700000000.25,
    }
    assert encode(msg, **kwargs) == GOLDEN_POOL_HELLO
    assert decode(GOLDEN_POOL_HELLO) == Envelope(
        msg, "1a2b-c3d4-1", None, "pool-1", 0, 1700000000.25
    )


def test_golden_stage_finished() -> None:
    msg = StageFinished(
        wave=3,
        stage="train",
        status="ran",
        reason_code="dep_changed",
        reason="data/raw.csv changed",
        duration_s=1.5,
        error=None,
    )
    kwargs: dict[str, Any] = {
        "sender": "broker",
        "seq": 7,
        "parent": "1a2b-c3d4-2",
        "msg_id": "5e6f-7a8b-9",
        "ts": 1700000001.5,
    }
    assert encode(msg, **kwargs) == GOLDEN_STAGE_FINISHED
    assert decode(GOLDEN_STAGE_FINISHED) == Envelope(
        msg, "5e6f-7a8b-9", "1a2b-c3d4-2", "broker", 7, 1700000001.5
    )


def test_refused_is_read_whatever_version_its_envelope_names() -> None:
    """`refused` is frozen: a peer of another version must read why it was refused."""
    wire = msgpack.unpackb(encode(Refused("version", "too old", 16), sender="broker"))
    wire["v"] = 17
    env = decode(msgpack.packb(wire))
    assert env.msg == Refused("version", "too old", 16)
    wire["k"] = "hello"  # any other kind of another version is refused, naming both
    wire["b"] = {"role": "pool", "name": "p", "pid": 1, "host": "h", "project": ""}
    with pytest.raises(codec.VersionMismatch, match="protocol version 17, expected 16") as info:
        decode(msgpack.packb(wire))
    assert (info.value.version, info.value.kind, info.value.sender) == (17, "hello", "broker")


def test_protocol_version_is_sixteen() -> None:
    # The golden bytes above encode version 16; changing it must be deliberate.
    assert PROTOCOL_VERSION == 16


# --- strict decoding ---------------------------------------------------------------------


def _wire(**overrides: Any) -> dict[str, Any]:
    """A valid `run_request` envelope as a plain dict; keyword args replace keys."""
    wire: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "k": "run_request",
        "id": "abc-1",
        "p": None,
        "s": "client",
        "n": 0,
        "t": 1700000000.5,
        "b": {"stages": ["train"], "force": False, "keep_going": True, "select": "upstream", "glob": False},
    }
    wire.update(overrides)
    return wire


def _pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def _msg(kind: str, body: dict[str, Any]) -> bytes:
    return _pack(_wire(k=kind, b=body))


def _body(cls: type[Message], **overrides: Any) -> dict[str, Any]:
    sample = SAMPLES[cls]
    body = msgpack.unpackb(encode(sample, sender="t"))["b"]  # as on the wire: records as maps
    body.update(overrides)
    return body


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


def test_valid_hand_built_payload_decodes() -> None:
    # sanity check for the builders the malformed cases below start from
    env = decode(_pack(_wire()))
    assert env.msg == RunRequest(stages=["train"], force=False, keep_going=True)


BAD_PAYLOADS: list[tuple[str, Callable[[], bytes], str]] = [
    # not msgpack at all
    ("garbage", lambda: b"\xc1\xff garbage", "not a msgpack message"),
    ("empty", lambda: b"", "not a msgpack message"),
    ("truncated", lambda: _pack(_wire())[:-3], "not a msgpack message"),
    ("trailing_data", lambda: _pack(_wire()) + b"\x00", "not a msgpack message"),
    ("pickle", lambda: pickle.dumps(_wire()), "not a msgpack message"),
    ("int_map_key", lambda: _pack({1: 2}), "not a msgpack message"),
    # not a map
    ("list", lambda: _pack([1, "run_request"]), "envelope is a list, not a map"),
    ("int", lambda: _pack(7), "envelope is a int, not a map"),
    ("str", lambda: _pack("run_request"), "envelope is a str, not a map"),
    ("nil", lambda: _pack(None), "envelope is a NoneType, not a map"),
    # version
    ("version_next", lambda: _pack(_wire(v=PROTOCOL_VERSION + 1)),
     f"protocol version {PROTOCOL_VERSION + 1}, expected {PROTOCOL_VERSION}"),
    ("version_3", lambda: _pack(_wire(v=3)), f"protocol version 3, expected {PROTOCOL_VERSION}"),
    ("version_str", lambda: _pack(_wire(v=str(PROTOCOL_VERSION))),
     f"protocol version '{PROTOCOL_VERSION}', expected {PROTOCOL_VERSION}"),
    ("version_nil", lambda: _pack(_wire(v=None)), f"protocol version None, expected {PROTOCOL_VERSION}"),
    # kind
    ("unknown_kind", lambda: _pack(_wire(k="launch_missiles")), "unknown message kind 'launch_missiles'"),
    ("empty_kind", lambda: _pack(_wire(k="")), "unknown message kind ''"),
    ("int_kind", lambda: _pack(_wire(k=3)), "unknown message kind 3"),
    ("class_name_kind", lambda: _pack(_wire(k="RunRequest")), "unknown message kind 'RunRequest'"),
    # envelope keys
    ("missing_env_key", lambda: _pack(_without(_wire(), "t")), r"bad envelope: missing \['t'\], extra \[\]"),
    ("missing_body_key", lambda: _pack(_without(_wire(), "b")), r"missing \['b'\]"),
    ("extra_env_key", lambda: _pack({**_wire(), "x": 1}), r"bad envelope: missing \[\], extra \['x'\]"),
    ("bytes_env_key", lambda: _pack({**_without(_wire(), "v"), b"v": 1}), r"missing \['v'\], extra \[\"b'v'\"\]"),
    ("empty_map", lambda: _pack({}), r"bad envelope: missing \['b', 'id', 'k', 'n', 'p', 's', 't', 'v'\]"),
    # envelope field types
    ("id_int", lambda: _pack(_wire(id=5)), "bad envelope field 'id'"),
    ("id_nil", lambda: _pack(_wire(id=None)), "bad envelope field 'id'"),
    ("id_bytes", lambda: _pack(_wire(id=b"abc-1")), "bad envelope field 'id'"),
    ("sender_nil", lambda: _pack(_wire(s=None)), "bad envelope field 's'"),
    ("seq_str", lambda: _pack(_wire(n="3")), "bad envelope field 'n'"),
    ("seq_bool", lambda: _pack(_wire(n=True)), "bad envelope field 'n'"),
    ("seq_float", lambda: _pack(_wire(n=3.0)), "bad envelope field 'n'"),
    ("ts_str", lambda: _pack(_wire(t="now")), "bad envelope field 't'"),
    ("ts_bool", lambda: _pack(_wire(t=False)), "bad envelope field 't'"),
    ("ts_nil", lambda: _pack(_wire(t=None)), "bad envelope field 't'"),
    ("parent_int", lambda: _pack(_wire(p=5)), "bad envelope field 'p'"),
    ("parent_ext", lambda: _pack(_wire(p=msgpack.ExtType(1, b"x"))), "bad envelope field 'p'"),
    # body shape
    ("body_list", lambda: _pack(_wire(b=["train"])), "run_request: body is a list, not a map"),
    ("body_nil", lambda: _pack(_wire(b=None)), "run_request: body is a NoneType, not a map"),
    (
        "missing_field",
        lambda: _msg("run_request", {"stages": [], "keep_going": True, "select": "upstream", "glob": False}),
        r"run_request: missing fields \['force'\], extra fields \[\]",
    ),
    (
        "extra_field",
        lambda: _msg(
            "run_request",
            {"stages": [], "force": False, "keep_going": True, "select": "upstream", "glob": False, "dry": 1},
        ),
        r"run_request: missing fields \[\], extra fields \['dry'\]",
    ),
    (
        "bytes_field_name",
        lambda: _msg("heartbeat", {b"pool": "p"}),
        r"heartbeat: missing fields \['pool'\], extra fields \[\"b'pool'\"\]",
    ),
    (
        "field_on_empty_message",
        lambda: _msg("snapshot_request", {"pool": "p"}),
        r"snapshot_request: missing fields \[\], extra fields \['pool'\]",
    ),
    (
        "defaulted_field_still_required",
        lambda: _msg("wave_finished", _without(_body(WaveFinished), "lost")),
        r"wave_finished: missing fields \['lost'\]",
    ),
    # field types
    ("str_for_int", lambda: _msg("pool_hello", _body(PoolHello, pid="4242")), "pool_hello.pid: expected int, got str"),
    ("bool_for_int", lambda: _msg("pool_hello", _body(PoolHello, slots=True)), "pool_hello.slots: expected int, got bool"),
    ("float_for_int", lambda: _msg("pool_hello", _body(PoolHello, slots=4.0)), "pool_hello.slots: expected int, got float"),
    ("none_for_str", lambda: _msg("heartbeat", {"pool": None}), "heartbeat.pool: expected str, got NoneType"),
    ("bytes_for_str", lambda: _msg("heartbeat", {"pool": b"pool-1"}), "heartbeat.pool: expected str, got bytes"),
    ("int_for_bool", lambda: _msg("run_request", _body(RunRequest, force=1)), "run_request.force: expected bool, got int"),
    ("bool_for_float", lambda: _msg("stage_result", _body(StageResult, duration_s=True)), "stage_result.duration_s: expected float, got bool"),
    ("str_for_float", lambda: _msg("pool_welcome", _body(PoolWelcome, heartbeat_s="0.5")), "pool_welcome.heartbeat_s: expected float, got str"),
    ("int_for_optional_str", lambda: _msg("stage_finished", _body(StageFinished, error=3)), "stage_finished.error: expected str | None, got int"),
    ("str_for_list", lambda: _msg("run_request", _body(RunRequest, stages="train")), r"run_request.stages: expected list\[str\], got str"),
    ("bad_list_item", lambda: _msg("run_request", _body(RunRequest, stages=["train", 3])), r"run_request\.stages: expected"),
    ("bad_nested_list_item", lambda: _msg("stage_result", _body(StageResult, logs=[["stdout", 3]])), r"stage_result\.logs: expected"),
    ("flat_logs", lambda: _msg("stage_result", _body(StageResult, logs=["stdout", "x"])), r"stage_result\.logs: expected"),
    # The shape that crashed the broker's loop: an empty pair, and a pair of three.
    ("empty_log_pair", lambda: _msg("stage_result", _body(StageResult, logs=[[]])), r"stage_result\.logs: expected .*got list holding list of 0"),
    ("long_log_pair", lambda: _msg("stage_result", _body(StageResult, logs=[["stdout", "x", "y"]])), r"stage_result\.logs: expected"),
    ("empty_snapshot_log_pair", lambda: _msg("snapshot", _body(Snapshot, logs={"a": [[]]})), r"snapshot\.logs: expected"),
    ("list_for_dict", lambda: _msg("snapshot", _body(Snapshot, stages=[])), r"snapshot\.stages: expected dict"),
    ("list_for_optional_dict", lambda: _msg("snapshot", _body(Snapshot, pipeline_error=["x"])), r"snapshot\.pipeline_error: expected"),
    ("bytes_dict_key", lambda: _msg("snapshot", _body(Snapshot, stages={b"train": {}})), r"snapshot\.stages: expected"),
    ("none_for_dict", lambda: _msg("manifest_loaded", _body(ManifestLoaded, manifest=None)), r"manifest_loaded\.manifest: expected dict"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "match"),
    [pytest.param(make, match, id=name) for name, make, match in BAD_PAYLOADS],
)
def test_decode_rejects(make: Callable[[], bytes], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(make())


def test_decode_rejects_every_message_with_each_field_missing() -> None:
    for cls in MESSAGES:
        body = _body(cls)
        for name in body:
            with pytest.raises(ProtocolError, match=rf"{cls.TAG}: missing fields \['{name}'\]"):
                decode(_msg(cls.TAG, _without(body, name)))


def test_decode_rejects_every_message_with_an_extra_field() -> None:
    for cls in MESSAGES:
        with pytest.raises(ProtocolError, match=rf"{cls.TAG}: .*extra fields \['zz_extra'\]"):
            decode(_msg(cls.TAG, {**_body(cls), "zz_extra": 1}))


def test_decode_rejects_deep_nesting() -> None:
    with pytest.raises(ProtocolError):
        decode(b"\x91" * 100_000)


@pytest.mark.parametrize("version", [True, 1.0], ids=["bool", "float"])
def test_decode_rejects_non_int_version(version: Any) -> None:
    with pytest.raises(ProtocolError, match="protocol version"):
        decode(_pack(_wire(v=version)))


def test_bad_list_item_error_is_not_self_contradictory() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(_msg("run_request", _body(RunRequest, stages=["train", 3])))
    assert "expected list, got list" not in str(info.value)


# --- registry ----------------------------------------------------------------------------


@record
class _DuplicateHello(Message):
    TAG: ClassVar[str] = "pool_hello"
    name: str


@record
class _Untagged(Message):
    name: str


def test_registry_rejects_duplicate_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MESSAGES", (PoolHello, Heartbeat, _DuplicateHello))
    with pytest.raises(TypeError, match="duplicate wire tag 'pool_hello'") as info:
        codec._build_registry()
    assert "_DuplicateHello" in str(info.value)
    assert "PoolHello" in str(info.value)


def test_registry_rejects_missing_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MESSAGES", (PoolHello, _Untagged))
    with pytest.raises(TypeError, match="_Untagged has no TAG"):
        codec._build_registry()


def test_registry_maps_tags_to_classes_and_fields() -> None:
    registry = codec._build_registry()
    for cls in MESSAGES:
        assert registry[cls.TAG] is cls
        layout = codec._layout(cls.TAG)
        assert layout.cls is cls
        assert list(layout.fields) == [f.name for f in dataclasses.fields(cls)]


# --- manifest wire form ------------------------------------------------------------------


def test_manifest_round_trip() -> None:
    manifest = _manifest()
    wire = manifest.to_wire()
    back = Manifest.from_wire(wire)
    assert back == manifest
    assert back.by_name["train"] == manifest.stages[1]
    assert [s.name for s in back.stages] == ["prepare", "train"]


def test_manifest_round_trip_through_codec() -> None:
    manifest = _manifest()
    data = encode(ManifestLoaded(pool="pool-1", manifest=manifest.to_wire()), sender="pool-1")
    msg = decode(data).msg
    assert isinstance(msg, ManifestLoaded)
    assert Manifest.from_wire(msg.manifest) == manifest


def test_empty_manifest_round_trip() -> None:
    empty = Manifest(stages=())
    assert Manifest.from_wire(empty.to_wire()) == empty


def _manifest_wire(**overrides: Any) -> dict[str, Any]:
    wire = _manifest().to_wire()
    wire.update(overrides)
    return wire


def _stage_wire(**overrides: Any) -> list[Any]:
    row = _manifest().to_wire()["stages"][0]
    for key, value in overrides.items():
        row[ROW.index(key)] = value
    return row


BAD_MANIFESTS: list[tuple[str, Any, str]] = [
    ("not_a_dict", ["stages"], "malformed manifest"),
    ("none", None, "malformed manifest"),
    ("no_stages", _without(_manifest_wire(), "stages"), "malformed manifest"),
    ("no_code_parts", _without(_manifest_wire(), "code_parts"), "malformed manifest"),
    ("no_sources", _without(_manifest_wire(), "sources"), "malformed manifest"),
    ("no_warnings", _without(_manifest_wire(), "warnings"), "malformed manifest"),
    ("stages_int", _manifest_wire(stages=3), "malformed manifest"),
    ("sources_str", _manifest_wire(sources="pipeline.py"), "malformed manifest"),
    ("warnings_items", _manifest_wire(warnings=[1]), "malformed manifest"),
    ("code_parts_values", _manifest_wire(code_parts=[{"pipeline.prepare": 1}]), "malformed manifest"),
    ("stage_str", _manifest_wire(stages=["prepare"]), "malformed stage 0 in manifest"),
    ("stage_a_map", _manifest_wire(stages=[dict(zip(ROW, _stage_wire(), strict=True))]), "malformed stage 0"),
    ("stage_short", _manifest_wire(stages=[_stage_wire()[:-1]]), "malformed stage 0"),
    ("stage_long", _manifest_wire(stages=[[*_stage_wire(), False]]), "malformed stage 0"),
    ("stage_name_int", _manifest_wire(stages=[_stage_wire(name=1)]), "malformed stage 0"),
    ("stage_name_none", _manifest_wire(stages=[_stage_wire(name=None)]), "malformed stage"),
    ("stage_fingerprint_bytes", _manifest_wire(stages=[_stage_wire(fingerprint=b"3f")]), "malformed stage"),
    ("stage_deps_str", _manifest_wire(stages=[_stage_wire(deps="data/raw.csv")]), "malformed stage"),
    ("stage_outs_items", _manifest_wire(stages=[_stage_wire(outs=[None])]), "malformed stage"),
    ("stage_params_int", _manifest_wire(stages=[_stage_wire(params=5)]), "malformed stage"),
    ("stage_params_list", _manifest_wire(stages=[_stage_wire(params=[1, 2])]), "malformed stage"),
    ("stage_params_int_key", _manifest_wire(stages=[_stage_wire(params={1: 2})]), "malformed stage"),
    ("stage_code_parts_index", _manifest_wire(stages=[_stage_wire(code_parts=1)]), "malformed stage"),
    ("stage_code_parts_negative", _manifest_wire(stages=[_stage_wire(code_parts=-1)]), "malformed stage"),
    ("stage_code_parts_map", _manifest_wire(stages=[_stage_wire(code_parts={})]), "malformed stage"),
    ("stage_frozen_int", _manifest_wire(stages=[_stage_wire(frozen=1)]), "malformed stage"),
    ("stage_keyed_none", _manifest_wire(stages=[_stage_wire(keyed=None)]), "malformed stage"),
    ("stage_tags_items", _manifest_wire(stages=[_stage_wire(tags=[3])]), "malformed stage"),
    ("stage_code_sources_index", _manifest_wire(stages=[_stage_wire(code_sources=1)]), "malformed stage"),
    ("code_sources_values", _manifest_wire(code_sources=[{"helpers.py": None}]), "malformed manifest"),
    ("no_code_sources", _without(_manifest_wire(), "code_sources"), "malformed manifest"),
]  # fmt: skip


def test_a_stage_row_holds_every_field_of_a_stage_spec() -> None:
    """A field added to StageSpec and not to the row would never reach the broker."""
    assert tuple(f.name for f in dataclasses.fields(StageSpec)) == ROW


def test_stages_sharing_code_share_one_code_parts_map_on_the_wire() -> None:
    base = _manifest().stages[0]
    parts = {"pipeline.work": "ab12", "python": "3.11.7"}
    stages = (
        *(dataclasses.replace(base, name=f"s{i}", outs=(f"out/{i}",), params={"i": i}, code_parts=dict(parts))
          for i in range(3)),
        dataclasses.replace(base, name="other", outs=("out/x",), code_parts={"pipeline.other": "cd34"}),
    )
    manifest = Manifest(stages)
    wire = manifest.to_wire()
    assert wire["code_parts"] == [parts, {"pipeline.other": "cd34"}]
    assert [row[ROW.index("code_parts")] for row in wire["stages"]] == [0, 0, 0, 1]
    back = Manifest.from_wire(msgpack.unpackb(msgpack.packb(wire), raw=False))
    assert back == manifest
    assert [s.code_parts for s in back.stages] == [s.code_parts for s in stages]


def test_the_digests_of_a_stages_code_files_cross_the_wire_once_per_distinct_map() -> None:
    """Not compared (a comment's save changes only them), so checked here."""
    base = _manifest().stages[0]
    files = {"pipeline.py": "0a1b", "helpers.py": "2c3d"}
    stages = (
        dataclasses.replace(base, name="s0", outs=("out/0",), code_sources=dict(files)),
        dataclasses.replace(base, name="s1", outs=("out/1",), code_sources=dict(files)),
        dataclasses.replace(base, name="cmd", outs=("out/c",), code_sources={}),
    )
    wire = Manifest(stages).to_wire()
    assert wire["code_sources"] == [files, {}]
    back = Manifest.from_wire(msgpack.unpackb(msgpack.packb(wire), raw=False))
    assert [s.code_sources for s in back.stages] == [files, files, {}]


@pytest.mark.parametrize(
    ("wire", "match"),
    [pytest.param(wire, match, id=name) for name, wire, match in BAD_MANIFESTS],
)
def test_manifest_from_wire_rejects(wire: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        Manifest.from_wire(wire)


def test_a_stage_view_must_be_a_map_of_exactly_its_fields() -> None:
    """A record inside a message (the snapshot's stage views) is checked field by field."""
    good = _body(Snapshot)
    assert isinstance(decode(_msg("snapshot", good)).msg.stages["train"], StageView)
    row = dict(good["stages"]["train"])
    for bad, match in (
        ({**row, "wave": "3"}, "snapshot.stages: expected"),
        ({k: v for k, v in row.items() if k != "error"}, "snapshot.stages: expected"),
        ({**row, "extra": 1}, "snapshot.stages: expected"),
    ):
        with pytest.raises(ProtocolError, match=match):
            decode(_msg("snapshot", {**good, "stages": {"train": bad}}))


def test_snapshot_sends_its_last_wave_and_pipeline_error_as_their_messages_bodies() -> None:
    snap = SAMPLES[Snapshot]
    wire = msgpack.unpackb(encode(snap, sender="broker"), raw=False)
    assert wire["b"]["last_wave"] == {
        "wave": 2, "ran": ["prepare"], "restored": [], "skipped": [], "failed": [], "blocked": [],
        "cancelled": [], "lost": ["x"], "moved": [],
    }
    assert wire["b"]["pipeline_error"] == {"message": "stage 'x' is defined twice", "detail": "the detail"}
    back = decode(encode(snap, sender="broker")).msg
    assert isinstance(back, Snapshot) and back == snap
    assert isinstance(back.last_wave, WaveFinished) and isinstance(back.pipeline_error, PipelineInvalid)


def test_snapshot_with_a_last_wave_missing_a_list_is_refused() -> None:
    body = _body(Snapshot)
    del body["last_wave"]["lost"]
    with pytest.raises(ProtocolError, match=r"snapshot\.last_wave: expected"):
        decode(_msg("snapshot", body))
