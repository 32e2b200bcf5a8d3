"""A display stopped with SIGSTOP (issue 11): the engine does not wait for it.

While `pivot attach` is stopped, a wave whose 30 stages print in bursts runs: the
broker's queue for the stopped display (2,000 messages here: PIVOT_EVENTS_HWM)
overflows, so the display loses log lines and state events. The wave still finishes, the
pool keeps its heartbeats (no pool lost) and `pivot ps` answers. After SIGCONT the
display catches up from a snapshot, shows the wave's outcome and says how many events
it missed.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from procs import LiveRun, ProcGuard, of_kind, run_pivot

pytestmark = pytest.mark.timeout(120)

WAIT_S = 40.0
# Each stage prints three bursts a tenth of a second apart, each published as 200 lines
# (the bus's limit per stage and tenth): 30 stages make 18,000 messages, far more than
# the broker queues for one subscriber here (2,000) plus what the socket buffers hold.
# The stopped display must lose some.
CHATTY = 30
BURSTS = 3
HWM = 2000

STAGE = '''
@stage(deps=["data/in.txt"], outs=["out/c{i}.txt"])
def chatty{i}() -> None:
    tag = open("data/in.txt").read().strip()
    for burst in range({bursts} if tag != "first" else 0):  # the first wave: quiet, quick
        for n in range(400):
            print(f"{{tag}} {{burst}} {{n:05d}}")
        sys.stdout.flush()
        time.sleep(0.15)
    open("out/c{i}.txt", "w").write(tag)
'''

PIPELINE = (
    "import sys\nimport time\n\nfrom pivot import stage\n"
    + "".join(STAGE.format(i=i, bursts=BURSTS) for i in range(CHATTY))
    + f"""
@stage(deps=[f"out/c{{i}}.txt" for i in range({CHATTY})], outs=["after.txt"])
def after() -> None:
    open("after.txt", "w").write(open("out/c0.txt").read())
"""
)


def test_a_stopped_display_neither_holds_up_the_engine_nor_misses_the_outcome(
    make_project: Callable[..., Path], up: Callable[..., LiveRun], proc_guard: ProcGuard
) -> None:
    root = make_project({"pipeline.py": PIPELINE, "data/in.txt": "first\n", "out/.keep": ""})
    live = up(root, env={**os.environ, "PIVOT_EVENTS_HWM": str(HWM)})
    live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "the first wave")
    live.wait_watching(root / "data")

    attach = LiveRun(proc_guard.start(root, "attach", "--display", "json"))
    try:
        attach.wait_event(
            lambda e: e["event"] == "stage_finished" and e["stage"] == "after", WAIT_S,
            "the attach to show the first wave",
        )
        attach.proc.send_signal(signal.SIGSTOP)
        try:
            start = live.mark()
            (root / "data" / "in.txt").write_text("second\n")
            done = live.wait_event(
                lambda e: e["event"] == "wave_finished", WAIT_S, "the wave while the display is stopped", start
            )
            wave = done["wave"]
            assert of_kind(live.since(0), "pool_lost") == [], "the pool was lost while a display was stopped"
            ps = run_pivot(root, "ps", "--json", timeout=20)
            assert ps.returncode == 0, ps.stderr
            assert any(p["role"] == "pool" for p in json.loads(ps.stdout)["processes"]), ps.stdout
        finally:
            attach.proc.send_signal(signal.SIGCONT)

        shown = attach.wait_event(
            lambda e: e["event"] == "wave_finished" and e["wave"] == wave, WAIT_S,
            "the stopped display to show the wave's end after SIGCONT",
        )
        # Its end was lost with the overflow: it comes from the snapshot.
        assert shown.get("resynced") is True, shown
        finished = {
            e["stage"]: e for e in attach.since(0) if e["event"] == "stage_finished" and e["wave"] == wave
        }
        expected = {f"chatty{i}": "ran" for i in range(CHATTY)} | {"after": "ran"}
        assert {k: v["status"] for k, v in finished.items()} == expected, finished
        attach.terminate()
        assert attach.wait_exit(15) == 0
        said = re.findall(r"missed (\d+) events?", attach.stderr)
        assert said and all(int(n) > 0 for n in said), attach.stderr
        # What it says it missed are state events: at most a start and an end per stage
        # and the wave's own two.
        assert sum(int(n) for n in said) <= 2 * (CHATTY + 1) + 2, attach.stderr
        assert "log lines were dropped" in attach.stderr, attach.stderr
    finally:
        if attach.proc.poll() is None:
            os.kill(attach.proc.pid, signal.SIGCONT)
            attach.terminate()
            attach.wait_exit(15)
    assert (root / "after.txt").read_text() == "second"
    live.stop()
