"""Unit tests for the renderers of `pivot display` (plain lines, JSON lines, rich TUI).

No sockets, no sleeps: envelopes are built directly and fed to renderers that write to
StringIO.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import subprocess
import sys
from typing import Any

import pytest

from pivot.display.jsonl import JsonRenderer
from pivot.display.plain import PlainRenderer
from pivot.display.render import (
    Renderer,
    format_duration,
    make_renderer,
    resolve_mode,
    wave_summary,
)
from pivot.protocol.codec import Envelope
from pivot.protocol.messages import (
    BusTick,
    EventsWelcome,
    LogLine,
    Message,
    PipelineInvalid,
    PipelineLoaded,
    PoolLost,
    Snapshot,
    StageFinished,
    StageStarted,
    StageView,
    WaveFinished,
    WaveStarted,
)

T0 = 1700000000.0
STAGES = ["prepare", "features", "fit", "evaluate"]
TB = (
    "Traceback (most recent call last):\n"
    '  File "pipeline.py", line 21, in fit\n'
    "    return 1 / 0\n"
    "ZeroDivisionError: division by zero\n"
)
FIT_FAILED = StageFinished(
    1, "fit", "failed", "failed", "ZeroDivisionError: division by zero", 0.2, TB
)
EVALUATE_BLOCKED = StageFinished(
    1, "evaluate", "blocked", "blocked", "blocked by failed upstream 'fit'", 0.0
)
WAVE1 = WaveFinished(1, ["prepare"], [], ["features"], ["fit"], ["evaluate"], [])


def run_messages() -> list[Message]:
    """A wave where prepare ran, features was up to date, fit failed, evaluate blocked."""
    return [
        PipelineLoaded(list(STAGES), [], []),
        WaveStarted(1, list(STAGES)),
        StageStarted(1, "prepare", "never_ran", "never ran"),
        LogLine("prepare", "stdout", "kept 40 rows"),
        LogLine("prepare", "stderr", "warning: 2 rows had no label"),
        StageFinished(1, "prepare", "ran", "never_ran", "never ran", 0.0123),
        StageFinished(1, "features", "skipped", "up_to_date", "up to date", 0.001),
        StageStarted(1, "fit", "code_changed", "code changed: fit()"),
        FIT_FAILED,
        EVALUATE_BLOCKED,
        WAVE1,
    ]


def envelopes(msgs: list[Message], first_seq: int = 1) -> list[Envelope]:
    return [
        Envelope(m, f"id-{i}", None, "broker", first_seq + i, T0 + i * 0.05)
        for i, m in enumerate(msgs)
    ]


def feed(renderer: Renderer, msgs: list[Message]) -> None:
    for env in envelopes(msgs):
        renderer.event(env)


def view(status: str, wave: int = 1, reason_code: str = "", reason: str = "",
         duration_s: float = 0.0, error: str | None = None) -> StageView:
    return StageView(status, reason_code, reason, duration_s, wave, error)


def snapshot(stages: dict[str, StageView], *, wave: int = 1, wave_running: bool = False,
             last_wave: WaveFinished | None = None,
             pipeline_error: PipelineInvalid | None = None) -> Snapshot:
    return Snapshot(
        seq=99,
        log_seq=7,
        wave=wave,
        wave_running=wave_running,
        stages=stages,
        order=[s for s in STAGES if s in stages],
        pipeline_error=pipeline_error,
        last_wave=last_wave,
    )


def wave1_done_snapshot() -> Snapshot:
    """The state after the whole of `run_messages()`."""
    return snapshot(
        {
            "prepare": view("ran", reason_code="never_ran", reason="never ran", duration_s=0.0123),
            "features": view("skipped", reason_code="up_to_date", reason="up to date"),
            "fit": view("failed", reason_code="failed", reason=FIT_FAILED.reason,
                        duration_s=0.2, error=TB),
            "evaluate": view("blocked", reason_code="blocked", reason=EVALUATE_BLOCKED.reason),
        },
        last_wave=WaveFinished(1, ran=["prepare"], restored=[], skipped=["features"], failed=["fit"],
                               blocked=["evaluate"], cancelled=[]),
    )


def plain() -> tuple[PlainRenderer, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return PlainRenderer(out, err), out, err


def jsonr(clock: float = T0 + 100) -> tuple[JsonRenderer, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return JsonRenderer(out, err, clock=lambda: clock), out, err


def records(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def outcome_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.split(":")[0] in STAGES]


# --- plain ---------------------------------------------------------------------------


def test_plain_run_lines() -> None:
    r, out, err = plain()
    feed(r, run_messages())
    r.close(0)
    assert out.getvalue().splitlines() == [
        "wave 1: 4 stages",
        "prepare: running (never ran)",
        "  prepare | kept 40 rows",
        "  prepare ! warning: 2 rows had no label",
        "prepare: ran in 0.01s",
        "features: skipped (up to date)",
        "fit: running (code changed: fit())",
        "fit: FAILED (ZeroDivisionError: division by zero)",
        "    Traceback (most recent call last):",
        '      File "pipeline.py", line 21, in fit',
        "        return 1 / 0",
        "    ZeroDivisionError: division by zero",
        "evaluate: blocked (blocked by failed upstream 'fit')",
        "wave 1 failed: 1 ran, 1 skipped, 1 failed, 1 blocked",
    ]
    assert err.getvalue() == ""
    assert "\x1b" not in out.getvalue()  # no colour on a non-terminal


def test_plain_success_summary_and_other_outcomes() -> None:
    r, out, _ = plain()
    feed(r, [
        WaveStarted(2, ["a"]),
        StageFinished(2, "a", "cancelled", "cancelled", "not started: an earlier stage failed", 0.0),
        StageFinished(2, "b", "lost", "pool_lost", "its pool died", 1.5),
        WaveFinished(3, ["x", "y"], [], ["z"], [], [], []),
        WaveFinished(4, [], [], [], [], [], []),
    ])
    assert out.getvalue().splitlines() == [
        "wave 2: 1 stage",
        "a: cancelled (not started: an earlier stage failed)",
        "b: LOST (its pool died)",
        "wave 3 done: 2 ran, 1 skipped",
        "wave 4 done: nothing to run",
    ]


def test_plain_pipeline_error_and_pool_lost_go_to_err() -> None:
    r, out, err = plain()
    feed(r, [
        PipelineInvalid("pipeline.py raised NameError", "Traceback ...\nNameError: x\n"),
        PoolLost("pool-1", "no heartbeat for 3.1 s", ["fit", "evaluate"]),
        PoolLost("pool-2", "pool reconnected", []),
    ])
    assert out.getvalue() == ""
    assert err.getvalue().splitlines() == [
        "error: pipeline.py raised NameError",
        "    Traceback ...",
        "    NameError: x",
        "worker pool pool-1 lost (no heartbeat for 3.1 s) while running: fit, evaluate",
        "worker pool pool-2 lost (pool reconnected)",
    ]


def test_plain_pipeline_loaded_quiet_on_first_load() -> None:
    r, out, _ = plain()
    feed(r, [
        PipelineLoaded(["a", "b"], [], []),
        PipelineLoaded([], [], []),
        PipelineLoaded(["c"], ["a"], ["b"]),
        PipelineInvalid("broken", ""),
        PipelineLoaded([], [], []),
    ])
    assert out.getvalue().splitlines() == [
        "pipeline reloaded: added c; changed b; removed a",
        "pipeline loaded",
    ]


def test_plain_colour_only_when_asked() -> None:
    out = io.StringIO()
    r = PlainRenderer(out, io.StringIO(), color=True)
    feed(r, [FIT_FAILED])
    assert "\x1b[1;31mFAILED\x1b[0m" in out.getvalue()


# --- json ----------------------------------------------------------------------------


def test_json_lines_carry_v_event_ts_and_fields() -> None:
    r, out, err = jsonr()
    feed(r, run_messages())
    r.close(0)
    lines = out.getvalue().splitlines()
    recs = [json.loads(line) for line in lines]
    assert [x["event"] for x in recs] == [
        "pipeline_loaded", "wave_started", "stage_started", "log", "log", "stage_finished",
        "stage_finished", "stage_started", "stage_finished", "stage_finished", "wave_finished",
    ]
    for i, rec in enumerate(recs):
        assert rec["v"] == 1
        assert rec["ts"] == pytest.approx(T0 + i * 0.05)
        assert "resynced" not in rec
    assert all(" " not in line.split('"line"')[0].split('"reason"')[0] for line in lines[:2])
    assert recs[1] == {"v": 1, "event": "wave_started", "ts": T0 + 0.05, "wave": 1,
                       "stages": STAGES, "trigger": "run", "paths": []}
    assert recs[3]["stage"] == "prepare" and recs[3]["line"] == "kept 40 rows"
    assert recs[4]["stream"] == "stderr"
    fit = recs[8]
    assert fit == {
        "v": 1, "event": "stage_finished", "ts": pytest.approx(T0 + 0.4), "wave": 1,
        "stage": "fit", "status": "failed", "reason_code": "failed",
        "reason": "ZeroDivisionError: division by zero", "duration_s": 0.2, "error": TB,
        "details": {},
    }
    assert recs[-1]["failed"] == ["fit"] and recs[-1]["lost"] == []
    assert err.getvalue() == ""


def test_json_text_is_strict_json_also_for_non_finite_floats() -> None:
    """A NaN param or a diverged metric: Python's bare NaN / Infinity is no JSON."""
    from pivot.display.strictjson import dumps

    def strict(text: str) -> Any:
        def refuse(name: str) -> Any:
            raise ValueError(f"not JSON: {name}")

        return json.loads(text, parse_constant=refuse)

    value = {"x": float("nan"), "xs": [float("inf"), -float("inf"), 1.5], "t": (float("nan"),), "s": "NaN"}
    assert strict(dumps(value)) == {"x": "NaN", "xs": ["Infinity", "-Infinity", 1.5], "t": ["NaN"], "s": "NaN"}
    assert dumps({"a": [1, 2.5]}, separators=(",", ":")) == '{"a":[1,2.5]}'
    r, out, _ = jsonr()
    feed(r, [StageStarted(1, "fit", "params_changed", "params changed", {"changes": {"lr": [0.1, float("nan")]}})])
    assert strict(out.getvalue())["details"] == {"changes": {"lr": [0.1, "NaN"]}}


def test_json_compact_separators() -> None:
    r, out, _ = jsonr()
    feed(r, [WaveStarted(1, ["a", "b"])])
    assert out.getvalue() == (
        '{"v":1,"event":"wave_started","ts":1700000000.0,"wave":1,"stages":["a","b"],"trigger":"run","paths":[]}\n'
    )


def test_json_never_emits_welcome_or_tick() -> None:
    r, out, _ = jsonr()
    feed(r, [EventsWelcome(3), BusTick(3, 0), WaveStarted(1, [])])
    assert [x["event"] for x in records(out)] == ["wave_started"]


# --- resync --------------------------------------------------------------------------


def test_plain_resync_shows_missed_outcomes_once() -> None:
    r, out, _ = plain()
    msgs = run_messages()
    feed(r, msgs[:6])  # up to prepare's stage_finished; the rest is lost in a gap
    shown = out.getvalue()
    r.resync(wave1_done_snapshot())
    after = out.getvalue()[len(shown):]
    assert after.splitlines() == [
        "features: skipped (up to date)",
        "fit: FAILED (ZeroDivisionError: division by zero)",
        "    Traceback (most recent call last):",
        '      File "pipeline.py", line 21, in fit',
        "        return 1 / 0",
        "    ZeroDivisionError: division by zero",
        "evaluate: blocked (blocked by failed upstream 'fit')",
        "wave 1 failed: 1 ran, 1 skipped, 1 failed, 1 blocked",
    ]
    # A second snapshot, and late live copies of what the snapshot covered: nothing new.
    r.resync(wave1_done_snapshot())
    feed(r, [FIT_FAILED, EVALUATE_BLOCKED, WAVE1])
    text = out.getvalue()
    assert text == shown + after
    assert sorted(outcome_lines(text)) == sorted([
        "prepare: running (never ran)", "prepare: ran in 0.01s",
        "features: skipped (up to date)",
        "fit: FAILED (ZeroDivisionError: division by zero)",
        "evaluate: blocked (blocked by failed upstream 'fit')",
    ])


def test_plain_resync_mid_wave_then_live() -> None:
    r, out, _ = plain()
    feed(r, [WaveStarted(1, list(STAGES))])
    r.resync(snapshot(
        {
            "prepare": view("ran", duration_s=0.5),
            "features": view("running", reason_code="never_ran", reason="never ran"),
            "fit": view("pending"),
            "evaluate": view("pending"),
        },
        wave_running=True,
        last_wave=None,
    ))
    feed(r, [StageFinished(1, "features", "ran", "never_ran", "never ran", 1.0)])
    assert out.getvalue().splitlines() == [
        "wave 1: 4 stages",
        "prepare: ran in 0.50s",
        "features: running (never ran)",  # (its start was missed: said, as `pivot attach` does)
        "features: ran in 1.00s",
    ]


def test_plain_attach_mid_stage_says_the_stages_running_once() -> None:
    """`pivot attach --display plain` during a long stage: it is said running at once,
    not only when it ends; a late live copy of its start, or another snapshot, says it
    again nowhere; a start the display saw live is not repeated by a resync."""
    r, out, _ = plain()
    running = snapshot(
        {
            "prepare": view("running", reason_code="never_ran", reason="never ran"),
            "features": view("running", reason_code="dep_changed", reason="data.csv changed"),
            "fit": view("pending"),
            "evaluate": view("pending"),
        },
        wave_running=True,
        last_wave=None,
    )
    r.resync(running)
    feed(r, [StageStarted(1, "prepare", "never_ran", "never ran")])  # a late copy
    r.resync(running)
    feed(r, [StageFinished(1, "prepare", "ran", "never_ran", "never ran", 2.0),
             StageStarted(1, "fit", "upstream_changed", "upstream changed")])
    r.resync(snapshot(
        {
            "prepare": view("ran", duration_s=2.0),
            "features": view("running", reason_code="dep_changed", reason="data.csv changed"),
            "fit": view("running", reason_code="upstream_changed", reason="upstream changed"),
            "evaluate": view("pending"),
        },
        wave_running=True,
        last_wave=None,
    ))
    assert out.getvalue().splitlines() == [
        "wave 1: 4 stages",
        "prepare: running (never ran)",
        "features: running (data.csv changed)",
        "prepare: ran in 2.00s",
        "fit: running (upstream changed)",
    ]


def test_plain_resync_missed_wave_start_and_pipeline_error() -> None:
    r, out, err = plain()
    feed(r, [PipelineLoaded(list(STAGES), [], [])])
    r.resync(snapshot(
        {"prepare": view("skipped", wave=2, reason="up to date"),
         "fit": view("pending", wave=2), "features": view("ran", wave=1)},
        wave=2, wave_running=True,
        last_wave=WaveFinished(1, ran=["features"], restored=[], skipped=[], failed=[], blocked=[],
                               cancelled=[]),
        pipeline_error=PipelineInvalid("bad params", ""),
    ))
    # Wave 1 was over before this display knew of any wave: history, not shown.
    assert out.getvalue().splitlines() == [
        "wave 2: 2 stages",
        "prepare: skipped (up to date)",
    ]
    assert err.getvalue().splitlines() == ["error: bad params"]


def test_baseline_makes_the_joining_snapshot_history() -> None:
    r, out, _ = plain()
    r.baseline(wave1_done_snapshot())
    r.resync(wave1_done_snapshot())
    assert out.getvalue() == ""
    feed(r, [WaveStarted(2, ["fit"]), StageFinished(2, "fit", "ran", "forced", "forced", 1.0)])
    assert out.getvalue().splitlines() == ["wave 2: 1 stage", "fit: ran in 1.00s"]


def test_json_resync_shows_missed_outcomes_once() -> None:
    r, out, _ = jsonr(clock=T0 + 100)
    msgs = run_messages()
    feed(r, msgs[:6])
    r.resync(wave1_done_snapshot())
    r.resync(wave1_done_snapshot())
    feed(r, [FIT_FAILED, EVALUATE_BLOCKED, WAVE1])
    recs = records(out)
    live, synth = recs[:6], recs[6:]
    assert all("resynced" not in x for x in live)
    assert [(x["event"], x.get("stage")) for x in synth] == [
        ("stage_finished", "features"),
        ("stage_finished", "fit"),
        ("stage_finished", "evaluate"),
        ("wave_finished", None),
    ]
    for x in synth:
        assert x["v"] == 1 and x["resynced"] is True and x["ts"] == T0 + 100
    fit = synth[1]
    assert (fit["wave"], fit["status"], fit["reason_code"], fit["duration_s"], fit["error"]) == (
        1, "failed", "failed", 0.2, TB,
    )
    assert synth[3]["failed"] == ["fit"] and synth[3]["blocked"] == ["evaluate"]
    finished = [(x["wave"], x["stage"]) for x in recs if x["event"] == "stage_finished"]
    assert len(finished) == len(set(finished)) == 4
    assert sum(x["event"] == "wave_finished" for x in recs) == 1


def test_json_resync_synthesizes_missed_wave_started() -> None:
    r, out, _ = jsonr()
    r.resync(dataclasses.replace(
        snapshot({"prepare": view("ran", duration_s=0.1), "fit": view("running")}, wave_running=True),
        trigger="files", paths=["data/raw.csv"],
    ))
    feed(r, [WaveStarted(1, ["prepare", "fit"])])  # a late copy: not repeated
    assert [(x["event"], x.get("stages"), x.get("stage")) for x in records(out)] == [
        ("wave_started", ["prepare", "fit"], None),
        ("stage_finished", None, "prepare"),
    ]
    assert (records(out)[0]["trigger"], records(out)[0]["paths"]) == ("files", ["data/raw.csv"])


# --- dropped logs --------------------------------------------------------------------


@pytest.mark.parametrize("make", [plain, jsonr])
def test_dropped_logs_reported_on_err(make: Any) -> None:
    r, out, err = make()
    r.close(3)
    assert out.getvalue() == ""  # json stays pure JSON lines
    assert "3 log lines were dropped" in err.getvalue()
    r, out, err = make()
    r.close(1)
    assert "1 log line was dropped" in err.getvalue()
    r, out, err = make()
    r.close(0)
    assert err.getvalue() == ""


# --- tui -----------------------------------------------------------------------------


def tui(terminal: bool = False) -> tuple[Any, io.StringIO]:
    from rich.console import Console

    from pivot.display.tui import TuiRenderer

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=terminal, width=100, color_system=None)
    seconds = itertools.count(T0)  # a second passes per reading: every event refreshes
    return TuiRenderer(console, clock=lambda: float(next(seconds))), buf


def test_tui_final_output_on_a_plain_console() -> None:
    r, buf = tui()
    feed(r, run_messages())
    r.close(2)
    text = buf.getvalue()
    for stage in STAGES:
        assert stage in text
    assert "ZeroDivisionError: division by zero" in text
    assert "wave 1 failed: 1 ran, 1 skipped, 1 failed, 1 blocked" in text
    assert "2 log lines were dropped" in text
    assert "\x1b" not in text
    assert text.count("evaluate") == 1  # printed once, no leftover live frames


def test_tui_live_view_on_a_terminal() -> None:
    r, buf = tui(terminal=True)
    feed(r, run_messages()[:3])  # prepare is running
    live_text = buf.getvalue()
    assert "prepare" in live_text and "running" in live_text
    feed(r, run_messages()[3:])
    r.close(0)
    final = buf.getvalue()[len(live_text):]
    assert "wave 1 failed" in final and "evaluate" in final


def test_tui_resync_and_wave_change() -> None:
    r, buf = tui()
    r.resync(wave1_done_snapshot())
    feed(r, [
        PoolLost("pool-1", "no heartbeat", []),
        WaveStarted(2, ["fit"]),
        StageStarted(2, "fit", "code_changed", "code changed: fit()"),
        LogLine("fit", "stdout", "\x1b[31mred\x1b[0m [bold]not markup[/bold]"),
        StageFinished(2, "fit", "ran", "code_changed", "code changed: fit()", 2.5),
        WaveFinished(2, ["fit"], [], [], [], [], []),
        PipelineInvalid("pipeline.py raised", "Traceback ...\nSyntaxError\n"),
    ])
    r.close(0)
    text = buf.getvalue()
    # Wave 1's summary stays on screen when wave 2 replaces it.
    assert text.index("wave 1 failed:") < text.index("wave 2 done: 1 ran")
    assert "worker pool pool-1 lost (no heartbeat)" in text
    assert "pipeline error: pipeline.py raised" in text
    assert "2.50s" in text


def test_tui_says_a_pipeline_error_standing_at_the_end_on_stderr_as_an_error_line() -> None:
    from rich.console import Console

    from pivot.display.tui import TuiRenderer

    out, err = io.StringIO(), io.StringIO()
    r = TuiRenderer(Console(file=out, width=100, color_system=None), err=err)
    feed(r, [PipelineInvalid("dvc.yaml: stage 'bad': unknown key 'foo'", "")])
    r.close(0)
    assert err.getvalue().splitlines() == ["error: dvc.yaml: stage 'bad': unknown key 'foo'"]
    assert "unknown key" not in out.getvalue()


def test_tui_joining_mid_wave_shows_the_last_change_and_the_log_tails() -> None:
    r, buf = tui(terminal=True)
    r.resync(dataclasses.replace(
        snapshot({"prepare": view("ran"), "fit": view("running")}, wave=4, wave_running=True),
        trigger="files", paths=["data/raw.csv"], logs={"prepare": [["stdout", "rows: 1200"]]},
    ))
    text = buf.getvalue()
    assert "wave 4" in text and "files: data/raw.csv" in text
    assert "rows: 1200" in text
    r.close(0)


def test_tui_shows_a_failed_stages_own_last_output_above_its_traceback() -> None:
    r, buf = tui()
    noise = [LogLine("prepare", "stdout", f"row {i}") for i in range(30)]
    feed(r, [
        WaveStarted(1, ["prepare", "fit"]),
        StageStarted(1, "fit", "never_ran", "never ran"),
        LogLine("fit", "stdout", "epoch 3: loss nan"),
        *noise,  # more than the shared log tail holds
        StageFinished(1, "fit", "failed", "failed", "ValueError: nan", 0.5, "Traceback ...\nValueError: nan"),
    ])
    r.close(0)
    text = buf.getvalue()
    assert "last output of fit" in text and "epoch 3: loss nan" in text
    assert text.index("epoch 3: loss nan") < text.index("Traceback ...")


def moved_on() -> list[Message]:
    """A code change stops wave 1 while `long` runs; its code did not change: wave 2
    takes it over, and it fails there."""
    return [
        WaveStarted(1, ["long", "b"]),
        StageStarted(1, "long", "dep_changed", "dep changed: long.in"),
        LogLine("long", "stdout", "epoch 3: loss nan"),
        StageFinished(1, "b", "cancelled", "cancelled", "not started: code changed", 0.0),
        WaveFinished(1, [], [], [], [], [], ["b"], [], ["long"]),
        WaveStarted(2, ["long", "b"]),
        StageStarted(2, "long", "dep_changed", "dep changed: long.in", {"from_wave": 1}),
        StageFinished(2, "long", "failed", "failed", "ValueError: nan", 4.0, "Traceback ...\nValueError: nan"),
    ]


def test_plain_says_a_stage_taken_over_by_the_next_wave_runs_on() -> None:
    r, out, _ = plain()
    feed(r, moved_on())
    assert out.getvalue().splitlines()[:7] == [
        "wave 1: 2 stages",
        "long: running (dep changed: long.in)",
        "  long | epoch 3: loss nan",
        "b: cancelled (not started: code changed)",
        "wave 1 stopped: 1 cancelled, 1 running on in wave 2",
        "wave 2: 2 stages",
        "long: running on from wave 1 (its code did not change)",
    ]


def test_tui_keeps_what_a_stage_taken_over_by_the_next_wave_printed_before() -> None:
    r, buf = tui()
    feed(r, moved_on())
    r.close(0)
    text = buf.getvalue()
    assert "last output of long" in text and "epoch 3: loss nan" in text
    assert text.index("epoch 3: loss nan") < text.index("Traceback ...")


def test_tui_close_without_events_prints_nothing() -> None:
    r, buf = tui()
    r.close(0)
    r.close(0)
    assert buf.getvalue() == ""


# --- factory and helpers -------------------------------------------------------------


def test_resolve_and_make_renderer() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert resolve_mode("auto", out) == "plain"
    assert resolve_mode("json", out) == "json"
    with pytest.raises(ValueError, match="unknown display mode"):
        resolve_mode("fancy", out)
    assert isinstance(make_renderer("plain", out, err), PlainRenderer)
    assert isinstance(make_renderer("json", out, err), JsonRenderer)
    assert isinstance(make_renderer("auto", out, err), PlainRenderer)
    r = make_renderer("tui", out, err)
    assert isinstance(r, Renderer)
    r.close(0)


def test_rich_is_not_imported_for_plain_or_json() -> None:
    code = (
        "import sys, pivot.display, pivot.display.render, pivot.display.plain, "
        "pivot.display.jsonl; print('rich' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_format_duration_and_summary() -> None:
    assert [format_duration(s) for s in (0.0123, 3.256, 42.12, 125, 3725, -1)] == [
        "0.01s", "3.26s", "42.1s", "2m05s", "1h02m", "0.00s",
    ]
    assert wave_summary(WaveFinished(5, [], [], [], [], [], [], ["x"])) == "wave 5 failed: 1 lost"
    restored = WaveFinished(6, ["a"], ["b", "c"], ["d"], [], [], [])
    assert wave_summary(restored) == "wave 6 done: 1 ran, 2 restored, 1 skipped"
    moved = WaveFinished(7, [], [], [], [], [], ["b"], [], ["long"])
    assert wave_summary(moved) == "wave 7 stopped: 1 cancelled, 1 running on in wave 8"


def test_plain_shows_restored_stages_and_pivot_notes() -> None:
    r, out, _ = plain()
    note = "saved hand-edited output m.json to the cache as abc; get it back with `pivot checkout --hash abc m.json`"
    feed(r, [
        WaveStarted(1, ["fit"]),
        LogLine("fit", "pivot", note),
        StageFinished(1, "fit", "restored", "restored", "restored from run cache (params changed: lr 1 -> 2)", 0.0),
        WaveFinished(1, [], ["fit"], [], [], [], []),
    ])
    assert out.getvalue().splitlines() == [
        "wave 1: 1 stage",
        f"  fit note: {note}",
        "fit: restored from run cache (params changed: lr 1 -> 2)",
        "wave 1 done: 1 restored",
    ]


def test_tui_shows_a_restored_stage_with_its_reason() -> None:
    r, buf = tui()
    feed(r, [
        WaveStarted(1, ["fit"]),
        StageFinished(1, "fit", "restored", "restored", "restored from run cache (params changed)", 0.0),
        WaveFinished(1, [], ["fit"], [], [], [], []),
    ])
    r.close(0)
    text = buf.getvalue()
    assert "✓ restored" in text and "restored from run cache (params changed)" in text
    assert "wave 1 done: 1 restored" in text


@pytest.mark.parametrize("width", [80, 120, 200])
def test_the_live_view_never_cuts_stage_names_or_statuses_only_reasons(width: int) -> None:
    """At 80 columns a long reason squeezed the stage to `p…`; at 120 `fit@linear` and
    `fit@quadratic` both showed as `fit@…`; at 200 the status was `✓ …`."""
    from rich.console import Console

    from pivot.display.tui import TuiRenderer

    names = ["prepare_features_for_the_model", "fit@linear", "fit@quadratic", "evaluate"]
    reason = "params changed: " + ", ".join(f"param_{i}: {i} -> {i + 1}" for i in range(30))
    msgs: list[Message] = [PipelineLoaded(names, [], []), WaveStarted(1, names)]
    for name in names[:3]:
        msgs += [StageStarted(1, name, "params_changed", reason), StageFinished(1, name, "ran", "params_changed", reason, 1.5)]
    msgs.append(StageStarted(1, "evaluate", "upstream_changed", reason))
    buf = io.StringIO()
    r = TuiRenderer(Console(file=buf, force_terminal=False, width=width, color_system=None), clock=lambda: T0)
    feed(r, msgs)
    r.close(0)
    lines = buf.getvalue().splitlines()
    assert all(len(line) <= width for line in lines), [line for line in lines if len(line) > width]
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in names}
    assert set(rows) == set(names), lines
    for name in names[:3]:
        assert "✓ ran" in rows[name] and "1.50s" in rows[name], rows[name]
    assert "running" in rows["evaluate"], rows["evaluate"]
    assert all(row.rstrip().endswith("…") for row in rows.values()), rows  # the reason gave way


def test_the_live_view_header_says_when_the_engine_is_paused() -> None:
    from pivot.protocol.messages import Paused, Resumed

    def shown(msgs: list[Message], snap: Snapshot | None = None) -> str:
        r, buf = tui()
        feed(r, msgs)
        if snap is not None:
            r.resync(snap)
        r.close(0)
        return buf.getvalue()

    assert "PAUSED" in shown([*run_messages(), Paused()])
    waiting = shown([*run_messages(), Paused(), Paused(["data/raw.csv", "params.yaml"])])
    assert "PAUSED: 2 changes wait (data/raw.csv, params.yaml) until p resumes · 4/4 stages" in waiting, waiting
    assert "PAUSED" not in shown([*run_messages(), Paused(), Resumed()])
    paused = dataclasses.replace(snapshot({"prepare": view("ran")}, wave=1), paused=True)
    assert "PAUSED" in shown(run_messages()[:2], paused)


def test_what_the_stages_printed_stays_on_screen_after_a_run() -> None:
    """Every line printed above the view, in order, before the final table (the live
    view used to keep its last ten lines, then erase them)."""
    r, buf = tui()  # not a terminal: what is written is exactly what stays
    msgs = run_messages()
    steps = [LogLine("prepare", "stdout", f"prep step {i}") for i in range(40)]
    feed(r, [*msgs[:3], *steps, *msgs[3:]])
    r.close(0)
    text = buf.getvalue()
    shown = [line for line in text.splitlines() if line.startswith("prepare | prep step")]
    assert shown == [f"prepare | prep step {i}" for i in range(40)], shown
    assert "prepare | kept 40 rows" in text and "prepare ! warning: 2 rows had no label" in text, text
    assert text.index("prep step 39") < text.index("wave 1 · ") < text.index("wave 1 failed:"), text


def test_lines_are_printed_above_in_batches_and_before_the_events_after_them() -> None:
    from rich.console import Console

    from pivot.display.tui import TuiRenderer

    now = [T0]
    buf = io.StringIO()
    r = TuiRenderer(Console(file=buf, force_terminal=False, width=100, color_system=None), clock=lambda: now[0])
    feed(r, run_messages()[:3])
    feed(r, [LogLine("prepare", "stdout", f"step {i}") for i in range(3)])
    assert "step 0" in buf.getvalue() and "step 2" not in buf.getvalue()  # a batch per tenth
    r.idle()
    assert "step 2" in buf.getvalue()
    feed(r, [LogLine("prepare", "stdout", "last"), StageFinished(1, "prepare", "ran", "never_ran", "never ran", 0.01)])
    assert "prepare | last" in buf.getvalue()  # printed at once: the event follows it
    r.close(0)


def test_a_progress_bar_is_shown_in_place_and_gives_way_to_the_line_that_ends_it() -> None:
    def frames(msgs: list[Message]) -> str:
        r, buf = tui(terminal=True)
        feed(r, msgs)
        return buf.getvalue().rsplit("─ log ─", 1)[-1]  # the last frame's log

    started = run_messages()[:3]
    bars = [LogLine("prepare", "stderr", f"{i}0%|{'#' * i}", partial=True) for i in range(1, 4)]
    shown = frames([*started, *bars])
    assert "30%|###" in shown and "20%|##" not in shown and "10%|#" not in shown, shown
    r, buf = tui(terminal=True)
    feed(r, [*started, *bars, LogLine("prepare", "stderr", "100%|##########")])
    after = buf.getvalue().split("prepare ! 100%|##########", 1)[1]  # printed above the view
    assert "30%|###" not in after.rsplit("wave 1 · ", 1)[-1], after  # the last frame has no bar


def test_plain_output_prints_a_progress_bar_every_ten_seconds_at_most() -> None:
    r, out, _ = plain()
    bars = [LogLine("prepare", "stderr", f"step {i}", partial=True) for i in range(400)]  # 0.05 s apart: 20 s
    feed(r, [*run_messages()[:3], *bars, LogLine("prepare", "stderr", "done")])
    shown = [line.strip() for line in out.getvalue().splitlines() if "prepare ~" in line or "prepare !" in line]
    assert shown == ["prepare ~ step 0", "prepare ~ step 200", "prepare ! done"], shown


def test_json_log_events_say_whether_the_line_is_partial() -> None:
    r, out, _ = jsonr()
    feed(r, [LogLine("prepare", "stderr", "50%", partial=True), LogLine("prepare", "stdout", "done")])
    assert [(e["line"], e["partial"]) for e in records(out)] == [("50%", True), ("done", False)]
