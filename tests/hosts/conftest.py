"""The hosts tier: Pivot's roles on several simulated hosts (Linux network namespaces:
netns.py; the engine on them: hostcluster.py). Needs root and iproute2: skipped without
them, failed in CI (tests/requires.py).

`cluster(files)` builds the network, writes the project and starts the broker. On the
way out, whatever still runs is stopped and the network torn down; a process the
teardown finds still inside a namespace fails the test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hostcluster import HOSTS, Cluster, new_cluster
from netns import Network, NetworkError, can_make_namespaces, network
from procs import ProcGuard
from requires import require


@pytest.fixture
def cluster(tmp_path: Path, proc_guard: ProcGuard) -> Iterator[Callable[[dict[str, str]], Cluster]]:
    ok, why = can_make_namespaces()
    require(ok, why)
    stack = contextlib.ExitStack()
    made: list[Cluster] = []
    nets: list[Network] = []

    def make(files: dict[str, str]) -> Cluster:
        assert not made, "one cluster per test"
        try:
            net = stack.enter_context(network(HOSTS))
        except (OSError, NetworkError) as exc:  # e.g. a container without CAP_SYS_ADMIN
            require(False, f"cannot make network namespaces here: {exc}")
            raise
        nets.append(net)
        made.append(new_cluster(net, tmp_path, files, proc_guard))
        made[-1].start_broker()
        return made[-1]

    try:
        yield make
    finally:
        try:
            for c in made:
                c.kill_all()  # a test that passed stopped them itself (Cluster.stop)
                for live in c.displays:
                    with contextlib.suppress(AssertionError):
                        live.wait_exit(5)
        finally:
            stack.close()
    for net in nets:
        left = net.left_behind
        if left:
            pytest.fail("left behind in a host namespace:\n" + "\n".join(left), pytrace=False)
