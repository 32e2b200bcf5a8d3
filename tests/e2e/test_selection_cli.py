"""Which stages a run takes, as DVC users ask for them (issue 12): `repro -s`,
`--downstream`, `--glob`, a variant group's name, `pivot run STAGE`, and `status --check`
/ `-q` as a CI gate. Real CLI, real engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from procs import describe, finished, one, parse_events, run_pivot

PIPELINE = '''\
from pathlib import Path

from pivot import stage


@stage(deps=["in.txt"], outs=["a.txt"])
def a() -> None:
    Path("a.txt").write_text(Path("in.txt").read_text() + "a")


@stage(deps=["a.txt"], outs=["b.txt"])
def b() -> None:
    Path("b.txt").write_text(Path("a.txt").read_text() + "b")


@stage(deps=["b.txt"], outs=["c.txt"])
def c() -> None:
    Path("c.txt").write_text(Path("b.txt").read_text() + "c")


def fit(kind: str = "") -> None:
    Path(f"fit_{kind}.txt").write_text(Path("b.txt").read_text() + kind)


for kind in ("linear", "quadratic"):
    stage(name=f"fit@{kind}", params={"kind": kind}, deps=["b.txt"], outs=[f"fit_{kind}.txt"])(fit)
'''

ALL = ["a", "b", "c", "fit@linear", "fit@quadratic"]


def ran_project(make_project: Callable[..., Path]) -> Path:
    root = make_project({"pipeline.py": PIPELINE, "in.txt": "x\n"})
    result = run_pivot(root, "repro", "--json", timeout=60)
    assert result.returncode == 0, describe(result)
    (root / "in.txt").write_text("y\n")  # everything is stale again
    return root


def wave(root: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    result = run_pivot(root, "repro", "--json", *args, timeout=60)
    assert result.returncode == 0, describe(result)
    events = parse_events(result.stdout)
    return one(events, "wave_started")["stages"], {s: e["status"] for s, e in finished(events).items()}


def test_single_item_runs_the_stage_alone_on_its_upstream_as_it_is(make_project: Callable[..., Path]) -> None:
    root = ran_project(make_project)
    (root / "a.txt").write_text("hand\n")  # b's input changed; a is stale but not run
    stages, statuses = wave(root, "-s", "b")
    assert stages == ["b"] and statuses == {"b": "ran"}
    assert (root / "b.txt").read_text() == "hand\nb"


def test_downstream_runs_what_follows_and_the_stale_upstream_it_needs(make_project: Callable[..., Path]) -> None:
    root = ran_project(make_project)
    stages, statuses = wave(root, "--downstream", "b")
    assert stages == ALL and set(statuses.values()) == {"ran"}
    assert (root / "c.txt").read_text() == "y\nabc"
    stages, _ = wave(root, "--downstream", "c")
    assert stages == ["a", "b", "c"]  # c's upstream, skipped as up to date


def test_a_variant_group_and_a_pattern_name_their_stages(make_project: Callable[..., Path]) -> None:
    root = ran_project(make_project)
    stages, statuses = wave(root, "fit")
    assert stages == ["a", "b", "fit@linear", "fit@quadratic"], stages
    assert statuses["fit@linear"] == statuses["fit@quadratic"] == "ran"
    (root / "in.txt").write_text("z\n")
    stages, _ = wave(root, "--glob", "fit@q*")
    assert stages == ["a", "b", "fit@quadratic"]
    # The dry run selects the same way.
    dry = run_pivot(root, "repro", "-n", "-s", "--glob", "fit@*")
    assert dry.returncode == 0, describe(dry)
    assert [line.split(":")[0] for line in dry.stdout.splitlines()[:-1]] == ["fit@linear", "fit@quadratic"]


def test_mistakes_are_usage_errors_with_a_close_match(make_project: Callable[..., Path]) -> None:
    root = ran_project(make_project)
    for args, said in (
        (["fitt"], "unknown stage(s): fitt (did you mean fit?)"),
        (["--glob", "zz*"], "no stage matches: zz*"),
        (["-s"], "-s/--single-item needs STAGES"),
        (["-s", "--downstream", "b"], "cannot be combined"),
    ):
        result = run_pivot(root, "repro", *args)
        assert result.returncode == 2, describe(result)
        assert said in result.stderr and "Traceback" not in result.stderr, describe(result)


def test_run_without_foreground_is_repro_single_item(make_project: Callable[..., Path]) -> None:
    root = ran_project(make_project)
    result = run_pivot(root, "run", "c", "--json", timeout=60)
    assert result.returncode == 0, describe(result)
    events = parse_events(result.stdout)
    assert one(events, "wave_started")["stages"] == ["c"]
    assert finished(events)["c"]["status"] == "skipped"  # b.txt is as it was


def test_status_check_and_quiet_are_a_ci_gate(make_project: Callable[..., Path]) -> None:
    root = ran_project(make_project)
    check = run_pivot(root, "status", "--check")
    assert check.returncode == 1, describe(check)
    assert "a: stale" in check.stdout
    quiet = run_pivot(root, "status", "-q")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (1, "", ""), describe(quiet)
    plain = run_pivot(root, "status")
    assert plain.returncode == 0, describe(plain)
    assert run_pivot(root, "repro").returncode == 0
    for args in (["--check"], ["-q"], ["--check", "--json"]):
        result = run_pivot(root, "status", *args)
        assert result.returncode == 0, describe(result)


def test_the_shell_completes_commands_and_stage_names(make_project: Callable[..., Path]) -> None:
    import os
    import subprocess

    from procs import pivot_cmd

    root = make_project({"pipeline.py": PIPELINE, "in.txt": "x\n"})

    def complete(words: str) -> list[str]:
        env = {**os.environ, "_PIVOT_COMPLETE": "bash_complete", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split(" ")) - 1)}
        done = subprocess.run(pivot_cmd(), cwd=root, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return [line.split(",", 1)[1] for line in done.stdout.splitlines()]

    assert complete("pivot re") == ["repro"]
    assert complete("pivot repro f") == ["fit@linear", "fit@quadratic", "fit"]
    assert complete("pivot run c") == ["c"]
    assert "--downstream" in complete("pivot repro --d")
