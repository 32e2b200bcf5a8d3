"""The pipeline loader as a process: started now, its manifest collected later."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import msgpack

from pivot.errors import InfraError, PipelineError
from pivot.launch import python_cmd
from pivot.launch.procs import describe_exit
from pivot.launch.scratch import scratch_file
from pivot.pipeline.manifest import Manifest

__all__ = ["LOADER_TIMEOUT_S", "LoaderRun", "python_cmd", "run_loader"]

LOADER_TIMEOUT_S = 300.0


class LoaderRun:
    """A loader process started now, whose manifest is collected later by `result()`.

    The result travels in a temp file, not a pipe: a manifest larger than the pipe
    buffer would block the loader while we wait for it to exit.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        fd, self.result_path = scratch_file("manifest", ".msgpack")
        try:
            self.proc = subprocess.Popen(
                python_cmd("pivot.runtime.loader", str(self.root), "--result-fd", str(fd)),
                cwd=self.root,
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            os.unlink(self.result_path)
            raise
        finally:
            os.close(fd)

    def result(self, timeout: float = LOADER_TIMEOUT_S) -> Manifest:
        """Wait for the loader. Raises PipelineError for user mistakes."""
        proc = self.proc
        try:
            try:
                output, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise PipelineError(
                    f"loading pipeline.py took longer than {timeout:.0f} s; "
                    "does importing it run heavy work at module level?"
                ) from None
            raw = Path(self.result_path).read_bytes()
        finally:
            os.unlink(self.result_path)
        printed = output.decode(errors="replace").strip()
        if not raw:
            raise PipelineError(
                f"the {describe_exit(proc.returncode, 'pipeline loader (the process that imports pipeline.py)')} "
                "before reporting" + (" (out of memory?)" if proc.returncode == -9 else ""),
                detail=printed,
            )
        try:
            result = msgpack.unpackb(raw, raw=False)
            if result["ok"]:
                return Manifest.from_wire(result["manifest"])
            detail = result["detail"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InfraError(f"unreadable answer from the pipeline loader: {exc!r}") from exc
        raise PipelineError(result["message"], detail=detail)


def run_loader(root: Path, timeout: float = LOADER_TIMEOUT_S) -> Manifest:
    """Load the pipeline in a fresh interpreter. Raises PipelineError for user mistakes."""
    return LoaderRun(root).result(timeout)
