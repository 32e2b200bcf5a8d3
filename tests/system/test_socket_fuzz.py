"""Hostile input on every socket a standalone broker binds (issue 11, point 5), over ipc,
tcp and tcp with CURVE: the engine never crashes, keeps serving, and its `dropped`
count (`pivot ps --json`) grows by exactly the number of bad messages that reached it.

hypothesis generates batches of hostile multipart messages from the message catalog
(pivot/protocol/messages.py): random bytes, msgpack that is no map, truncated envelopes
and envelopes with trailing bytes, wrong frame counts, bodies with a wrongly typed,
missing or extra field, bad envelope fields, unknown kinds, well-formed messages of a
kind the receiving link does not take, and other protocol versions. Raw ZeroMQ peers of
the right socket type send them to the control and work ROUTERs (the work link both from
a stranger and from a pool that said hello), the changes PULL and the events XPUB, while
a real pool holds a stage of a `pivot repro --broker` run. Valid requests the broker
answers harmlessly are mixed in. Whether each message is bad is known from how it was
made (a model of docs/protocol.md written here, not the codec; random bytes are kept only
when the codec rejects them). After each batch, once every socket's messages are known
to be read (a barrier per link where the link has one), the broker's count must equal
the bad messages sent so far; every message of another protocol version on a ROUTER link
must be answered with `refused` (code `version`), every valid request with its answer, and
nothing else; both runs (the held one and one after the fuzzing) must produce the right
output. Bounded: 200 batches, and at most 6 s of them, per transport (~13 s in all).

Also: a message one byte over MAXMSGSIZE never reaches the broker (libzmq cuts the
connection; the peer reconnects) so it cannot be counted, while one of exactly the limit
is read and counted; peers the ZAP handler refuses (unknown key, no CURVE, another
broker's key) count nothing and break nothing.

Three bugs this found, fixed, each with its test: over CURVE the size limit was 33 bytes
lower (libzmq bounds the encrypted message); a changes message with a frame too many was
acted on; a pool that said hello could finish an attempt another pool runs.

Seeds: PIVOT_FUZZ_SEED=N replays the examples of a run (each run prints its seed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import random
import signal
import subprocess
import time
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from procs import (
    Broker,
    ProcGuard,
    describe,
    finished,
    parse_events,
    pivot_cmd,
    wait_exit,
    wait_for,
    write_files,
)
from zmq.utils.monitor import recv_monitor_message

from pivot.errors import ProtocolError
from pivot.launch.scratch import attempts_temp
from pivot.protocol.codec import PROTOCOL_VERSION, VersionMismatch, decode, encode
from pivot.protocol.messages import (
    MESSAGES,
    STATUSES,
    EventsWelcome,
    FilesChanged,
    Heartbeat,
    Hello,
    ManifestFailed,
    Message,
    Notice,
    PoolHello,
    PoolLeaving,
    PoolWelcome,
    PsReply,
    PsRequest,
    Refused,
    SnapshotRequest,
    StageOutput,
    StageResult,
    StageRunning,
    WavePlan,
)
from pivot.transport.curve import ClientKeys
from pivot.transport.sockets import MAX_MESSAGE_BYTES

pytestmark = pytest.mark.timeout(60)

TRANSPORTS = ("ipc", "tcp", "curve")
EXAMPLES = 200  # batches per transport (each holds up to ~20 messages)
FUZZ_BUDGET_S = 6.0  # per transport: past it, the remaining batches are not sent
WAIT_S = 10.0
SEED = int(os.environ.get("PIVOT_FUZZ_SEED") or random.randrange(2**32))
# A PIVOT_KEYS_DIR of the developer's must not turn CURVE on for the plain transports.
ENV = {k: v for k, v in os.environ.items() if not k.startswith("PIVOT_")}

# `held` runs in the real pool while the fuzzing goes on: it marks its start, then waits
# for `release` (with its own deadline), so the fuzzing happens inside a running wave.
PIPELINE = '''\
import os
import time

from pivot import stage


@stage(deps=["in.txt"], outs=["held.txt"])
def held() -> None:
    with open("held.started", "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + 50
    while not os.path.exists("release"):
        if time.monotonic() > deadline:
            raise TimeoutError("release never appeared")
        time.sleep(0.01)
    with open("in.txt") as src, open("held.txt", "w") as dst:
        dst.write(src.read().upper())


@stage(deps=["held.txt"], outs=["after.txt"])
def after() -> None:
    with open("held.txt") as src, open("after.txt", "w") as dst:
        dst.write(src.read().strip() + "!")
'''


# --- the engine under test ----------------------------------------------------------


@dataclass
class Engine:
    """A standalone `pivot broker` of one transport, and how a client reaches it."""

    transport: str
    root: Path
    proc: subprocess.Popen[str]
    links: dict[str, str]  # control, work, events, changes: what the broker bound
    keys_dir: Path | None
    output: Path  # the broker's stdout and stderr (a file: a pipe nobody reads would fill)

    @property
    def keys(self) -> ClientKeys | None:
        """An operator's keys: the one role that may use every link."""
        if self.keys_dir is None:
            return None
        return ClientKeys.load(self.keys_dir / "operator.key_secret", self.keys_dir / "broker.key")

    def cli(self, role: str) -> list[str]:
        """`--broker` and, with CURVE, the key options of a client of `role`."""
        args = ["--broker", self.links["control"]]
        if self.keys_dir is not None:
            args += ["--key", str(self.keys_dir / f"{role}.key_secret"),
                     "--broker-key", str(self.keys_dir / "broker.key")]
        return args


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`pivot ARGS` to completion, in the environment of every process here."""
    return subprocess.run(
        [*pivot_cmd(), *args], cwd=root, capture_output=True, text=True, timeout=30,
        stdin=subprocess.DEVNULL, env=ENV,
    )


def spawn(
    guard: ProcGuard, root: Path, output: Path, *args: str, errors: Path | None = None,
) -> subprocess.Popen[str]:
    """`pivot ARGS` in its own session, its output going to a file (its standard error
    too, unless `errors` names another: JSON events must stay apart from notices)."""
    with output.open("w") as out, (errors.open("w") if errors is not None else contextlib.nullcontext()) as err:
        proc = subprocess.Popen(
            [*pivot_cmd(), *args], cwd=root, stdin=subprocess.DEVNULL, stdout=out,
            stderr=err if err is not None else subprocess.STDOUT, text=True, start_new_session=True, env=ENV,
        )
    return guard.track(proc)


@pytest.fixture(params=TRANSPORTS)
def engine(request: pytest.FixtureRequest, tmp_path: Path, proc_guard: ProcGuard) -> Iterator[Engine]:
    transport: str = request.param
    root = write_files(tmp_path / "proj", {"pipeline.py": PIPELINE, "in.txt": "one\n"})
    args = [] if transport == "ipc" else ["--bind", "tcp://127.0.0.1:0"]
    keys_dir = None
    if transport == "curve":
        keys_dir = tmp_path / "keys"  # outside the project, as PIVOT_KEYS_DIR would be
        made = run_cli(root, "keys", "init", "--dir", str(keys_dir))
        assert made.returncode == 0, describe(made)
        args += ["--keys", str(keys_dir)]
    output = tmp_path / "broker.out"
    proc = spawn(proc_guard, root, output, "broker", *args)
    Broker(root, proc).wait_bound()
    info = json.loads((root / ".pivot" / "run" / "endpoints.json").read_text())
    links = {link: str(info[link]) for link in ("control", "work", "events", "changes")}
    assert all(e.startswith("ipc://" if transport == "ipc" else "tcp://127.0.0.1:") for e in links.values()), links
    yield Engine(transport, root, proc, links, keys_dir, output)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        wait_exit(proc, 15, "the broker after SIGTERM")


def stop_broker(engine: Engine) -> None:
    """SIGTERM; the broker must exit 0 without a traceback."""
    engine.proc.send_signal(signal.SIGTERM)
    rc, _, _ = wait_exit(engine.proc, 15, "the broker after SIGTERM")
    output = engine.output.read_text()
    assert rc == 0 and "Traceback" not in output, f"exit code {rc}\n{output[-5000:]}"




def peer(
    ctx: zmq.Context[zmq.Socket[bytes]], kind: int, keys: ClientKeys | None, identity: bytes | None = None,
) -> zmq.Socket[bytes]:
    """A socket of `kind`, not connected yet."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, int(WAIT_S * 1000))  # a send can never block the test
    if identity is not None:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    if keys is not None:
        keys.apply(sock)
    return sock


def connect(
    ctx: zmq.Context[zmq.Socket[bytes]], kind: int, endpoint: str, keys: ClientKeys | None,
    identity: bytes | None = None,
) -> zmq.Socket[bytes]:
    sock = peer(ctx, kind, keys, identity)
    sock.connect(endpoint)
    return sock


def monitored(
    ctx: zmq.Context[zmq.Socket[bytes]], kind: int, endpoint: str, keys: ClientKeys | None, events: int,
) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    """A connected socket and a monitor of its `events`, watching from before the
    connection is made: a handshake can fail before connect() returns."""
    sock = peer(ctx, kind, keys)
    monitor = sock.get_monitor_socket(events)
    sock.connect(endpoint)
    return sock, monitor


def receive(sock: zmq.Socket[bytes], what: str) -> list[bytes]:
    assert sock.poll(int(WAIT_S * 1000)), f"timed out after {WAIT_S} s waiting for {what}"
    return sock.recv_multipart()


def pool_messages(sock: zmq.Socket[bytes], what: str) -> list[Message]:
    """What the broker sent a pool's DEALER in one message: an envelope a frame (what one
    pass of its loop caused, in order)."""
    return [decode(frame).msg for frame in receive(sock, what)]


class Probe:
    """A control-link client asking `ps` over its own socket (no process per question)."""

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self.sock = sock

    def ps(self) -> list[dict[str, Any]]:
        self.sock.send(encode(PsRequest(), sender="fuzz-probe"))
        while True:
            msg = decode(receive(self.sock, "a ps_reply")[-1]).msg
            if isinstance(msg, PsReply):
                return msg.processes

    def dropped(self) -> int:
        [broker] = [p for p in self.ps() if p["role"] == "broker"]
        return int(broker["dropped"])

    def pools(self) -> set[str]:
        return {str(p["name"]) for p in self.ps() if p["role"] == "pool"}


# --- what is bad: a model of docs/protocol.md -----------------------------------------

BY_TAG: dict[str, type[Message]] = {cls.TAG: cls for cls in MESSAGES}
TAGS = sorted(BY_TAG)
# Kinds a receiver acts on when well-formed (docs/protocol.md, direction column; and a
# pool's `notice`, relayed to the displays since 26a15dc): these are never sent
# well-formed. Every other kind is dropped, and counted.
CONTROL_ACTS = frozenset({
    "hello", "ps_request", "run_request", "snapshot_request", "shutdown_request", "pause_request",
    "pool_exited",
})
# (Not pool_hello: a generated one never names its sender, and is dropped for that.)
POOL_ACTS = frozenset({
    "heartbeat", "pool_leaving", "manifest_loaded", "manifest_failed", "stage_running", "wave_plan",
    "stage_output", "stage_result", "notice", "install_changed",
})
CHANGES_ACTS = frozenset({"watcher_ready", "files_changed"})
# The work link drops anything from a peer that never said hello, whatever it is: only a
# pool_hello naming the peer's own identity would be taken, and no generated one does.
NOBODY_ACTS: frozenset[str] = frozenset()


_FIELDS: dict[Any, dict[str, Any]] = {}


def fields_of(cls: Any) -> dict[str, Any]:
    """A message's or record's fields and their types."""
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        _FIELDS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _FIELDS[cls]


def conforms(value: Any, hint: Any) -> bool:
    """Whether `value` (as msgpack gives it back) has the wire type of `hint`: the table
    of body types in docs/protocol.md, restated independently of the codec."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint in (bool, int, str):
        return type(value) is hint
    if hint is float:
        return type(value) in (int, float)
    if origin is list:
        return type(value) is list and all(conforms(v, args[0]) for v in value)
    if origin is tuple:
        return (type(value) is list and len(value) == len(args)
                and all(conforms(v, a) for v, a in zip(value, args, strict=True)))
    if origin is dict:
        return type(value) is dict and all(type(k) is str and conforms(v, args[1]) for k, v in value.items())
    if dataclasses.is_dataclass(hint):
        fields = fields_of(hint)
        return type(value) is dict and set(value) == set(fields) and all(conforms(value[k], t) for k, t in fields.items())
    raise TypeError(f"no wire type for {hint!r}")


INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, st.floats(), st.text(max_size=8), st.binary(max_size=8))
ANYTHING = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)
# One value of each msgpack type, and maps and arrays holding the wrong things.
ODD: list[Any] = [None, True, False, 0, -1, 2**64 - 1, 1.5, "", "x", b"", b"x", [], [None], [[]], {}, {"k": None}, {1: "int key"}]
# Near misses for each scalar type: what a lax check (or a coercion) would let through.
NEAR: dict[Any, list[Any]] = {
    int: [True, False, 1.0, "1"], float: [True, False, "1.5"], bool: [0, 1, None, "true"],
    str: [b"x", None, 1], type(None): [False, 0, ""],
}


@functools.cache
def valid(hint: Any) -> st.SearchStrategy[Any]:
    """Values of the wire type of `hint`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return ANYTHING
    if origin in (typing.Union, types.UnionType):
        return st.one_of([valid(a) for a in args])
    if hint is type(None):
        return st.none()
    simple: dict[Any, st.SearchStrategy[Any]] = {
        bool: st.booleans(), int: st.integers(-(2**31), 2**31), float: st.floats(-1e9, 1e9),
        str: st.text(max_size=10),
    }
    if hint in simple:
        return simple[hint]
    if origin is list:
        return st.lists(valid(args[0]), max_size=3)
    if origin is tuple:
        return st.tuples(*[valid(a) for a in args]).map(list)
    if origin is dict:
        return st.dictionaries(st.text(max_size=8), valid(args[1]), max_size=3)
    if dataclasses.is_dataclass(hint):
        return st.fixed_dictionaries({k: valid(t) for k, t in fields_of(hint).items()})
    raise TypeError(f"no wire type for {hint!r}")


@functools.cache
def wrong(hint: Any) -> st.SearchStrategy[Any]:
    """Values that do not have the wire type of `hint`, down to one bad item inside."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    options: list[st.SearchStrategy[Any]] = [st.sampled_from(ODD)]
    if hint in NEAR:
        options += [st.sampled_from(NEAR[hint])] * 2
    if origin in (typing.Union, types.UnionType):
        options += [wrong(a) for a in args if a is not type(None) and a is not Any]
    elif origin is list and args[0] is not Any:
        options.append(st.tuples(st.lists(valid(args[0]), max_size=2), wrong(args[0])).map(lambda t: [*t[0], t[1]]))
    elif origin is tuple:
        items = [valid(a) for a in args]
        options.append(st.tuples(*items[:-1]).map(list))  # one item short
        options.append(st.tuples(*items, items[-1]).map(list))  # one item too many
        for i, a in enumerate(args):
            options.append(st.tuples(*items[:i], wrong(a), *items[i + 1:]).map(list))
    elif origin is dict and args[1] is not Any:
        options.append(st.dictionaries(st.text(max_size=4), wrong(args[1]), min_size=1, max_size=2))
    elif dataclasses.is_dataclass(hint):
        fields = fields_of(hint)
        options.append(record_body(fields))
    return st.one_of(options).filter(lambda v: not conforms(v, hint))


def record_body(fields: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A map of `fields` with one of them wrongly typed, missing, or one too many."""

    @st.composite
    def make(draw: st.DrawFn) -> dict[str, Any]:
        body = draw(st.fixed_dictionaries({k: valid(t) for k, t in fields.items()}))
        typed = [k for k, t in fields.items() if t is not Any]
        how = draw(st.sampled_from(["extra", *(["missing"] if fields else []), *(["type", "type"] if typed else [])]))
        if how == "extra":
            body[draw(st.text(max_size=6).filter(lambda k: k not in fields))] = draw(SCALARS)
        elif how == "missing":
            del body[draw(st.sampled_from(sorted(fields)))]
        else:
            name = draw(st.sampled_from(typed))
            body[name] = draw(wrong(fields[name]))
        return body

    return make()


ENVELOPE = st.fixed_dictionaries({
    "id": st.text(min_size=1, max_size=12), "p": st.none() | st.text(max_size=12),
    "s": st.text(max_size=12), "n": st.integers(0, 2**31), "t": st.floats(0, 4e9) | st.integers(0, 2**31),
})
# A wrongly typed value for each envelope key but `v` and `k` (their own cases below).
BAD_ENVELOPE: dict[str, list[Any]] = {
    "id": [None, 1, b"id", True], "s": [None, 1, b"s", ["s"]], "p": [1, b"p", True, {}],
    "n": [True, False, 1.0, "1", None], "t": [True, False, "1", None, b"t"], "b": [None, [], "b", 1, True],
}
WRONG_VERSIONS = st.one_of(
    INTS.filter(lambda v: v != PROTOCOL_VERSION),
    st.sampled_from([str(PROTOCOL_VERSION), float(PROTOCOL_VERSION), True, None, b"4", [PROTOCOL_VERSION]]),
)


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


@st.composite
def well_formed(draw: st.DrawFn, kinds: list[str]) -> dict[str, Any]:
    """The wire map of a well-formed message of one of `kinds`."""
    kind = draw(st.sampled_from(kinds))
    body = draw(st.fixed_dictionaries({k: valid(t) for k, t in fields_of(BY_TAG[kind]).items()}))
    if kind == "pool_hello":  # never the name of the peer's own identity (all "fuzz-...")
        body["pool"] = "other-" + body["pool"]
    return {"v": PROTOCOL_VERSION, "k": kind, **draw(ENVELOPE), "b": body}


@dataclass(frozen=True)
class Hostile:
    """One message and what the broker must make of it."""

    what: str  # how it was made (shown for a failing example)
    frames: tuple[bytes, ...]
    counted: int = 1  # how many messages of it the broker counts as dropped
    answer: str = ""  # what a ROUTER link answers: a kind, or "refused:CODE"
    subscribes: bool = False  # events: a subscription, answered by a `welcome`
    parts: tuple[Hostile, ...] = ()  # the work link's several frames: a message each

    @property
    def answers(self) -> list[str]:
        """What the link answers, in order (several frames on the work link: each one's)."""
        if self.parts:
            return [a for part in self.parts for a in part.answers]
        return [self.answer] if self.answer else []

    @property
    def refusals(self) -> int:
        return self.answers.count(VERSION_REFUSAL)

    def __repr__(self) -> str:
        shown = [f if len(f) <= 48 else f[:40] + b"...(%d bytes)" % len(f) for f in self.frames]
        return f"Hostile({self.what}, {shown!r})"


def bad_payloads(acts: frozenset[str]) -> st.SearchStrategy[tuple[str, bytes, bool]]:
    """(how it was made, one bad payload, whether it is of another protocol version) for a
    receiver acting on the kinds `acts`."""
    others = [t for t in TAGS if t not in acts]
    target = sorted(acts) or TAGS  # where a lax check would let a message through
    typed = [k for k in target if any(t is not Any for t in fields_of(BY_TAG[k]).values())]

    def undecodable(data: bytes) -> bool:
        try:
            decode(data)
        except ProtocolError:
            return True
        return False

    def version_mismatch(data: bytes) -> bool:
        try:
            decode(data)
        except VersionMismatch:
            return True
        except ProtocolError:
            return False
        return False

    def cut(wire: dict[str, Any], draw: st.DrawFn) -> bytes:
        data = pack(wire)
        return data[: draw(st.integers(0, len(data) - 1))]

    @st.composite
    def wrong_field(draw: st.DrawFn) -> tuple[str, bytes, bool]:
        """A message the link takes, but for one field of a wrong type (often a near miss)."""
        wire = draw(well_formed(typed or TAGS))
        fields = fields_of(BY_TAG[wire["k"]])
        name = draw(st.sampled_from(sorted(k for k, t in fields.items() if t is not Any)))
        wire["b"][name] = draw(wrong(fields[name]))
        return f"{wire['k']} with {name}={wire['b'][name]!r}", pack(wire), False

    @st.composite
    def mutated(draw: st.DrawFn) -> tuple[str, bytes, bool]:
        # One change to a message the link takes (repeated: more likely).
        how = draw(st.sampled_from([
            "truncated", "trailing", "extra_field", "extra_field", "missing_field", "envelope", "envelope",
            "envelope", "missing_key", "extra_key", "kind", "version", "version",
        ]))
        wire = draw(well_formed(target))
        if how == "extra_field":
            wire["b"][draw(st.text(max_size=6).filter(lambda k: k not in wire["b"]))] = draw(SCALARS)
            return f"{wire['k']} with an extra field", pack(wire), False
        if how == "missing_field" and wire["b"]:
            del wire["b"][draw(st.sampled_from(sorted(wire["b"])))]
            return f"{wire['k']} with a field missing", pack(wire), False
        if how == "truncated" or how == "missing_field":
            return f"truncated {wire['k']}", cut(wire, draw), False
        if how == "trailing":
            return f"{wire['k']} and trailing bytes", pack(wire) + draw(st.binary(min_size=1, max_size=8)), False
        if how == "envelope":
            key = draw(st.sampled_from(sorted(BAD_ENVELOPE)))
            wire[key] = draw(st.sampled_from(BAD_ENVELOPE[key]))
            return f"{wire['k']} with envelope {key}={wire[key]!r}", pack(wire), False
        if how == "missing_key":
            key = draw(st.sampled_from(sorted(wire)))
            del wire[key]
            return f"{wire.get('k')} without envelope key {key}", pack(wire), False
        if how == "extra_key":
            wire[draw(st.text(max_size=4).filter(lambda k: k not in wire))] = draw(SCALARS)
            return f"{wire['k']} with an extra envelope key", pack(wire), False
        if how == "kind":
            wire["k"] = draw(st.text(max_size=12).filter(lambda k: k not in BY_TAG) | st.sampled_from(ODD) | st.sampled_from([t.encode() for t in TAGS]))
            return f"unknown kind {wire['k']!r}", pack(wire), False
        # Another protocol version; a `refused` is read whatever its version (frozen),
        # then dropped: no link takes it.
        wire["v"] = draw(WRONG_VERSIONS)
        refused = wire["k"] != Refused.TAG
        return f"{wire['k']} of version {wire['v']!r}", pack(wire), refused

    return st.one_of(
        st.binary(max_size=64).filter(undecodable).map(lambda d: ("random bytes", d, version_mismatch(d))),
        ANYTHING.filter(lambda v: not isinstance(v, dict)).map(lambda v: ("msgpack, not a map", pack(v), False)),
        well_formed(others).map(lambda w: (f"{w['k']}, not taken here", pack(w), False)),
        well_formed([Refused.TAG]).map(lambda w: ("refused of another version", pack({**w, "v": PROTOCOL_VERSION + 1}), False)),
        # Large, still under the limit: read, and dropped like any other.
        st.integers(1 << 16, 1 << 20).map(lambda n: (f"{n} bytes of junk", b"\xc1" * n, False)),
        mutated(), mutated(), mutated(),  # a valid message spoiled in one place: the most ways to go wrong
        wrong_field(), wrong_field(), wrong_field(),  # what the codec's type checks are for
    )


EXTRA_FRAMES = st.lists(st.binary(max_size=8), min_size=1, max_size=2)
VERSION_REFUSAL = "refused:version"
FUZZ_TEXT = st.text(max_size=10).map(lambda t: "fuzz-" + t)  # never a real name or attempt


def harmless(msg: Message, answer: str = "") -> Hostile:
    """A well-formed message the broker acts on without consequence: never counted."""
    return Hostile(f"valid {msg.TAG}", (encode(msg, sender="fuzz"),), counted=False, answer=answer)


# Valid control requests between the bad ones, each answered in turn: a hello (refused
# when it names another project), ps and snapshot requests.
CONTROL_HARMLESS = st.one_of(
    st.builds(
        Hello, st.sampled_from(["cli", "display", "pool", "watcher"]) | st.text(max_size=8), FUZZ_TEXT,
        st.integers(1, 2**31), st.text(max_size=10), st.just("") | FUZZ_TEXT,
    ).map(lambda h: harmless(h, "hello_reply" if h.project == "" else "refused:project")),
    st.just(harmless(PsRequest(), "ps_reply")),
    st.just(harmless(SnapshotRequest(), "snapshot")),
)
# Valid pool messages of a pool that said hello, about nothing the engine runs: a
# heartbeat, a plan of a wave nobody asked for, a stage_running, output and a result of
# an attempt that does not exist (acknowledged), a failed load, a notice for the displays.
POOL_HARMLESS = st.one_of(
    st.builds(Notice, st.text(max_size=10)).map(harmless),
    st.builds(Heartbeat, st.text(max_size=10)).map(harmless),
    st.builds(WavePlan, st.integers(1000, 2**31), st.lists(st.text(max_size=6), max_size=3)).map(harmless),
    st.builds(StageRunning, FUZZ_TEXT, st.text(max_size=6), st.text(max_size=6), st.just({})).map(harmless),
    st.builds(StageOutput, FUZZ_TEXT, st.lists(
        st.tuples(st.sampled_from(["stdout", "stderr", "pivot"]), st.text(max_size=6), st.booleans()), max_size=3,
    )).map(harmless),
    st.builds(
        StageResult, FUZZ_TEXT, st.text(max_size=6), st.sampled_from(STATUSES), st.text(max_size=6),
        st.text(max_size=6), st.floats(0, 1e6), st.none() | st.text(max_size=6),
        st.lists(st.tuples(st.text(max_size=6), st.text(max_size=6)), max_size=2), st.just({}), st.text(max_size=6),
    ).map(lambda r: harmless(r, "result_ack")),
    st.builds(ManifestFailed, st.text(max_size=6), st.text(max_size=10), st.text(max_size=10)).map(harmless),
)


def router_messages(acts: frozenset[str]) -> st.SearchStrategy[Hostile]:
    """From a DEALER to the control link's ROUTER: the broker reads [identity, payload]; any other
    frame count is dropped whatever the payload (even a message it would act on)."""
    # Most often a message this link acts on: a lax check would act on it.
    payload = well_formed(sorted(acts) or TAGS).map(pack) | bad_payloads(acts).map(lambda b: b[1])
    return st.one_of(
        bad_payloads(acts).map(lambda b: Hostile(b[0], (b[1],), answer=VERSION_REFUSAL if b[2] else "")),
        st.tuples(payload, EXTRA_FRAMES, st.booleans()).map(
            lambda t: Hostile("frame count", (*t[1], t[0]) if t[2] else (t[0], *t[1]))
        ),
    )


def frames_of(parts: list[Hostile]) -> Hostile:
    """One message whose frames are `parts` (each of one frame), as a pool sends what one
    pass of its loop says: the broker takes each frame as a message of its own."""
    return Hostile(
        "frames: " + "; ".join(p.what for p in parts), tuple(p.frames[0] for p in parts),
        counted=sum(p.counted for p in parts), parts=tuple(parts),
    )


def work_messages(acts: frozenset[str], valid: st.SearchStrategy[Hostile] | None = None) -> st.SearchStrategy[Hostile]:
    """From a DEALER to the work link's ROUTER: [identity, payload, ...], each payload a
    message of its own, read in order (one with `valid` ones among bad ones too)."""
    one = bad_payloads(acts).map(lambda b: Hostile(b[0], (b[1],), answer=VERSION_REFUSAL if b[2] else ""))
    if valid is not None:
        one = one | valid
    return one | st.lists(one, min_size=2, max_size=3).map(frames_of)


def changes_messages() -> st.SearchStrategy[Hostile]:
    """From a PUSH to the changes PULL: one frame. Extra frames in front of a bad payload
    too (in front of a valid one: the test at the end)."""
    bad = bad_payloads(CHANGES_ACTS)
    return st.one_of(
        bad.map(lambda b: Hostile(b[0], (b[1],))),
        st.tuples(EXTRA_FRAMES, bad).map(lambda t: Hostile(f"frames, then {t[1][0]}", (*t[0], t[1][1]))),
    )


def stray(frame: bytes) -> bool:
    """Not a (un)subscription: its first byte is neither 0 nor 1."""
    return frame[:1] not in (b"\x00", b"\x01")


# Never b"\x00state": it would cancel the subscription the welcome barrier relies on.
NOT_STATE = st.binary(max_size=8).filter(lambda b: b != b"state")


def events_messages() -> st.SearchStrategy[list[Hostile]]:
    """From an XSUB to the events XPUB, which reads subscriptions: anything else is a
    stray message, dropped. libzmq splits a multipart message around subscription
    frames, so a multipart message here holds no frame that looks like one. An XSUB
    forwards only the cancel of a topic it subscribed to: a cancel comes after its
    subscription."""

    def one(h: Hostile) -> list[Hostile]:
        return [h]

    return st.one_of(
        st.binary(max_size=32).filter(stray).map(lambda f: one(Hostile("stray frame", (f,)))),
        st.lists(st.binary(max_size=16).filter(stray), min_size=2, max_size=3).map(
            lambda fs: one(Hostile("stray frames", tuple(fs)))
        ),
        well_formed(TAGS).map(lambda w: one(Hostile(f"{w['k']} published upstream", (b"state", pack(w))))),
        NOT_STATE.map(lambda t: one(Hostile("subscription", (b"\x01" + t,), counted=False, subscribes=True))),
        NOT_STATE.map(lambda t: [
            Hostile("subscription", (b"\x01" + t,), counted=False, subscribes=True),
            Hostile("cancel", (b"\x00" + t,), counted=False),
        ]),
    )


@dataclass(frozen=True)
class Batch:
    control: list[Hostile]
    stranger: list[Hostile]  # work link, from a peer that never said hello
    pool: list[Hostile]  # work link, from a pool that said hello (and leaves after)
    changes: list[Hostile]
    events: list[Hostile]

    def counted(self) -> int:
        every = [*self.control, *self.stranger, *self.pool, *self.changes, *self.events]
        return sum(h.counted for h in every)


# A pool_hello naming another pool than the sender's identity: dropped, whoever sends it.
IMPOSTOR = well_formed(["pool_hello"]).map(lambda w: Hostile(f"pool_hello of {w['b']['pool']!r}", (pack(w),)))

BATCHES = st.builds(
    Batch,
    control=st.lists(router_messages(CONTROL_ACTS) | CONTROL_HARMLESS, max_size=5),
    stranger=st.lists(work_messages(NOBODY_ACTS) | IMPOSTOR, max_size=4),
    pool=st.lists(work_messages(POOL_ACTS, POOL_HARMLESS) | IMPOSTOR, max_size=4),
    changes=st.lists(changes_messages(), max_size=4),
    events=st.lists(events_messages(), max_size=3).map(lambda hs: [h for part in hs for h in part]),
)


# --- sending, and checking each batch -------------------------------------------------


def label(msg: Message) -> str:
    """How an answer is named in `Hostile.answer`."""
    return f"refused:{msg.code}" if isinstance(msg, Refused) else msg.TAG


class Fuzzer:
    """Raw peers on every link of `engine`, and the count they must make."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], engine: Engine) -> None:
        self.ctx, self.engine, self.keys = ctx, engine, engine.keys
        links = engine.links
        self.probe = Probe(connect(ctx, zmq.DEALER, links["control"], self.keys))
        self.control = connect(ctx, zmq.DEALER, links["control"], self.keys)
        self.stranger = connect(ctx, zmq.DEALER, links["work"], self.keys, identity=b"fuzz-stranger")
        self.changes = connect(ctx, zmq.PUSH, links["changes"], self.keys)
        self.events = connect(ctx, zmq.XSUB, links["events"], self.keys)
        self.events.send(b"\x01state")
        self.welcomes(1)
        self.expected = self.probe.dropped()
        self.stranger_refused = 0  # `refused` (version) the stranger must have got so far
        self.stranger_got = 0
        self.pools = 0
        self.batches = 0
        self.sent = 0

    def close(self) -> None:
        for sock in (self.probe.sock, self.control, self.stranger, self.changes, self.events):
            sock.close(linger=0)

    def welcomes(self, want: int) -> None:
        """Wait for `want` welcomes on the events socket: every subscription sent before
        the last one was read by the broker, and so was every stray message before it."""
        got = 0
        while got < want:
            # A state message holds the events of a broker step, in order: several
            # welcomes when it read several subscriptions in one pass.
            topic, *payloads = receive(self.events, f"welcome {got + 1} of {want}")
            if topic == b"state":
                got += sum(isinstance(decode(payload).msg, EventsWelcome) for payload in payloads)

    def run(self, batch: Batch) -> None:
        self.batches += 1
        self.sent += len(batch.control) + len(batch.stranger) + len(batch.pool) + len(batch.changes) + len(batch.events)
        self.expected += batch.counted()
        for h in batch.control:
            self.control.send_multipart(list(h.frames))
        for h in batch.stranger:
            self.stranger.send_multipart(list(h.frames))
        self.stranger_refused += sum(h.refusals for h in batch.stranger)
        for h in batch.changes:
            self.changes.send_multipart(list(h.frames))
        for h in batch.events:
            self.events.send_multipart(list(h.frames))
        self.events.send(b"\x01state")
        if batch.pool:
            self.known_pool(batch.pool)

        # The control socket's own last ps_request is answered after everything sent
        # before it, in order: one `refused` per message of another version, an answer
        # per valid request, nothing else (else a bad message was acted on).
        self.control.send(encode(PsRequest(), sender="fuzz"))
        want = [a for h in batch.control for a in h.answers] + ["ps_reply"]
        got: list[str] = []
        while got.count("ps_reply") < want.count("ps_reply"):
            got.append(label(decode(receive(self.control, f"answers {want} (got {got})")[-1]).msg))
        assert got == want
        self.welcomes(sum(h.subscribes for h in batch.events) + 1)

        # The stranger's and the changes link's messages have no barrier of their own:
        # every one of them counts, so the count reaching the total is one.
        assert self.engine.proc.poll() is None, "the broker died:\n" + self.engine.output.read_text()[-5000:]
        self.check_count(batch.counted())
        while self.stranger_got < self.stranger_refused:
            for msg in pool_messages(self.stranger, "a version refusal for the stranger"):
                assert isinstance(msg, Refused) and msg.code in ("version", "unknown"), msg
                self.stranger_got += msg.code == "version"

    def check_count(self, batch: int) -> None:
        """The broker's count reaches the total of bad messages sent, and stays there."""
        before = self.expected - batch
        last = before

        def reached() -> bool:
            nonlocal last
            last = self.probe.dropped()
            return last >= self.expected

        try:
            wait_for(reached, WAIT_S, "the count")
        except AssertionError:
            raise AssertionError(
                f"the broker counted {last - before} of the {batch} bad messages of this batch in {WAIT_S} s"
            ) from None
        last = self.probe.dropped()
        assert last == self.expected, (
            f"the broker counted {last - before} messages of this batch, of which only {batch} were bad"
        )

    def known_pool(self, batch: list[Hostile]) -> None:
        """A pool says hello, sends `batch`, then pool_leaving: once `ps` no longer lists
        it, the broker has read all of it."""
        self.pools += 1
        name = f"fuzz-pool-{self.pools}"
        sock = connect(self.ctx, zmq.DEALER, self.engine.links["work"], self.keys, identity=name.encode())
        try:
            sock.send(encode(PoolHello(name, os.getpid(), 1, f"fuzz-{SEED}", "fuzz-host", [], {}), sender=name))
            while not any(isinstance(m, PoolWelcome) for m in pool_messages(sock, f"the welcome of {name}")):
                pass
            for h in batch:
                sock.send_multipart(list(h.frames))
            sock.send(encode(PoolLeaving(name), sender=name))
            wait_for(lambda: name not in self.probe.pools(), WAIT_S, f"{name} to leave")
            # Its answers were sent before it left: a `refused` per message of another
            # version, a result_ack per result; heartbeats and a manifest_accepted may
            # come between them.
            want = [a for h in batch for a in h.answers]
            got: list[str] = []
            while len(got) < len(want):
                # The broker's messages to a pool: one envelope a frame, several at once.
                for msg in pool_messages(sock, f"answers {want} for {name} (got {got})"):
                    answer = label(msg)
                    if answer not in ("heartbeat", "manifest_accepted"):
                        got.append(answer)
            assert got == want
        finally:
            sock.close(linger=0)


# --- the tests ------------------------------------------------------------------------


@dataclass
class HeldRun:
    """A `pivot repro --broker` whose stage `held` runs in pool p1 until `release`."""

    proc: subprocess.Popen[str]
    out: Path  # its stdout (a file: the events it prints must never block it)
    pool: subprocess.Popen[str]

    @classmethod
    def start(cls, engine: Engine, guard: ProcGuard) -> HeldRun:
        root = engine.root
        pool = spawn(guard, root, root.parent / "pool.out", "workers", *engine.cli("pool"), "--name", "p1", "-j", "1")
        out = root.parent / "held.out"
        proc = spawn(guard, root, out, "repro", *engine.cli("operator"), "--json", errors=root.parent / "held.err")
        wait_for((root / "held.started").exists, 20, "the held stage to start in the pool")
        return cls(proc, out, pool)

    def finish(self, engine: Engine) -> tuple[int, str]:
        """Release the stage; the run's exit code and its events (JSON lines)."""
        (engine.root / "release").write_text("")
        rc, _, _ = wait_exit(self.proc, 30, "the held run")
        return rc, self.out.read_text()


def run_ok(engine: Engine, *args: str) -> list[dict[str, Any]]:
    """`pivot repro --broker ... --json ARGS`: it must succeed; its events."""
    proc = run_cli(engine.root, "repro", *engine.cli("operator"), "--json", *args)
    assert proc.returncode == 0, describe(proc)
    return parse_events(proc.stdout)


@pytest.mark.timeout(40)
def test_hostile_messages_on_every_socket_are_counted_and_the_engine_keeps_serving(
    engine: Engine, proc_guard: ProcGuard, zctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    seed = SEED + TRANSPORTS.index(engine.transport)  # other batches for each transport
    print(f"PIVOT_FUZZ_SEED={SEED} replays these examples (seed {seed} for {engine.transport})")
    root = engine.root
    held = HeldRun.start(engine, proc_guard)  # the fuzzing happens inside a running wave

    fuzzer = Fuzzer(zctx, engine)
    stop_at = time.monotonic() + FUZZ_BUDGET_S
    try:
        assert fuzzer.expected == 0, "a normal start and run dropped messages"

        @hypothesis_seed(seed)
        @settings(
            max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(BATCHES)
        def fuzz(batch: Batch) -> None:
            if failed:
                raise failed[0]
            if time.monotonic() < stop_at:
                try:
                    fuzzer.run(batch)
                except BaseException as exc:
                    failed.append(exc)
                    raise

        # No shrinking: the broker is live, and an example is checked against the count
        # of every batch before it; the first failing batch is reported as it was sent
        # (hypothesis replays it: the same failure, as the engine's state is unknown after).
        failed: list[BaseException] = []
        fuzz()

        # A hello of another version, on its own: the refusal names both versions.
        wire = msgpack.unpackb(encode(Hello("cli", "future", os.getpid(), "h", ""), sender="future"))
        wire["v"] = PROTOCOL_VERSION + 1
        fuzzer.control.send(pack(wire))
        answer = decode(receive(fuzzer.control, "the refusal of a hello of another version")[-1]).msg
        assert isinstance(answer, Refused) and answer.code == "version", answer
        assert answer.version == PROTOCOL_VERSION, answer
        assert f"protocol version {PROTOCOL_VERSION + 1}" in answer.reason and str(PROTOCOL_VERSION) in answer.reason, answer
        fuzzer.expected += 1
        wait_for(lambda: fuzzer.probe.dropped() >= fuzzer.expected, WAIT_S, "the refused hello to be counted")
        print(f"{fuzzer.batches} batches, {fuzzer.sent} messages, {fuzzer.expected} bad, {fuzzer.pools} pools")
    finally:
        fuzzer.close()
        (root / "release").write_text("")

    # The wave that ran through the fuzzing ends normally, and a new one runs after it.
    rc, out = held.finish(engine)
    assert rc == 0, describe((rc, out, ""))
    assert {s: e["status"] for s, e in finished(parse_events(out)).items()} == {"held": "ran", "after": "ran"}
    assert (root / "after.txt").read_text() == "ONE!"
    (root / "in.txt").write_text("two\n")
    again = finished(run_ok(engine))
    assert {s: e["status"] for s, e in again.items()} == {"held": "ran", "after": "ran"}, again
    assert (root / "after.txt").read_text() == "TWO!"

    ping = run_cli(root, "ping", *engine.cli("operator"))
    assert ping.returncode == 0, describe(ping)
    ps = run_cli(root, "ps", *engine.cli("operator"), "--json")
    assert ps.returncode == 0, describe(ps)
    rows = json.loads(ps.stdout)["processes"]
    assert [r["dropped"] for r in rows if r["role"] == "broker"] == [fuzzer.expected], "messages were counted after the fuzzing"
    assert [r["name"] for r in rows if r["role"] == "pool"] == ["p1"], rows
    stop_broker(engine)
    rc, _, _ = wait_exit(held.pool, 15, "the pool after its broker stopped")
    assert rc == 0, (root.parent / "pool.out").read_text()[-5000:]


# --- the size limit -------------------------------------------------------------------

LINK_SOCKETS = {"control": zmq.DEALER, "work": zmq.DEALER, "changes": zmq.PUSH, "events": zmq.XSUB}
JUNK = b"\xc1"  # never the first byte of msgpack, nor of a (un)subscription


def wait_event(monitor: zmq.Socket[bytes], event: int, what: str) -> None:
    """Read a socket monitor's events until `event` (each within WAIT_S)."""
    while True:
        assert monitor.poll(int(WAIT_S * 1000)), f"timed out after {WAIT_S} s waiting for {what}"
        if recv_monitor_message(monitor)["event"] == event:
            return


@pytest.mark.timeout(30)
def test_a_message_over_the_size_limit_never_reaches_the_broker_and_the_peer_reconnects(
    engine: Engine, zctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    probe = Probe(connect(zctx, zmq.DEALER, engine.links["control"], engine.keys))
    base = probe.dropped()
    sent = {}
    for link, kind in LINK_SOCKETS.items():
        sock, monitor = monitored(
            zctx, kind, engine.links[link], engine.keys, zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED,
        )
        sock.send(JUNK * (MAX_MESSAGE_BYTES + 1), copy=False)
        sent[link] = (sock, monitor)
    for link, (sock, monitor) in sent.items():
        # libzmq cuts the link at the size in the frame's header; the peer reconnects.
        # (What was queued behind the big message may be lost with the link: send the
        # next one only once the new handshake is done.)
        wait_event(monitor, zmq.EVENT_DISCONNECTED, f"libzmq to cut the {link} link")
        wait_event(monitor, zmq.EVENT_HANDSHAKE_SUCCEEDED, f"the {link} peer to reconnect")
        sock.send(JUNK)
    # One small message per link is counted, and nothing else: libzmq never handed the
    # broker an oversized one.
    wait_for(lambda: probe.dropped() >= base + len(LINK_SOCKETS), WAIT_S, "the small messages to be counted")
    assert probe.dropped() == base + len(LINK_SOCKETS), "an oversized message reached the broker"
    assert engine.proc.poll() is None
    ping = run_cli(engine.root, "ping", *engine.cli("operator"))
    assert ping.returncode == 0, describe(ping)
    stop_broker(engine)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("engine", ["ipc", "tcp", "curve"], indirect=True)
def test_a_message_of_exactly_the_size_limit_is_read_and_counted(
    engine: Engine, zctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    probe = Probe(connect(zctx, zmq.DEALER, engine.links["control"], engine.keys))
    base = probe.dropped()
    socks, monitors = [], {}
    for link, kind in LINK_SOCKETS.items():
        sock, monitors[link] = monitored(zctx, kind, engine.links[link], engine.keys, zmq.EVENT_DISCONNECTED)
        sock.send(JUNK * MAX_MESSAGE_BYTES, copy=False)
        sock.send(JUNK)
        socks.append(sock)  # a socket closed now would discard what it holds
    want = base + 2 * len(LINK_SOCKETS)

    def settled() -> bool:
        cut = [link for link, monitor in monitors.items() if monitor.poll(0)]
        return probe.dropped() >= want or bool(cut)

    wait_for(settled, WAIT_S, "the messages to be counted (or a link to be cut)")
    cut = [link for link, monitor in monitors.items() if monitor.poll(0)]
    assert not cut, f"libzmq cut the {cut} link(s) of a message of exactly {MAX_MESSAGE_BYTES} bytes"
    assert probe.dropped() == want
    stop_broker(engine)


# --- peers the ZAP handler refuses ----------------------------------------------------

HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("engine", ["curve"], indirect=True)
def test_peers_refused_in_the_handshake_count_nothing_and_break_nothing(
    engine: Engine, zctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    keys = engine.keys
    assert keys is not None
    stranger_public, stranger_secret = zmq.curve_keypair()
    other_broker, _ = zmq.curve_keypair()
    peers = {
        "an unknown key": ClientKeys(stranger_public, stranger_secret, keys.server),
        "no CURVE": None,
        "another broker's public key": ClientKeys(keys.public, keys.secret, other_broker),
    }
    probe = Probe(connect(zctx, zmq.DEALER, engine.links["control"], keys))
    base = probe.dropped()
    refused = []
    for who, peer_keys in peers.items():
        for link, kind in LINK_SOCKETS.items():
            sock, monitor = monitored(zctx, kind, engine.links[link], peer_keys, HANDSHAKE_FAILED)
            sock.send(JUNK)
            refused.append((f"{who} on {link}", sock, monitor))
    for what, sock, monitor in refused:
        # (libzmq does not try again after a refusal by ZAP: one event, maybe early.)
        assert monitor.poll(int(WAIT_S * 1000)), f"the handshake of {what} did not fail"
        sock.disable_monitor()
        sock.close(linger=0)
    # The same junk from an operator's key, on each link, is read and counted.
    operator = [connect(zctx, kind, engine.links[link], keys) for link, kind in LINK_SOCKETS.items()]
    for sock in operator:
        sock.send(JUNK)
    wait_for(lambda: probe.dropped() >= base + len(LINK_SOCKETS), WAIT_S, "the operator's junk to be counted")
    assert probe.dropped() == base + len(LINK_SOCKETS), "a peer refused in the handshake was read"
    ping = run_cli(engine.root, "ping", *engine.cli("operator"))
    assert ping.returncode == 0, describe(ping)
    stop_broker(engine)


# --- bugs found by the fuzzing ---------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("engine", ["ipc"], indirect=True)
def test_a_frame_too_many_on_the_changes_link_is_dropped(
    engine: Engine, zctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    probe = Probe(connect(zctx, zmq.DEALER, engine.links["control"], engine.keys))
    base = probe.dropped()
    push = connect(zctx, zmq.PUSH, engine.links["changes"], engine.keys)
    push.send_multipart([b"extra", encode(FilesChanged(["no-such-file"]), sender="fuzz")])
    push.send(JUNK)  # read after the message before it
    # Both counted, in order; a two-frame message acted on instead would leave the count
    # at one (the wait then fails, naming what was missing).
    wait_for(lambda: probe.dropped() >= base + 2, WAIT_S, "both messages to be counted as dropped")
    assert probe.dropped() == base + 2


def running_attempt(stage_pid: int) -> str:
    """The id of the attempt whose stage's code runs in process `stage_pid`: a local pool's
    worker writes its pid to ATTEMPT.writing in the pool's scratch folder meanwhile (in
    `attempts_temp()`: the tests run without a TMPDIR, or with the pool's own)."""

    def find() -> str | None:
        for path in Path(attempts_temp()).glob("pivot-workers-*/*.writing"):
            with contextlib.suppress(OSError, ValueError):
                if int(path.read_text()) == stage_pid:
                    return path.name.removesuffix(".writing")
        return None

    return str(wait_for(find, WAIT_S, f"the attempt file of process {stage_pid}"))


@pytest.mark.timeout(40)
@pytest.mark.parametrize("engine", ["ipc"], indirect=True)
def test_a_pool_cannot_finish_an_attempt_another_pool_runs(
    engine: Engine, proc_guard: ProcGuard, zctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    root = engine.root
    held = HeldRun.start(engine, proc_guard)
    try:
        attempt = running_attempt(int((root / "held.started").read_text()))
        rogue = connect(zctx, zmq.DEALER, engine.links["work"], engine.keys, identity=b"rogue")
        rogue.send(encode(PoolHello("rogue", os.getpid(), 1, "r1", "h", [], {}), sender="rogue"))
        while not any(isinstance(m, PoolWelcome) for m in pool_messages(rogue, "the rogue pool's welcome")):
            pass
        forged = StageResult(attempt, "held", "failed", "forged", "forged by another pool", 0.0, "forged", [], {}, "r1")
        rogue.send(encode(forged, sender="rogue"))
        # The broker acknowledges any result (so it is not resent): then it has read it.
        while "result_ack" not in [label(m) for m in pool_messages(rogue, "the ack of the forged result")]:
            pass
        rogue.send(encode(PoolLeaving("rogue"), sender="rogue"))
    finally:
        rc, out = held.finish(engine)
    stop_broker(engine)
    wait_exit(held.pool, 15, "the pool after its broker stopped")
    assert rc == 0, describe((rc, out, ""))
    assert {s: e["status"] for s, e in finished(parse_events(out)).items()} == {"held": "ran", "after": "ran"}
