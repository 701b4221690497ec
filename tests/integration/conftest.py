from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from zchelpers import Cluster, FakeAgent

from zcrepl.controller.client import ControllerClient


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A controller and two agents (hostA exports tmp/a, hostB exports tmp/b), all real processes."""
    c = Cluster(tmp_path)
    try:
        c.controller.start()
        a = c.add_agent("hostA", tmp_path / "a")
        b = c.add_agent("hostB", tmp_path / "b")
        a.start()
        b.start()
        c.wait_online("hostA", "hostB")
        yield c
    finally:
        c.close()


@pytest.fixture
def evil(cluster: Cluster) -> Iterator[FakeAgent]:
    """A hostile source: registers as agent "evil" (with a certificate of the cluster) and obeys nothing."""
    agent = FakeAgent(cluster.controller_addr, "evil", pki=cluster.pki)
    cluster.wait_online("evil")
    yield agent
    agent.close()


@pytest.fixture
def client(cluster: Cluster) -> Iterator[ControllerClient]:
    """An admin client of the cluster's controller, in-process."""
    with cluster.client() as c:
        yield c
