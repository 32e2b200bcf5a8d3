"""Rough edges a new user hits (issue 12, point 4), each as it was seen."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from procs import LiveRun, describe, of_kind, parse_events, run_pivot

WAIT_S = 30.0

PIPELINE = '''\
from pathlib import Path

from pivot import stage


def fit(kind: str = "") -> None:
    Path(f"fit_{kind}.txt").write_text(kind)


for kind in ("linear", "quadratic"):
    stage(name=f"fit@{kind}", params={"kind": kind}, outs=[f"fit_{kind}.txt"])(fit)


@stage(outs=["report.txt"])
def report(title: str = "r") -> None:
    Path("report.txt").write_text(title)
'''

TYPO = "fitt:\n  kind: cubic\nreprot:\n  title: x\n"
SAID = [
    "params.yaml: no stage named 'fitt' (did you mean one of 'fit@linear', 'fit@quadratic'?); its params are ignored",
    "params.yaml: no stage named 'reprot' (did you mean 'report'?); its params are ignored",
]


def test_a_typo_in_params_yaml_is_said_by_every_command_with_the_closest_stage(
    make_project: Callable[..., Path], up: Callable[..., LiveRun],
) -> None:
    root = make_project({"pipeline.py": PIPELINE, "params.yaml": TYPO})
    plain = run_pivot(root, "repro", "--display", "plain", timeout=60)
    assert plain.returncode == 0, describe(plain)
    for warning in SAID:
        assert f"pivot: {warning}" in plain.stderr, plain.stderr
    as_json = run_pivot(root, "repro", "--json", timeout=60)
    assert as_json.returncode == 0, describe(as_json)
    assert [e["message"] for e in of_kind(parse_events(as_json.stdout), "notice")] == SAID
    for args in (["repro", "-n"], ["status"]):
        result = run_pivot(root, *args, timeout=60)
        assert result.returncode == 0, describe(result)
        for warning in SAID:
            assert f"warning: {warning}" in result.stderr, describe(result)

    live = up(root)
    live.wait_event(lambda e: e["event"] == "wave_finished", WAIT_S, "the first wave")
    assert [e["message"] for e in of_kind(live.since(0), "notice")] == SAID
    live.stop()
