"""The live view on a real pseudo-terminal, and under tmux, of 80x24, 120x40 and 200x50 (issue 12): stage
names and statuses are never cut (only the reason gives way), and what a running stage
prints shows while it runs, a progress bar as its latest state, in place; after a
`pivot repro`, everything the stages printed is in the terminal's scrollback."""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from procs import ProcGuard, pivot_cmd, wait_exit

pytestmark = pytest.mark.timeout(60)

WAIT_S = 20.0
LONG = "a_stage_with_a_long_name_for_the_table"

PIPELINE = f'''\
import os
import sys
import time

from pivot import stage


def fit(kind: str = "linear") -> None:
    open(f"fit-{{kind}}.txt", "w").write(kind)


for kind in ("linear", "quadratic"):
    stage(name=f"fit@{{kind}}", params={{"kind": kind}}, deps=["in.txt"], outs=[f"fit-{{kind}}.txt"])(fit)


@stage(deps=["in.txt"], outs=["{LONG}.txt"])
def {LONG}(note: str = "{"x" * 150}") -> None:
    open("{LONG}.txt", "w").write(note)


@stage(deps=["fit-linear.txt"], outs=["talk.txt"])
def talk() -> None:
    print("epoch 1 of 3: loss 0.52")
    for i in range(1, 4):
        sys.stderr.write(f"\\r{{i}}/3 |{{'#' * i}}")
        sys.stderr.flush()
    deadline = time.monotonic() + 40
    while not os.path.exists("signals/go"):
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.01)
    open("talk.txt", "w").write("ok")
'''

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")
TOKENS = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\x1b[()][A-Z0-9]|\x1b[=>]|([\r\n])|([^\x1b\r\n]+)")


def terminal_lines(data: str, columns: int, rows: int) -> list[str]:
    """What a terminal holds after `data` (its scrollback, then its screen), as lines: a
    small emulator of what rich writes (text, CR, LF, cursor up within the screen, erase
    in line; colours ignored). The bytes alone would not do: every frame the live view
    drew, and erased, is in them."""
    lines = [""]
    row = col = 0
    for m in TOKENS.finditer(data):
        args, cmd, control, text = m.groups()
        if text:
            for ch in text:
                if col >= columns:  # the terminal wraps
                    row, col = row + 1, 0
                    if row == len(lines):
                        lines.append("")
                line = lines[row].ljust(col)
                lines[row] = line[:col] + ch + line[col + 1 :]
                col += 1
        elif control == "\r":
            col = 0
        elif control == "\n":  # the pty's ONLCR makes it CR LF
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif cmd == "A":  # never above the screen's top: scrollback is out of reach
            row = max(len(lines) - rows, 0, row - int(args or 1))
        elif cmd == "K":
            mode = args or "0"
            lines[row] = "" if mode == "2" else lines[row][:col] if mode == "0" else " " * col + lines[row][col:]
    return [line.rstrip() for line in lines]


class Screen:
    """What `pivot up` wrote to its terminal (the pty's master, read by a thread)."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.data = bytearray()
        self.cond = threading.Condition()
        self.eof = False
        threading.Thread(target=self._read, name="pty", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                chunk = b""
            with self.cond:
                self.data += chunk
                self.eof = not chunk
                self.cond.notify_all()
            if not chunk:
                return

    def text(self) -> str:
        with self.cond:
            return ANSI.sub("", self.data.decode(errors="replace"))

    def wait_for(self, pattern: str, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not re.search(pattern, ANSI.sub("", self.data.decode(errors="replace"))):
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    raise AssertionError(f"{pattern!r} never showed:\n{self.data.decode(errors='replace')[-4000:]}")
                self.cond.wait(left)


@pytest.mark.parametrize(("columns", "rows"), [(80, 24), (120, 40), (200, 50)])
def test_the_live_view_on_a_terminal_keeps_names_whole_and_streams_what_a_stage_prints(
    make_project: Callable[..., Path], proc_guard: ProcGuard, tmp_path: Path, columns: int, rows: int,
) -> None:
    root = make_project({"pipeline.py": PIPELINE, "in.txt": "x\n", ".pivotignore": "signals/\n",
                         "signals/.keep": ""})
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    proc: subprocess.Popen[str] | None = None
    try:
        with open(tmp_path / "up.stderr", "w") as err:
            proc = proc_guard.track(subprocess.Popen(
                [*pivot_cmd(), "up", "--display", "tui", "--debounce", "20"], cwd=root, stdin=slave,
                stdout=slave, stderr=err, start_new_session=True, text=True, env=env,
            ))
        os.close(slave)
        slave = -1
        screen = Screen(master)
        # While talk holds: its line, and its progress bar's latest state only.
        screen.wait_for(r"talk \| epoch 1 of 3: loss 0\.52")
        screen.wait_for(r"talk ! 3/3 \|###")
        assert not re.search(r"talk ! [12]/3", screen.text()), "a progress bar's old states were shown as lines"
        (root / "signals" / "go").write_text("")
        screen.wait_for(r"talk\s+✓ ran")
        text = screen.text()
        for name in ("fit@linear", "fit@quadratic", LONG, "talk"):
            assert re.search(rf"(^|\s){re.escape(name)}\s+✓ ran", text, re.M), (name, text[-3000:])
        # A reason far wider than the terminal: it gives way, the name and status stay.
        seen = len(screen.text())
        (root / "params.yaml").write_text(f"{LONG}:\n  note: {'y' * 150}\n")
        # The header comes before the table in a frame: wait for the row itself, whole.
        screen.wait_for(rf"{LONG}\s+✓ ran\s+\S+\s+params changed[^\n]*\n")
        shown = screen.text()[seen:]
        rows_seen = [line for line in shown[:shown.rfind("\n")].splitlines() if line.startswith(LONG)]
        assert rows_seen and all(len(line) <= columns for line in rows_seen), rows_seen
        last = rows_seen[-1]
        assert re.match(rf"{LONG}\s+✓ ran\s+\S+\s+params changed", last) and last.rstrip().endswith("…"), last
        proc.terminate()
        rc, _, _ = wait_exit(proc, WAIT_S, "pivot up after SIGTERM")
        assert rc == 0, (tmp_path / "up.stderr").read_text()
    finally:
        if proc is not None and proc.poll() is None:  # a failed check: stop it all the same
            proc.terminate()
            wait_exit(proc, WAIT_S, "pivot up after SIGTERM")
        if slave >= 0:
            os.close(slave)
        os.close(master)


STEPS = """\
import sys

from pivot import stage


@stage(deps=["in.txt"], outs=["prep.txt"])
def prep() -> None:
    for i in range(40):  # in one burst: the live view never has room for them all
        print(f"prep step {i}")
    sys.stdout.flush()
    for i in range(1, 4):
        sys.stderr.write(f"\\r{i}/3 |{'#' * i}")
    sys.stderr.write("\\n")
    open("prep.txt", "w").write("ok")


@stage(deps=["prep.txt"], outs=["fit.txt"])
def fit() -> None:
    print("fit done")
    open("fit.txt", "w").write("ok")
"""


def test_after_repro_the_terminal_keeps_everything_the_stages_printed(
    make_project: Callable[..., Path], proc_guard: ProcGuard, tmp_path: Path,
) -> None:
    """At 80x24 the live view's log pane holds ten lines: a stage's 40 lines used to be
    left as its last ten, on screen and in the scrollback."""
    columns, rows = 80, 24
    root = make_project({"pipeline.py": STEPS, "in.txt": "x\n"})
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    try:
        with open(tmp_path / "repro.stderr", "w") as err:
            proc = proc_guard.track(subprocess.Popen(
                [*pivot_cmd(), "repro"], cwd=root, stdin=slave, stdout=slave, stderr=err,
                start_new_session=True, text=True, env=env,
            ))
        os.close(slave)
        slave = -1
        screen = Screen(master)
        rc, _, _ = wait_exit(proc, WAIT_S, "pivot repro")
        assert rc == 0, (tmp_path / "repro.stderr").read_text()
        with screen.cond:  # everything it wrote: the reader sees EOF once it has exited
            screen.cond.wait_for(lambda: screen.eof, WAIT_S)
            data = screen.data.decode(errors="replace")
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    kept = terminal_lines(data, columns, rows)
    steps = [line for line in kept if re.fullmatch(r"prep \| prep step \d+", line)]
    assert steps == [f"prep | prep step {i}" for i in range(40)], "\n".join(kept)
    assert "prep ! 3/3 |###" in kept and not any(re.match(r"prep ! [12]/3", line) for line in kept), kept
    assert "fit | fit done" in kept, kept
    # The outcome below them: the final table and the summary, at the end.
    last = kept.index("prep | prep step 39")
    assert any(re.match(r"prep\s+✓ ran", line) for line in kept[last:]), kept[last:]
    assert any(re.match(r"fit\s+✓ ran", line) for line in kept[last:]), kept[last:]
    assert [line for line in kept if line][-1] == "wave 1 done: 2 ran", kept[last:]


TMUX_PIPELINE = f'''\
from pivot import stage


def fit(kind: str = "linear") -> None:
    print(f"fitting {{kind}}")
    open(f"fit-{{kind}}.txt", "w").write(kind)


for kind in ("linear", "quadratic"):
    stage(name=f"fit@{{kind}}", params={{"kind": kind}}, deps=["in.txt"], outs=[f"fit-{{kind}}.txt"])(fit)


@stage(deps=["in.txt"], outs=["{LONG}.txt"])
def {LONG}(note: str = "{"x" * 150}") -> None:
    open("{LONG}.txt", "w").write(note)
'''


@pytest.mark.parametrize(("columns", "rows"), [(80, 24), (120, 40), (200, 50)])
def test_under_tmux_a_repro_keeps_names_and_statuses_whole_and_the_reason_gives_way(
    make_project: Callable[..., Path], tmp_path: Path, columns: int, rows: int,
) -> None:
    """Once on a real terminal emulator (tmux, the issue asks for it): what its screen and
    scrollback hold after a `pivot repro`, as a user sees it."""
    import shlex

    from procs import describe, run_pivot, wait_for

    root = make_project({"pipeline.py": TMUX_PIPELINE, "in.txt": "x\n"})
    first = run_pivot(root, "repro")
    assert first.returncode == 0, describe(first)
    (root / "in.txt").write_text("y\n")
    (root / "params.yaml").write_text(f"{LONG}:\n  note: {'y' * 150}\n")  # a reason wider than any terminal
    tmux = ["tmux", "-S", str(tmp_path / "tmux.sock"), "-f", "/dev/null"]
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "TMUX")}
    env["TERM"] = "xterm-256color"
    line = f"{shlex.join([*pivot_cmd(), 'repro'])}; echo exit=$?; read x"  # the pane stays for the capture
    subprocess.run([*tmux, "new-session", "-d", "-s", "t", "-x", str(columns), "-y", str(rows), "-c", str(root),
                    "sh", "-c", line], check=True, env=env, timeout=10)
    try:
        def finished() -> str | None:
            shown = subprocess.run([*tmux, "capture-pane", "-p", "-S", "-", "-t", "t"], capture_output=True,
                                   text=True, timeout=10).stdout
            return shown if re.search(r"^exit=\d+", shown, re.M) else None

        text = wait_for(finished, WAIT_S, "pivot repro to end under tmux")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=10)
    lines = text.splitlines()
    assert "exit=0" in lines, text
    assert all(len(line) <= columns for line in lines), text
    for name in ("fit@linear", "fit@quadratic", LONG):
        assert any(re.match(rf"{re.escape(name)}\s+✓ ran", line) for line in lines), (name, text)
    [row] = [line for line in lines if line.startswith(f"{LONG} ") and "✓ ran" in line]
    assert "params changed" in row and row.rstrip().endswith("…"), row
    assert "fit@linear | fitting linear" in lines and "fit@quadratic | fitting quadratic" in lines, text
    assert any(line.startswith("wave 1 done: 3 ran") for line in lines), text
