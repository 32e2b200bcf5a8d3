"""Reload modules in live workers, or restart them? (issue 14, goal 5)

    python bench/reload_study.py [--python PY] [--heavy] [--repeat 7] [--edits KEY,KEY]

Pivot replaces its workers after a code edit (forked from a server that preloaded the
third-party modules, then importing the project). The alternative is to keep the workers
and refresh the project's modules in them. This script measures both on a small ML-ish
project it writes to a temp dir (a package `src/` and a `pipeline.py` of stage functions;
no Pivot API: the question is Python's module semantics), for a set of realistic edits
(the project and the edits: bench/reload_project.py):

    this process (the study)
    ├ writes the project, applies each edit, restores it (fixed mtimes, see below)
    ├ truth:   PY reload_study.py --role fresh        a new interpreter: import, run every stage
    ├ warm:    PY reload_study.py --role warm         imported the project and ran every stage once;
    │            per trial it forks a child that       refreshes by one strategy (timed), runs every
    │            stage and writes the results          (the warm state is the same for every trial)
    └ preload: PY reload_study.py --role preload      the third-party modules only (--heavy),
                 per trial it forks a child that       never the project; imports the project
                 (timed from the fork) and runs every stage; also times a multiprocessing
                 forkserver child (one preloading process per restart variant)

Strategies (what the warm worker does after the edit), and the restarts:

    reload changed   importlib.reload of the edited module(s), dependencies first
    reload all       importlib.reload of every project module, dependencies first (the
                     import graph read from the current sources with ast)
    purge + import   every project module dropped from sys.modules, pipeline imported again
    fork + import    a fork of a process that preloaded the top-level third-party packages
                     (numpy, pandas, sklearn: what Pivot's server preloads) imports the project
    fork + import, submodules preloaded   (--heavy) the preloading process also imported
                     the third-party submodules the project names (sklearn.linear_model)

A strategy gets an edit right only if every stage's result (its repr, or the exception it
raised, and what it wrote to fd 1 and 2) equals the fresh interpreter's. Each edit is
checked first: in the fresh interpreter it must change exactly the stages it declares,
with the text it declares. Every edit starts from the same warm state (one edit, not a
session of them), so staleness that piles up over many edits is not counted.

Bytecode: CPython checks a .pyc against its source's size and mtime in whole seconds, so
an edit of the same size within the second of the last compile is served the old code by
a reload and by a fresh import alike. The script gives each edit its own mtime (and
removes the edited modules' .pyc before each timed trial, so every strategy compiles
them) and checks that behaviour once at the end.

`--heavy` makes the project import numpy, pandas and scikit-learn (two more stages use
them) and the preloading process import them; `--python` names an interpreter that has
them (they are not in Pivot's environment: `python -m venv /tmp/reload-venv &&
/tmp/reload-venv/bin/pip install numpy pandas scikit-learn`). Stdlib only.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from benchcommon import pivot_env
from reload_project import (
    EDITS,
    ENTRY,
    HEAVY,
    PROJECT,
    Edit,
    module_name,
    project_text,
    third_party_imports,
)

STRATEGIES = ("reload changed", "reload all", "purge + import")
RESTART = "fork + import"  # the preloading process imported the top-level packages, as Pivot's
RESTART_SUB = "fork + import, submodules preloaded"  # ... and the submodules the project imports
TIMEOUT_S = 120.0

# ---------------------------------------------------------------------------------------
# Inside the project's processes: import, refresh, run the stages.

Results = dict[str, list[str]]  # stage -> [repr of the result or the exception, fd 1+2 output]
Outcome = Mapping[str, Callable[[], object]] | str  # the stages, or why the import failed


def _import_entry() -> Outcome:
    try:
        module = importlib.import_module(ENTRY)
    except Exception as e:  # the user's import failing is a result to compare
        return f"import failed: {type(e).__name__}: {e}"
    return module.STAGES


def _run_captured(fn: Callable[[], object]) -> list[str]:
    """[repr of fn() or of what it raised, what it wrote to fd 1 and 2]."""
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as f:
        saved = os.dup(1), os.dup(2)
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            try:
                value = repr(fn())
            except Exception as e:  # a stage's failure is its result
                value = f"raised {type(e).__name__}: {e}"
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, old in zip((1, 2), saved, strict=True):
                os.dup2(old, fd)
                os.close(old)
        f.seek(0)
        return [value, f.read().decode(errors="replace")]


def run_stages(outcome: Outcome) -> Results:
    if isinstance(outcome, str):
        return {"*": [outcome, ""]}
    return {name: _run_captured(fn) for name, fn in outcome.items()}


def _project_modules(root: str) -> dict[str, ModuleType]:
    """The loaded modules whose file is in the project, in sys.modules order."""
    found = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and file.startswith(root + os.sep):  # found through sys.path[0], the project
            found[name] = module
    return found


def _imports(name: str, module: ModuleType) -> set[str]:
    """Every module name the current source of `module` imports (and their parents)."""
    file = module.__file__
    assert file is not None
    try:
        tree = ast.parse(Path(file).read_text(), file)
    except SyntaxError:
        return set()
    package = name if hasattr(module, "__path__") else name.rpartition(".")[0]
    found: set[str] = set()

    def add(dotted: str) -> None:
        parts = dotted.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def dependency_order(modules: Mapping[str, ModuleType]) -> list[str]:
    """The project's modules, each after the project modules it imports (cycles: as met)."""
    deps = {name: sorted((_imports(name, m) & modules.keys()) - {name}) for name, m in modules.items()}
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for dep in deps[name]:
            visit(dep)
        order.append(name)

    for name in modules:
        visit(name)
    return order


def refresh(strategy: str, names: list[str], changed: list[str]) -> Outcome:
    """Bring the live process's project modules (`names`, as listed after the first import:
    a reloader knows them, as Pivot's loader lists the project's sources) up to date."""
    importlib.invalidate_caches()  # a new module may have appeared
    modules = {name: sys.modules[name] for name in names if name in sys.modules}
    try:
        if strategy == "purge + import":
            for name in modules:
                del sys.modules[name]
            return _import_entry()
        if strategy == "reload changed":
            modules = {name: m for name, m in modules.items() if name in changed}
        for name in dependency_order(modules):
            importlib.reload(modules[name])
    except Exception as e:  # as a fresh import failing
        return f"import failed: {type(e).__name__}: {e}"
    return sys.modules[ENTRY].STAGES


def _enter(project: str) -> str:
    root = os.path.realpath(project)
    os.chdir(root)
    sys.path.insert(0, root)
    return root


def _write_json(path: str, data: object) -> None:
    Path(path).write_text(json.dumps(data))


def role_fresh(project: str, out: str) -> int:
    """The ground truth: a new interpreter imports the project and runs every stage."""
    _enter(project)
    _write_json(out, {"results": run_stages(_import_entry())})
    return 0


def _trial_child(cmd: dict[str, Any], names: list[str] | None, forked_at: float) -> None:
    """One trial in a fresh fork: refresh the warm worker's `names`, or (None) import the
    project in a fork of the preloading process; then run every stage."""
    if names is None:
        outcome = _import_entry()
        seconds = time.perf_counter() - forked_at
    else:
        start = time.perf_counter()
        outcome = refresh(cmd["strategy"], names, cmd["changed"])
        seconds = time.perf_counter() - start
    _write_json(cmd["out"], {"seconds": seconds, "results": run_stages(outcome)})


def _mp_child(conn: Any, started: float) -> None:
    """A multiprocessing forkserver child: import the project, say how long it took."""
    _import_entry()
    conn.send(time.perf_counter() - started)
    conn.close()


def _time_forkserver(preload: list[str], repeat: int) -> list[float]:
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    # "__main__" too: otherwise every child runs this script again as __mp_main__.
    context.set_forkserver_preload([*preload, "__main__"])
    times = []
    for i in range(repeat + 1):  # the first starts the server
        parent, child = context.Pipe(duplex=False)
        started = time.perf_counter()
        proc = context.Process(target=_mp_child, args=(child, started))
        proc.start()
        child.close()
        if not parent.poll(TIMEOUT_S):
            proc.kill()
            raise SystemExit("forkserver child did not answer")
        seconds = parent.recv()
        proc.join(TIMEOUT_S)
        if i:
            times.append(seconds)
    return times


def role_server(project: str, warm: bool, preload: list[str]) -> int:
    """A live process: `warm` imported the project and ran every stage once; otherwise it
    imported `preload` only. Each command on stdin is one trial in a forked child."""
    root = _enter(project)
    for name in preload:
        importlib.import_module(name)
    warmed = run_stages(_import_entry()) if warm else {}
    names = list(_project_modules(root)) if warm else None
    print(json.dumps({"ready": True, "results": warmed}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["strategy"] == "forkserver":
            print(json.dumps({"times": _time_forkserver(preload, cmd["repeat"])}), flush=True)
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        forked_at = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _trial_child(cmd, names, forked_at)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)
    return 0


# ---------------------------------------------------------------------------------------
# The study: this process.


def _read_line(stream: IO[str], what: str, timeout: float = TIMEOUT_S) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    line = stream.readline() if ready else ""
    if not line:
        raise SystemExit(f"{what}: no answer within {timeout:.0f} s (or it exited)")
    return line


class Server:
    """A `--role warm` or `--role preload` process, asked for one trial at a time."""

    def __init__(self, python: str, project: Path, role: str, preload: list[str], tmp: Path) -> None:
        self.role, self.tmp, self.count = role, tmp, 0
        self.proc = subprocess.Popen(
            [python, __file__, "--role", role, "--project", str(project), "--preload", ",".join(preload)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=study_env(),
        )
        assert self.proc.stdout is not None
        self.warmed: Results = json.loads(_read_line(self.proc.stdout, f"{role} start"))["results"]

    def _ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(_read_line(self.proc.stdout, f"{self.role} {cmd['strategy']}"))

    def trial(self, strategy: str, changed: list[str]) -> tuple[float, Results]:
        self.count += 1
        out = self.tmp / f"{self.role}-{self.count}.json"
        answer = self._ask({"strategy": strategy, "changed": changed, "out": str(out)})
        if answer["exit"] != 0:
            raise SystemExit(f"{self.role} trial {strategy!r} exited {answer['exit']}")
        data = json.loads(out.read_text())
        return data["seconds"], data["results"]

    def forkserver_times(self, repeat: int) -> list[float]:
        return self._ask({"strategy": "forkserver", "repeat": repeat})["times"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def study_env() -> dict[str, str]:
    """Bytecode caching on (as on a user's machine), one BLAS thread (a quiet machine;
    safe forks), and no PIPELINE_WORKERS inherited (the project sets its default)."""
    env = pivot_env()
    env.pop("PIPELINE_WORKERS", None)
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


class Project:
    """The generated project on disk, with an mtime of its own for every version."""

    def __init__(self, root: Path, heavy: bool) -> None:
        self.root, self.heavy = root, heavy
        self.base_mtime = int(time.time()) - 3600
        for rel in PROJECT:
            self.write(rel, project_text(rel, heavy), self.base_mtime)

    def write(self, rel: str, text: str, mtime: int) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.utime(path, (mtime, mtime))

    def apply(self, edit: Edit, mtime: int) -> None:
        texts: dict[str, str] = {}
        for ch in edit.changes:
            if ch.path not in texts:
                path = self.root / ch.path
                texts[ch.path] = path.read_text() if path.exists() else ""
            if not ch.old and not texts[ch.path]:
                texts[ch.path] = ch.new
                continue
            if texts[ch.path].count(ch.old) != 1:
                raise SystemExit(f"edit {edit.key}: {ch.old!r} is not in {ch.path} exactly once")
            texts[ch.path] = texts[ch.path].replace(ch.old, ch.new)
        for rel, text in texts.items():
            self.write(rel, text, mtime)

    def restore(self, edit: Edit) -> None:
        for rel in {ch.path for ch in edit.changes}:
            if rel in PROJECT:
                self.write(rel, project_text(rel, self.heavy), self.base_mtime)
            else:
                (self.root / rel).unlink()
            self.drop_pyc([rel])

    def drop_pyc(self, rels: list[str]) -> None:
        for rel in rels:
            Path(importlib.util.cache_from_source(str(self.root / rel))).unlink(missing_ok=True)


def fresh_results(python: str, project: Path, tmp: Path) -> Results:
    out = tmp / "fresh.json"
    subprocess.run([python, __file__, "--role", "fresh", "--project", str(project), "--out", str(out)],
                   check=True, env=study_env(), timeout=TIMEOUT_S)
    return json.loads(out.read_text())["results"]


def time_cold(python: str, project: Path, code: str) -> float:
    """From the start of `python -c CODE` (in the project) to its first line of output."""
    start = time.perf_counter()
    proc = subprocess.Popen([python, "-c", code], cwd=project, stdout=subprocess.PIPE, text=True,
                            env=study_env())
    assert proc.stdout is not None
    _read_line(proc.stdout, "cold interpreter")
    seconds = time.perf_counter() - start
    proc.wait(TIMEOUT_S)
    return seconds


def edit_problems(edit: Edit, heavy: bool, base: Results, truth: Results) -> list[str]:
    """Does the edit do, in a fresh interpreter, what it says it does?"""
    if "*" in truth:
        changed = {"*"}
    else:
        changed = {s for s in base.keys() | truth.keys() if base.get(s) != truth.get(s)}
    expect = edit.expected(heavy)
    problems = []
    if changed != set(expect):
        problems.append(f"changes {sorted(changed)}, declared {sorted(expect)}")
    for stage, text in expect.items():
        if stage in truth and text not in " ".join(truth[stage]):
            problems.append(f"{stage} is {truth[stage]!r}, without {text!r}")
    return problems


def pyc_same_second(python: str, tmp: Path) -> str:
    """Does a fresh import run old bytecode after a same-size edit within one second?"""
    folder = tmp / "pyc-check"
    folder.mkdir()
    path = folder / "probe.py"
    second = int(time.time()) - 60
    code = "import probe; print(probe.X)"
    seen = []
    for value, fraction in (("1", 0.1), ("2", 0.7)):
        path.write_text(f"X = {value}\n")
        os.utime(path, (second + fraction, second + fraction))
        seen.append(subprocess.run([python, "-c", code], cwd=folder, capture_output=True, text=True,
                                   env=study_env(), check=True).stdout.strip())
    stale = seen[1] == "1"
    return (f"a same-size edit within the second of the last compile: a fresh import "
            f"printed {seen[1]} after X = 2 was written ({'old bytecode' if stale else 'new code'})")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _spread(times: list[float]) -> str:
    return f"{_ms(statistics.median(times))} ({_ms(min(times))}-{_ms(max(times))})"


def _versions(python: str, heavy: bool) -> str:
    code = "import platform; print('Python', platform.python_version())"
    if heavy:
        code += "; import numpy, pandas, sklearn; print(f'numpy {numpy.__version__}, pandas " \
                "{pandas.__version__}, scikit-learn {sklearn.__version__}')"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, env=study_env())
    return ", ".join(out.stdout.split("\n")[:2]).strip(", ")


def study(args: argparse.Namespace) -> int:
    python, heavy = args.python, args.heavy
    if heavy:
        probe = subprocess.run([python, "-c", "import numpy, pandas, sklearn"], capture_output=True)
        if probe.returncode:
            raise SystemExit(f"--heavy: {python} cannot import numpy, pandas, sklearn (see --help)")
    # What the restarting processes preloaded: the top-level packages (Pivot's server), and
    # with --heavy also every third-party module the project imports (sklearn.linear_model).
    preloads = {RESTART: list(HEAVY) if heavy else []}
    if heavy:
        preloads[RESTART_SUB] = third_party_imports(heavy)
    edits = [e for e in EDITS if not args.edits or e.key in args.edits.split(",")]
    with tempfile.TemporaryDirectory(prefix="reload-study-") as tmp_name:
        tmp = Path(tmp_name)
        project = Project(tmp / "proj", heavy)
        base = fresh_results(python, project.root, tmp)
        if fresh_results(python, project.root, tmp) != base:
            raise SystemExit("two fresh runs of the baseline differ: the stages are not deterministic")
        servers = {"warm": Server(python, project.root, "warm", preloads[RESTART], tmp)}
        for label, modules in preloads.items():
            servers[label] = Server(python, project.root, "preload", modules, tmp)
        try:
            rows, problems = trials(project, servers, edits, python, tmp, base)
            restarts = {
                "python -c (nothing imported)":
                    [time_cold(python, project.root, "print(1, flush=True)") for _ in range(args.repeat)],
                "python -c, import the project":
                    [time_cold(python, project.root, "import pipeline; print(1, flush=True)")
                     for _ in range(args.repeat)],
            }
            for label in preloads:
                restarts[f"{label} (os.fork)"] = [servers[label].trial(label, [])[0] for _ in range(args.repeat)]
            restarts[f"{RESTART} (a multiprocessing forkserver child)"] = \
                servers[RESTART].forkserver_times(args.repeat)
        finally:
            for server in servers.values():
                server.close()
        report(args, rows, list(preloads), restarts, _versions(python, heavy), pyc_same_second(python, tmp))
        for p in problems:
            print(f"EDIT CHECK FAILED: {p}", file=sys.stderr)
        return 1 if problems else 0


Row = dict[str, tuple[float, bool]]  # strategy -> (refresh or restart seconds, every stage right)


def trials(project: Project, servers: dict[str, Server], edits: list[Edit], python: str, tmp: Path,
           base: Results) -> tuple[list[tuple[Edit, Row]], list[str]]:
    """Every edit against every strategy; the problems of edits that do not do what they say."""
    warm = servers["warm"]
    if warm.warmed != base:
        raise SystemExit("the warm worker's first run differs from a fresh one")
    for strategy in STRATEGIES:  # a refresh with nothing edited must change nothing
        if warm.trial(strategy, [])[1] != base:
            raise SystemExit(f"{strategy!r} with no edit differs from a fresh run")
    rows, problems = [], []
    for k, edit in enumerate(edits):
        rels = sorted({ch.path for ch in edit.changes})
        changed = [module_name(rel) for rel in rels]
        project.apply(edit, project.base_mtime + 60 + k)
        try:
            truth = fresh_results(python, project.root, tmp)
            problems += [f"{edit.key}: {p}" for p in edit_problems(edit, project.heavy, base, truth)]
            row: Row = {}
            for strategy in (*STRATEGIES, *(s for s in servers if s != "warm")):
                project.drop_pyc(rels)  # every strategy compiles the edited modules
                server = servers.get(strategy, warm)
                seconds, results = server.trial(strategy, changed)
                row[strategy] = (seconds, results == truth)
        finally:
            project.restore(edit)
        rows.append((edit, row))
        print(f"{edit.key:20} " + "  ".join(f"{s}: {'ok' if ok else 'STALE'} {_ms(t)}"
                                            for s, (t, ok) in row.items()), file=sys.stderr)
    return rows, problems


def report(args: argparse.Namespace, rows: list[tuple[Edit, Row]], restart_labels: list[str],
           restarts: dict[str, list[float]], versions: str, pyc: str) -> None:
    n = len(rows)
    columns = (*STRATEGIES, *restart_labels)
    fork_median = statistics.median(row[RESTART][0] for _, row in rows)
    flags = " ".join(a for a in (f"--python {args.python}" if args.python != sys.executable else "",
                                 "--heavy" if args.heavy else "", f"--repeat {args.repeat}") if a)
    print(f"`python bench/reload_study.py {flags}`: {n} edits; nproc {len(os.sched_getaffinity(0))}, "
          f"{versions}, {platform.machine()}\n")
    print(f"| strategy | edits correct | refresh, median (min-max) | saved against {RESTART} | wrong on |")
    print("|---|---|---|---|---|")
    for strategy in columns:
        times = [row[strategy][0] for _, row in rows]
        right = sum(row[strategy][1] for _, row in rows)
        wrong = ", ".join(e.key for e, row in rows if not row[strategy][1]) or "none"
        saved = "" if strategy == RESTART else _ms(fork_median - statistics.median(times))
        print(f"| {strategy} | {right}/{n} ({100 * right / n:.0f} %) | {_spread(times)} | {saved} | {wrong} |")
    print(f"\nRestarts of the baseline project, {args.repeat} repeats each\n")
    print("| restart | min | median | max |")
    print("|---|---|---|---|")
    for label, times in restarts.items():
        print(f"| {label} | {_ms(min(times))} | {_ms(statistics.median(times))} | {_ms(max(times))} |")
    print("\nThe edits (ok / STALE: every stage's result after the refresh against a fresh interpreter's)\n")
    print("| edit | kind | files | " + " | ".join(columns) + " |")
    print("|---|---|---|" + "---|" * len(columns))
    for edit, row in rows:
        files = ", ".join(sorted({ch.path for ch in edit.changes}))
        marks = " | ".join("ok" if row[s][1] else "STALE" for s in columns)
        print(f"| {edit.key} | {edit.kind} | {files} | {marks} |")
    print(f"\nBytecode check: {pyc}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable, help="interpreter of the project's processes")
    parser.add_argument("--heavy", action="store_true", help="the project imports numpy, pandas, sklearn")
    parser.add_argument("--repeat", type=int, default=7, help="repeats of each restart timing")
    parser.add_argument("--edits", default="", help="only these edits (keys, comma-separated)")
    parser.add_argument("--role", default="study", choices=("study", "fresh", "warm", "preload"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--project", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--preload", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "fresh":
        return role_fresh(args.project, args.out)
    if args.role in ("warm", "preload"):
        return role_server(args.project, args.role == "warm", [m for m in args.preload.split(",") if m])
    return study(args)


if __name__ == "__main__":
    sys.exit(main())
