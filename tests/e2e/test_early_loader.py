"""The loader the `pivot` script forks before its own imports (pivot/launch/early.py):
taken by the command that loads the pipeline, never a second load, and killed with its
files when no command takes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.procs import alive, describe, kill_group, pivot_cmd, start_pivot, wait_exit, wait_for

PIPELINE = textwrap.dedent("""\
    import os
    import sys

    from pivot import stage

    with open("imports.log", "a") as log:  # one line per import of this file
        log.write(f"{os.getpid()}\\n")
    with open("click.log", "a") as log:  # whether the command line's modules came first
        log.write(f"{'click' in sys.modules}\\n")
    if os.path.exists("gate"):  # a FIFO: the import waits for a writer
        open("gate").read()


    @stage(deps=["in.txt"], outs=["out.txt"])
    def copy() -> None:
        with open("in.txt") as f, open("out.txt", "w") as out:
            out.write(f.read())
""")


def _pivot(root: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*pivot_cmd(), *args], cwd=root, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env={**os.environ, "TMPDIR": str(tmp)})


def _imports(root: Path) -> list[str]:
    return (root / "imports.log").read_text().split()


def _project(make_project: Callable[..., Path], tmp_path: Path) -> tuple[Path, Path]:
    root = make_project({"pipeline.py": PIPELINE, "in.txt": "x\n"})
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    ran = _pivot(root, tmp, "repro")
    assert ran.returncode == 0 and (root / "out.txt").read_text() == "x\n", describe(ran)
    return root, tmp


def test_status_and_a_run_with_nothing_to_do_import_the_pipeline_once(
    make_project: Callable[..., Path], tmp_path: Path,
) -> None:
    root, tmp = _project(make_project, tmp_path)
    for args, said in ((("status",), "up to date"), (("repro",), "skipped"), (("repro", "--dry-run"), "skip")):
        before = len(_imports(root))
        result = _pivot(root, tmp, *args)
        assert result.returncode == 0 and said in result.stdout, describe(result)
        assert len(_imports(root)) == before + 1, (args, _imports(root))
    (root / "in.txt").write_text("y\n")  # a stale stage: the engine's pool gets the loaded pipeline
    before = len(_imports(root))
    ran = _pivot(root, tmp, "repro")
    assert ran.returncode == 0 and (root / "out.txt").read_text() == "y\n", describe(ran)
    workers = len(_imports(root)) - before - 1  # the stage's worker imports it to run it
    assert workers == 1, _imports(root)[before:]
    assert [p.name for p in tmp.iterdir() if p.name.startswith("pivot-manifest-")] == []


def test_a_projects_first_run_takes_the_loader_forked_before_the_command_lines_imports(
    make_project: Callable[..., Path], tmp_path: Path,
) -> None:
    root = make_project({"pipeline.py": PIPELINE, "in.txt": "x\n"})
    assert not (root / ".pivot").exists()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    ran = _pivot(root, tmp, "repro")
    assert ran.returncode == 0 and (root / "out.txt").read_text() == "x\n", describe(ran)
    assert len(_imports(root)) == 2, _imports(root)  # the loader, then the stage's worker
    assert (root / "click.log").read_text().split()[0] == "False"  # the script's loader
    assert [p.name for p in tmp.iterdir() if p.name.startswith("pivot-manifest-")] == []


def test_a_loader_no_command_takes_is_killed_with_its_files(
    make_project: Callable[..., Path], tmp_path: Path,
) -> None:
    root, tmp = _project(make_project, tmp_path)
    os.mkfifo(root / "gate")  # every later import of pipeline.py waits there, until killed
    before = len(_imports(root))
    wrong = _pivot(root, tmp, "status", "--no-such-option")
    assert wrong.returncode == 2 and "no-such-option" in wrong.stderr, describe(wrong)
    for pid in _imports(root)[before:]:  # the loader, if it got that far: gone with the command
        assert not Path(f"/proc/{pid}").exists(), pid
    assert [p.name for p in tmp.iterdir() if p.name.startswith("pivot-manifest-")] == []


def test_a_command_that_ends_without_taking_its_loader_kills_it_with_its_files(
    make_project: Callable[..., Path], tmp_path: Path,
) -> None:
    # A command's quick exit (os._exit: pivot/cli/ending.py) runs no exit handler: a loader
    # forked for it and not taken (an engine found after all) must still go.
    root, tmp = _project(make_project, tmp_path)
    os.mkfifo(root / "gate")  # the loader's import of pipeline.py waits there, until killed
    script = textwrap.dedent("""\
        import sys
        from pivot.launch import early
        from pivot.cli.main import main

        assert early.fork_loader(["status"]) is None and early._forked
        sys.argv = ["pivot", "--version"]  # ends well, and takes no loader
        main()
    """)
    before = len(_imports(root))
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TMPDIR": str(tmp)})
    assert result.returncode == 0 and "version" in result.stdout, describe(result)
    for pid in _imports(root)[before:]:  # the loader, if it got that far: gone with the command
        assert not Path(f"/proc/{pid}").exists(), pid
    assert [p.name for p in tmp.iterdir() if p.name.startswith("pivot-manifest-")] == []


def test_a_loader_forked_for_another_root_is_not_taken(make_project: Callable[..., Path], tmp_path: Path) -> None:
    root, tmp = _project(make_project, tmp_path)
    script = textwrap.dedent("""\
        import os, sys
        from pathlib import Path
        from pivot.launch import early
        from pivot.launch.spawn import start_loader

        def files():
            return len([n for n in os.listdir(os.environ["TMPDIR"]) if n.startswith("pivot-manifest-")])

        for argv in (["repro", "--force"], ["repro", "-fj2"], ["status", "-h"], ["list"], ["up"]):
            early.fork_loader(argv)
            print(files(), end=" ")
        early.fork_loader(["status"])
        print(files(), end=" ")
        assert early.take("/no/such/root") is None
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            print("reaped", files(), end=" ")
        early.fork_loader(["repro", "-j", "2", "--display", "plain"])
        print(",".join(s.name for s in start_loader(Path.cwd()).result().stages))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TMPDIR": str(tmp)})
    assert result.returncode == 0, describe(result)
    assert result.stdout.split() == ["0", "0", "0", "0", "0", "2", "reaped", "0", "copy"], describe(result)
    assert [p.name for p in tmp.iterdir() if p.name.startswith("pivot-manifest-")] == []


def _waits_in_poll(pid: int) -> bool:
    """Whether `pid` sleeps in poll(2): the command waits for its loader's answer."""
    try:
        return "poll" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("command", ["status", "repro"])
def test_a_command_interrupted_while_its_loader_loads_takes_the_loader_with_it(
    make_project: Callable[..., Path], tmp_path: Path, command: str,
) -> None:
    # A SIGINT to the command alone (a terminal's Ctrl-C reaches the loader too): the
    # load no one will read must not run on. Another Ctrl-C as it ends (PIVOT_FAULT) is
    # ignored: it raised in the handler, a traceback.
    root, tmp = _project(make_project, tmp_path)
    os.mkfifo(root / "gate")  # the loader's import of pipeline.py waits there, until killed
    before = len(_imports(root))
    cli = start_pivot(root, command, env={**os.environ, "TMPDIR": str(tmp), "PIVOT_FAULT": "interrupted:interrupt"})
    loader = 0
    try:
        loader = int(wait_for(lambda: _imports(root)[before:], 30, "the loader to import pipeline.py")[0])
        wait_for(lambda: _waits_in_poll(cli.pid), 30, f"pivot {command} to wait for its loader")
        os.kill(cli.pid, signal.SIGINT)
        code, _, err = wait_exit(cli, 30, f"pivot {command} after SIGINT")
        assert code == 130 and "interrupted" in err and "Traceback" not in err, (code, err)
        wait_for(lambda: not alive(loader), 10, f"the loader (pid {loader}) to be gone")
        assert [p.name for p in tmp.iterdir() if p.name.startswith("pivot-manifest-")] == []
    finally:
        if cli.poll() is None:
            kill_group(cli.pid)
        if loader and alive(loader):
            os.kill(loader, signal.SIGKILL)


def test_a_ctrl_c_reaching_the_early_loader_prints_no_traceback(
    make_project: Callable[..., Path], tmp_path: Path,
) -> None:
    """A terminal's Ctrl-C reaches the whole process group, the loader too: during its
    imports it printed a traceback to the terminal beside the command's `interrupted`
    (PIVOT_FAULT: a SIGINT to the loader alone, before its imports). The command, not
    interrupted, loads the pipeline itself: `status` said "the pipeline loader exited
    with code 130 before reporting" (exit 2) where `repro` went on."""
    root, tmp = _project(make_project, tmp_path)
    (root / "in.txt").write_text("y\n")
    for command in ("status", "repro"):
        result = subprocess.run([*pivot_cmd(), command], cwd=root, capture_output=True, text=True, timeout=30,
                                stdin=subprocess.DEVNULL,
                                env={**os.environ, "TMPDIR": str(tmp), "PIVOT_FAULT": "loading:interrupt"})
        assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr, describe(result)
        assert result.returncode == 0, describe(result)
        assert command == "repro" or "copy: stale" in result.stdout, describe(result)
    assert (root / "out.txt").read_text() == "y\n"
    status = _pivot(root, tmp, "status")
    assert status.returncode == 0 and "copy: up to date" in status.stdout, describe(status)


@pytest.mark.parametrize("command", ["status", "repro"])
def test_a_ctrl_c_as_the_script_forks_its_loader_ends_the_command_at_once(
    make_project: Callable[..., Path], tmp_path: Path, command: str,
) -> None:
    """A Ctrl-C raised in an at-fork hook (logging's, releasing its lock) was ignored and
    left that lock held: the command hung ~8 s, then said "a Pivot problem"; one before
    the command line ran printed a traceback. Held back across the fork, it ends the
    command as any Ctrl-C does, its loader with it (PIVOT_FAULT: a SIGINT just after the
    fork, while it is held)."""
    root, tmp = _project(make_project, tmp_path)
    (root / "in.txt").write_text("y\n")
    result = subprocess.run([*pivot_cmd(), command], cwd=root, capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL,
                            env={**os.environ, "TMPDIR": str(tmp), "PIVOT_FAULT": "forked:interrupt"})
    assert result.returncode == 130 and result.stderr == "interrupted\n", describe(result)
    assert [p.name for p in tmp.iterdir() if p.name.startswith("pivot-manifest-")] == []
    ran = _pivot(root, tmp, "repro")
    assert ran.returncode == 0 and (root / "out.txt").read_text() == "y\n", describe(ran)
