"""A command stage's run: its command, in a process group of its own, waited for by the
worker (issue 13).

    stage(name="train", cmd="python src/train.py --lr ${lr}", deps=[...], outs=[...],
          params={"lr": 0.1})

The params reach the command through `${name}` in `cmd` and as environment variables of
the same names, except names the environment has already (a params.yaml key `PATH` or
`HOME` made the command's shell find nothing). It runs in the project root (or its `wdir`), with the stage's standard
output and error (streamed like any stage's: pivot/runtime/capture.py); its exit code
decides. It is the leader of a new session, so that everything it starts can be stopped
with it: on a cancel the worker sends the group SIGTERM, then SIGKILL after
TERM_GRACE_S; when the worker itself is killed, dies or is fenced, the group's id, kept
in `ATTEMPT.group`, lets its pool (or the worker's fencing thread) kill the group too;
and what the command left running when it exited is killed then.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from pivot.errors import PipelineError
from pivot.runtime import warm as warm_mod

__all__ = ["GROUP_SUFFIX", "CommandFailed", "cmd_text", "group_path", "interpolate", "kill_group_of", "run_command",
           "shell_argv"]

GROUP_SUFFIX = ".group"
TERM_GRACE_S = 2.0  # below the pool's HARD_KILL_S: the worker stops its command itself
# `\${` is DVC's escape for a literal `${`: not a placeholder, and written as `${`.
_PLACEHOLDER = re.compile(r"(?<!\\)\$\{\s*([^}\s]*)\s*\}")
ESCAPED = "\\${"
_running_group = 0  # this worker's command now, for its fencing thread


class CommandFailed(Exception):
    """The command exited with a non-zero code or was killed by a signal."""


def group_path(pid_file: Path) -> Path:
    return pid_file.with_name(pid_file.name + GROUP_SUFFIX)


def as_text(value: Any) -> str:
    """A param as a command and its environment see it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return " ".join(as_text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def cmd_text(value: Any) -> str:
    """A value as `${...}` writes it into a command, as DVC does: a map becomes options
    (`{lr: 0.1, verbose: true, layers: [1, 2], opt: {name: adam}}` ->
    `--lr 0.1 --verbose --layers 1 2 --opt.name adam`; false is left out, strings quoted
    for the shell); anything else as the environment sees it."""
    if not isinstance(value, dict):
        return as_text(value)
    words: list[str] = []
    for key, item in _flat(value, ""):
        if isinstance(item, bool):
            words += [f"--{key}"] if item else []
        elif isinstance(item, str):
            words.append(f"--{key} {shlex.quote(item)}")
        elif isinstance(item, list | tuple):
            for n, element in enumerate(item):
                if isinstance(element, list | tuple | dict):
                    raise ValueError(f"cannot write the nested list in {key!r} as command options")
                shown = shlex.quote(element) if isinstance(element, str) else str(element)
                words.append(shown if n else f"--{key} {shown}")
        else:
            words.append(f"--{key} {item}")
    return " ".join(words)


def _flat(value: dict[str, Any], prefix: str) -> list[tuple[str, Any]]:
    """Nested maps as dotted keys (DVC's flatten); an empty map gives nothing."""
    pairs: list[tuple[str, Any]] = []
    for key, item in value.items():
        name = f"{prefix}{key}"
        pairs += _flat(item, name + ".") if isinstance(item, dict) else [(name, item)]
    return pairs


def _lookup(params: dict[str, Any], name: str) -> Any:
    if name in params:
        return params[name]
    value: Any = params
    for key in name.split("."):  # a dotted path into a dict param
        if not isinstance(value, dict) or key not in value:
            raise KeyError(name)
        value = value[key]
    return value


def interpolate(stage: str, cmd: str | tuple[str, ...], params: dict[str, Any]) -> str | list[str]:
    """`cmd` with every `${name}` replaced by that param's value."""

    def one(text: str) -> str:
        def sub(match: re.Match[str]) -> str:
            try:
                return cmd_text(_lookup(params, match.group(1)))
            except KeyError:
                known = ", ".join(sorted(params)) or "none"
                raise PipelineError(
                    f"stage {stage!r}: {match.group(0)} in its cmd names no param (its params: {known})"
                ) from None
            except ValueError as exc:
                raise PipelineError(f"stage {stage!r}: {match.group(0)} in its cmd: {exc}") from None

        return _PLACEHOLDER.sub(sub, text).replace(ESCAPED, "${")

    return one(cmd) if isinstance(cmd, str) else [one(part) for part in cmd]


# Flags that keep a shell from reading the user's startup files, as DVC passes them.
_SHELL_FLAGS = {"bash": ["--noprofile", "--norc"], "zsh": ["--no-rcs"]}


def shell_argv(line: str) -> list[str]:
    """The argv that runs a command line as `dvc repro` does: with the user's $SHELL (else
    /bin/sh), without its startup files, so `{a,b}` or `[[ ]]` mean what they mean at the
    user's prompt."""
    shell = os.environ.get("SHELL") or "/bin/sh"
    return [shell, *_SHELL_FLAGS.get(os.path.basename(shell).lower(), []), "-c", line]


def run_command(
    stage: str, cmd: str | tuple[str, ...], params: dict[str, Any], cwd: Path, pid_file: Path | None,
    warm: bool = False, root: Path | None = None,
) -> None:
    """Run the stage's command to its end; CommandFailed if it did not exit 0. With
    `warm`, a Python script this interpreter can run is forked from this process
    (pivot/runtime/warm.py) instead of started afresh."""
    global _running_group
    line = interpolate(stage, cmd, params)
    env = dict(os.environ)
    env.update({name: as_text(value) for name, value in params.items() if name not in env})
    run = warm_mod.script_run(line, env) if warm and warm_mod.enabled(root) and cwd.is_dir() else None
    proc: subprocess.Popen[bytes] | warm_mod.ForkedProcess
    try:
        if run is not None:
            proc = warm_mod.start(run, cwd, env, root or cwd)
        else:
            argv = shell_argv(line) if isinstance(line, str) else line
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:  # a list whose program is not there, a wdir that is not
        if isinstance(line, str) and run is None and not os.access(argv[0], os.X_OK):
            raise CommandFailed(
                f"could not start the shell {argv[0]} (from $SHELL) to run {_shown(line)}: "
                f"{exc.strerror or exc}; set SHELL to a shell that exists"
            ) from None
        raise CommandFailed(f"could not start the command {_shown(line)}: {exc.strerror or exc}") from None
    _running_group = proc.pid
    kept = group_path(pid_file) if pid_file is not None else None
    if kept is not None:
        with contextlib.suppress(OSError):
            kept.write_text(f"{proc.pid}\n")
    try:
        code = proc.wait()
    except BaseException:  # cancelled (StageCancelled), interrupted
        _stop(proc)
        raise
    finally:
        _kill(proc.pid, signal.SIGKILL)  # what it left running goes with it
        _running_group = 0
        if kept is not None:
            with contextlib.suppress(OSError):
                kept.unlink(missing_ok=True)
    if code != 0:
        raise CommandFailed(f"command {_ended(code)}: {_shown(line)}")


def _stop(proc: subprocess.Popen[bytes] | warm_mod.ForkedProcess) -> None:
    """SIGTERM to the command's group, then SIGKILL to what is left after the grace."""
    _kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE_S
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    _kill(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(1.0)


def _kill(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def kill_group_of(pid_file: Path) -> None:
    """Kill the process group of the command the attempt of `pid_file` runs, if any (its
    worker was killed, died or is being stopped)."""
    try:
        group = int(group_path(pid_file).read_text())
    except (OSError, ValueError):
        return
    if group > 1:
        _kill(group, signal.SIGKILL)
    with contextlib.suppress(OSError):
        group_path(pid_file).unlink(missing_ok=True)


def kill_running_group() -> None:
    """This worker's command, if one runs (the worker is about to exit: fenced)."""
    if _running_group > 1:
        _kill(_running_group, signal.SIGKILL)


def _ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _shown(line: str | list[str]) -> str:
    text = line if isinstance(line, str) else " ".join(line)
    return text if len(text) <= 200 else text[:199] + "…"
