"""A worker's queued jobs: each is begun by the worker or withdrawn by its pool, never
both (pivot/runtime/claim.py). The race is played by two real processes."""

from __future__ import annotations

import multiprocessing
import struct
from pathlib import Path

import pytest

from pivot.runtime.claim import JobClaims

pytestmark = pytest.mark.timeout(60)


def test_a_job_withdrawn_before_it_began_is_refused_to_its_worker(tmp_path: Path) -> None:
    pool = JobClaims(str(tmp_path / "claims"), create=True)
    worker = JobClaims(str(tmp_path / "claims"))
    try:
        assert not pool.withdraw(1, 3)  # job 1 not begun yet: nothing moves
        assert worker.begin(1)
        assert pool.withdraw(1, 3)  # the two queued behind job 1
        assert not worker.begin(2)
        assert not worker.begin(3)
        assert worker.begin(4)  # sent after the withdrawal
    finally:
        worker.close()
        pool.close(remove=True)
    assert not (tmp_path / "claims").exists()


def test_jobs_are_not_withdrawn_once_their_worker_began_the_first_of_them(tmp_path: Path) -> None:
    pool = JobClaims(str(tmp_path / "claims"), create=True)
    worker = JobClaims(str(tmp_path / "claims"))
    try:
        assert worker.begin(1)
        assert worker.begin(2)
        assert not pool.withdraw(1, 3)  # all or nothing: 3 stays with the worker
        assert worker.begin(3)
        assert pool.withdraw(3, 5)
        assert worker.begin(6)  # sent after: 4 and 5 were withdrawn, not 6
        assert pool.withdraw(6, 7)  # again: each withdrawal only after the worker's job
        assert not worker.begin(7)
    finally:
        worker.close()
        pool.close(remove=True)


def _begin_all(path: str, count: int, begun: multiprocessing.Queue[list[int]]) -> None:  # type: ignore[type-arg]
    claims = JobClaims(path)
    taken = []
    for n in range(1, count + 1):
        if claims.begin(n):
            taken.append(n)
            sum(range(300))  # a little work: the pool catches up with it
    begun.put(taken)


def _last_begun(path: str) -> int:
    with open(path, "rb") as f:
        return int(struct.unpack("q", f.read(8))[0])


def test_a_worker_and_its_pool_racing_never_both_take_a_job(tmp_path: Path) -> None:
    count = 20_000
    path = str(tmp_path / "claims")
    pool = JobClaims(path, create=True)
    context = multiprocessing.get_context("spawn")
    begun: multiprocessing.Queue[list[int]] = context.Queue()  # type: ignore[type-arg]
    proc = context.Process(target=_begin_all, args=(path, count, begun))
    proc.start()
    withdrawn: list[int] = []
    try:
        # The pool chases the worker: the two jobs after the one it runs, taken back
        # while it may be about to begin them.
        sent = 0  # the last job of the worker's queue it has not been asked about
        while proc.is_alive() and begun.empty():
            head = _last_begun(path)
            if sent <= head < count - 1 and pool.withdraw(head, head + 2):
                withdrawn += [head + 1, head + 2]
                sent = head + 3  # (what the pool sends after those)
        taken = begun.get(timeout=50)
        proc.join(10)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(10)
        pool.close(remove=True)
    assert proc.exitcode == 0
    assert withdrawn and taken  # both sides won some
    assert not set(taken) & set(withdrawn)
    assert sorted(taken + withdrawn) == list(range(1, count + 1))  # each job went one way, once
