"""The compose dev stack (docker-compose.yml, deploy/) for real, on a private Docker engine:
the stack comes up healthy and runs the quickstart, reacts to a data edit and to code
edits made through the bind mount, survives a `workers` container killed under a
running stage, scales to three pools, shows itself to a display attached from the host
and to the `display` profile, and stops cleanly (every role handles SIGTERM as PID 1).

Events are read from `pivot attach --json` on the host, through ports published on
127.0.0.1 only. Stages and the test meet through files in the project (markers the
stages write; a release file the test writes), never through sleeps.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from dockerstack import COMPOSE_FILE, KEYS_IN_IMAGE, STACK_UID, TIMINGS, Stack, compose_v2, ok
from procs import LiveRun, ProcGuard, start_pivot, wait_for
from requires import require

pytestmark = pytest.mark.timeout(60)

STAGES = ["prepare", "features", "fit", "evaluate"]
WAIT_S = 30.0
# The broker declares a silent pool lost after ~3 s and hands its stages to another
# pool after a fencing margin (~2 s more); docker's kill and the restart add a little.
LOST_WITHIN_S = 30.0

PRINT_BEFORE = '    print(f"kept {len(kept)} rows, dropped {dropped} malformed")\n'
PRINT_PID = (
    '    print(f"kept {len(kept)} rows, dropped {dropped} malformed; '
    '{VERSION} pid {os.getpid()} on {socket.gethostname()}")\n'
)

# A stage that marks each start (host and pid: which container runs it), then waits
# for the test's release file, with a deadline of its own.
HOLD_STAGE = '''

@stage(outs=["hold.txt"])
def hold() -> None:
    import time

    with open("hold.started", "a") as f:
        f.write(f"{socket.gethostname()} {os.getpid()}\\n")
    deadline = time.monotonic() + 60
    while not os.path.exists("hold.release"):
        if time.monotonic() > deadline:
            raise TimeoutError("hold.release never appeared")
        time.sleep(0.02)
    with open("hold.txt", "w") as f:
        f.write("held\\n")
'''


def host_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PIVOT_", "DOCKER_"))}


class Timer:
    """Records how long each step of the scenario takes (printed with the summary)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def lap(self, step: str) -> None:
        now = time.monotonic()
        TIMINGS[step] = now - self.last
        self.last = now


def index_of(display: LiveRun, event: dict[str, Any]) -> int:
    return next(i for i, e in enumerate(display.since(0)) if e is event)


def wave_of(display: LiveRun, began: dict[str, Any], what: str, timeout: float = WAIT_S) -> dict[str, Any]:
    """The wave_finished of the wave `began` started."""
    return display.wait_event(
        lambda e: e["event"] == "wave_finished" and e["wave"] == began["wave"], timeout, what,
        index_of(display, began))


def edit_code(root: Path, version: str, extra: str = "") -> None:
    """Make `prepare` print its pid and host (tagged `version`), plus `extra` code."""
    path = root / "pipeline.py"
    text = path.read_text()
    if "import socket" not in text:
        text = text.replace("import math\n", "import math\nimport os\nimport socket\n")
    text = re.sub(r'    print\(f"kept .*\n', PRINT_PID.replace("{VERSION}", version), text, count=1)
    path.write_text(text + extra)  # in place: the file stays the stack user's


def printed_pid(display: LiveRun, start: int, version: str) -> tuple[str, int]:
    """(host, pid) `prepare` printed for `version` (its log line)."""
    line = display.wait_event(
        lambda e: e["event"] == "log" and e["stage"] == "prepare" and f"; {version} pid " in e["line"],
        WAIT_S, f"prepare's {version} line", start)["line"]
    m = re.search(rf"; {version} pid (\d+) on (\S+)$", line)
    assert m, line
    return m.group(2), int(m.group(1))


def container_of(stack: Stack, hostname: str) -> str:
    [found] = [c for c in stack.containers("workers") if c.startswith(hostname)]
    return found


def starts(root: Path) -> list[tuple[str, int]]:
    marker = root / "hold.started"
    lines = marker.read_text().splitlines() if marker.exists() else []
    return [(host, int(pid)) for host, pid in (line.split() for line in lines)]


def test_the_compose_file_is_valid() -> None:
    require(compose_v2(), "no docker compose v2 plugin: run .ci/setup-deploy")
    require(shutil.which("check-jsonschema") is not None, "no check-jsonschema: pip install -e '.[dev]'")
    env = {**host_env(), "DOCKER_HOST": "unix:///nonexistent"}  # no engine is needed
    ok(["docker", "compose", "-f", str(COMPOSE_FILE), "--profile", "display", "config", "-q"], env)
    checker = subprocess.run(
        ["check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True, text=True, timeout=60, env=env)
    assert checker.returncode == 0, checker.stdout + checker.stderr


@pytest.mark.timeout(240)
def test_the_stack_runs_reacts_survives_a_lost_pool_scales_and_stops(
    stack: Stack, proc_guard: ProcGuard, tmp_path: Path
) -> None:
    root = stack.project
    timer = Timer()

    # --- up: keys into the volume, a healthy broker, then a watcher and two pools ----
    stack.compose("up", "--detach", "--wait", "--scale", "workers=2")
    timer.lap("up --wait")
    stack.copy_client_keys("viewer", "operator")
    display = LiveRun(proc_guard.track(start_pivot(
        tmp_path, "attach", "--json", "--broker", stack.control, *stack.key_args("viewer"),
        env=host_env())))
    # The watcher joining makes the broker check every stage: the first wave runs them.
    first = display.wait_event(lambda e: e["event"] == "wave_finished" and e["wave"] == 1,
                               WAIT_S, "the first wave")
    assert first["ran"] == STAGES, first
    timer.lap("first wave seen from the host")
    for path in ("metrics.json", "model/model.json", "data/clean.csv", ".pivot", ".pivot/stages"):
        assert (root / path).stat().st_uid == STACK_UID, f"{path} does not belong to the stack's user"
    assert not [p for p in root.rglob("*") if p.name.endswith((".key", ".key_secret"))], "keys in the project"
    assert {r["host"] for r in stack.pools()} == {c[:12] for c in stack.containers("workers")}

    # --- a data edit through the bind mount: inotify in the watcher's container -------
    mark = display.mark()
    original = (root / "data" / "raw.csv").read_text()
    with (root / "data" / "raw.csv").open("a") as f:
        f.write("2.5,1.5,7.25\n")
    began = display.wait_event(lambda e: e["event"] == "wave_started", WAIT_S, "the data edit's wave", mark)
    assert (began["trigger"], began["paths"]) == ("files", ["data/raw.csv"]), began
    done = wave_of(display, began, "the data edit's wave to end")
    assert done["ran"] == STAGES, done
    timer.lap("data edit -> wave finished")

    # --- a code edit: the stage re-runs on new code ------------------------------------
    mark = display.mark()
    edit_code(root, "v1")
    began = display.wait_event(lambda e: e["event"] == "wave_started", WAIT_S, "the code edit's wave", mark)
    assert began["trigger"] == "code", began
    started = display.wait_event(lambda e: e["event"] == "stage_started", WAIT_S, "prepare to start", mark)
    assert (started["stage"], started["reason_code"]) == ("prepare", "code_changed"), started
    host1, pid1 = printed_pid(display, mark, "v1")
    done = wave_of(display, began, "the code edit's wave to end")
    # prepare writes the same rows: the stages after it are up to date (early cutoff).
    assert (done["ran"], done["skipped"]) == (["prepare"], STAGES[1:]), done
    old = container_of(stack, host1)
    assert pid1 in stack.processes(old), f"the worker that ran prepare (pid {pid1}) is gone already"
    timer.lap("code edit -> wave finished")

    # --- a second code edit: fresh workers; a new stage that holds ---------------------
    mark = display.mark()
    edit_code(root, "v2", HOLD_STAGE)
    began = display.wait_event(lambda e: e["event"] == "wave_started", WAIT_S, "the second code edit's wave", mark)
    assert began["trigger"] == "code" and "hold" in began["stages"], began
    host2, pid2 = printed_pid(display, mark, "v2")
    # Every pool replaced its workers: the one that ran the old code is gone.
    wait_for(lambda: pid1 not in stack.processes(old), WAIT_S, f"the old worker {pid1} on {host1} to exit")
    assert (host2, pid2) != (host1, pid1)
    timer.lap("second code edit -> stage ran on new workers")

    # --- kill the workers container that holds a running stage -------------------------
    [(held_host, held_pid)] = wait_for(lambda: starts(root), WAIT_S, "hold to start")
    victim = container_of(stack, held_host)
    [victim_pool] = [r["name"] for r in stack.pools() if r["host"] == held_host]
    assert held_pid in stack.processes(victim), "the held stage is not running"
    stack.docker("kill", victim)
    lost = display.wait_event(lambda e: e["event"] == "pool_lost", LOST_WITHIN_S, "pool_lost", mark)
    assert (lost["pool"], lost["stages"]) == (victim_pool, ["hold"]), lost
    again = display.wait_event(lambda e: e["event"] == "stage_started" and e["stage"] == "hold",
                               LOST_WITHIN_S, "hold to start again", index_of(display, lost))
    assert again["wave"] == began["wave"], again
    [_, (other_host, _)] = wait_for(lambda: starts(root)[1:] and starts(root), WAIT_S, "the second start")
    assert other_host != held_host and other_host in {c[:12] for c in stack.containers("workers")}
    (root / "hold.release").write_text("go\n")
    done = wave_of(display, began, "the held wave to end")
    assert "hold" in done["ran"] and not done["lost"] and not done["failed"], done
    assert (root / "hold.txt").read_text() == "held\n"
    timer.lap("kill a pool mid-stage -> stage ran elsewhere")

    # --- scale to three pools -----------------------------------------------------------
    stack.compose("up", "--detach", "--wait", "--scale", "workers=3")
    hosts = {c[:12] for c in stack.containers("workers")}
    assert len(hosts) == 3, hosts
    wait_for(lambda: {r["host"] for r in stack.pools()} == hosts, WAIT_S, "three pools in pivot ps")
    assert len({r["name"] for r in stack.pools()}) == 3
    timer.lap("scale to 3 pools")

    # --- the watcher polls instead (Docker Desktop, network mounts) ---------------------
    mark = display.mark()
    broker = stack.containers("broker")
    stack.extra_env["PIVOT_WATCH_POLL"] = "1"  # from now on: every `up` sees the same setting
    stack.compose("up", "--detach", "--wait", "--scale", "workers=3")  # recreates the watcher only
    assert stack.containers("broker") == broker, "the broker was recreated"
    [watcher] = stack.containers("watcher")
    assert any("--poll" in args for _, args in stack.processes(watcher).values())
    check = display.wait_event(lambda e: e["event"] == "wave_started", WAIT_S, "the polling watcher's check", mark)
    wave_of(display, check, "the check wave to end")
    mark = display.mark()
    (root / "data" / "raw.csv").write_text(original)  # shorter: a size change
    began = display.wait_event(lambda e: e["event"] == "wave_started", WAIT_S, "the polled edit's wave", mark)
    assert (began["trigger"], began["paths"]) == ("files", ["data/raw.csv"]), began
    assert "prepare" in wave_of(display, began, "the polled edit's wave to end")["ran"]
    timer.lap("polling watcher: restart + edit -> wave finished")

    # --- the display profile ------------------------------------------------------------
    stack.compose("--profile", "display", "up", "--detach", "display")
    wait_for(lambda: "prepare" in stack.compose("--profile", "display", "logs", "display"),
             WAIT_S, "the display service to show the stages")

    # --- no role left a zombie behind (workers were replaced twice, a loader ran each time)
    for service in ("broker", "watcher", "workers"):
        for container in stack.containers(service):
            assert not stack.zombies(container), (service, stack.zombies(container))

    # --- a pool on another host: a key of its own in the stack's allow-list -------------
    stack.compose("exec", "-T", "broker", "pivot", "keys", "add", "remote", "--role", "pool",
                  "--dir", KEYS_IN_IMAGE)
    stack.compose("restart", "broker")  # a broker reads its allow-list when it starts
    # A requested stop: the display says so and ends (the display service too).
    assert display.wait_exit(WAIT_S) == 0, display.stderr
    assert display.since(0)[-1]["event"] == "engine_stopped" and display.since(0)[-1]["reason"] == ""
    # Until the new broker listens, docker-proxy accepts connections on the published
    # port and closes them, which a client takes for a wrong broker key: attach once
    # the broker is healthy again. (Never `up --no-deps`: the next `up` recreates what
    # it started.)
    stack.compose("up", "--detach", "--wait", "--scale", "workers=3")
    assert stack.containers("broker") == broker, "the broker was recreated"
    display = LiveRun(proc_guard.track(start_pivot(
        tmp_path, "attach", "--json", "--broker", stack.control, *stack.key_args("viewer"),
        env=host_env())))
    remote_keys = stack.copy_client_keys("remote", to=tmp_path / "remote-keys")
    for path in (remote_keys, *remote_keys.iterdir()):
        os.chown(path, STACK_UID, STACK_UID)
    remote_keys.chmod(0o700)
    # The same image (the same Python and packages: a pool whose code fingerprints differ
    # gets no stages); on the host's network it reaches the stack at 127.0.0.1 only.
    remote = stack.run_outside("remote", remote_keys, "workers", "--broker", stack.control,
                               "--key", "/keys/remote.key_secret", "--broker-key", "/keys/broker.key",
                               "--name", "remote", "--jobs", "1")
    # SIGTERM to each pool (PID 1 of its container): it hands back its stages and exits 0.
    stack.compose("stop", "workers")
    stopped = {n: s for n, s in stack.states().items() if "-workers-" in n}
    # A pool that crashed says where (its faulthandler) in its log, gone with the stack.
    crashed = {n: stack.log_tail(n) for n, s in stopped.items() if s != ("exited", 0)}
    assert len(stopped) == 3 and not crashed, (stopped, crashed)
    wait_for(lambda: [r["name"] for r in stack.pools()] == ["remote"], WAIT_S, "the remote pool alone")
    mark = display.mark()
    stack.pivot("repro", "--force", "prepare", "--json", timeout=60)
    host, _ = printed_pid(display, mark, "v2")
    assert host == stack.pools()[0]["host"], (host, stack.pools())
    timer.lap("a pool outside the stack: key, broker restart, run")
    theirs = {root / "hold.release"}  # the one file the test created
    others = [p for p in root.rglob("*") if p not in theirs and p.lstat().st_uid != STACK_UID]
    assert not others, f"files in the project that are not the stack user's: {others}"

    # --- stop: SIGTERM to every PID 1, each exits 0 well within its grace ---------------
    stopping = time.monotonic()
    stack.compose("--profile", "display", "stop")
    took = time.monotonic() - stopping
    states = stack.states()
    assert states and all(state == ("exited", 0) for state in states.values()), states
    assert took < 15.0, f"stopping the stack took {took:.1f} s"
    assert display.wait_exit(WAIT_S) == 0, display.stderr
    assert display.since(0)[-1]["event"] == "engine_stopped" and display.since(0)[-1]["reason"] == ""
    # The pool outside was told the engine stopped: it exits by itself.
    wait_for(lambda: stack.docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", remote).split()
             == ["exited", "0"], WAIT_S, "the remote pool to exit 0")
    timer.lap("compose stop")
