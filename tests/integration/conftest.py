from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import netbed
import pytest
from zchelpers import BedCluster, Cluster, FakeAgent, running

from zcrepl.cli.client import ControllerClient


def store_flags(request: pytest.FixtureRequest) -> dict[str, str]:
    """The controller's store for a test that parametrizes its cluster fixture by backend:
    ``@pytest.mark.parametrize("cluster", BACKENDS, indirect=True)`` (likewise ``bed_cluster``); SQLite
    (the state dir's file) unless asked."""
    if getattr(request, "param", "sqlite") == "postgres":
        return {"store": str(request.getfixturevalue("pg_url"))}
    return {}


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A controller and two agents (hostA exports tmp/a, hostB exports tmp/b), all real processes."""
    with running(Cluster(tmp_path, **store_flags(request))) as c:
        yield c


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


@pytest.fixture
def bed() -> Iterator[netbed.NetBed]:
    """The network test bed (tests/netbed.py): removed after the test, whatever happened in it."""
    reason = netbed.available()
    if reason:
        pytest.skip(reason)
    with netbed.NetBed() as b:
        yield b


@pytest.fixture
def make_bed_cluster(bed: netbed.NetBed, tmp_path: Path) -> Iterator[BedCluster]:
    """``make_bed_cluster(hosts=("hostA", "hostB"), agent_flags=(), **controller_flags)``: the controller and
    each agent on a host of their own on the bed, all online. hostA exports tmp/a, hostB tmp/b, any other
    host tmp/<name> (the namespaces share the filesystem, so a test reads every host's files directly)."""
    made: list[Cluster] = []

    def make(hosts: tuple[str, ...] = ("hostA", "hostB"), agent_flags: tuple[str, ...] = (),
             **controller_flags: Any) -> Cluster:
        c = Cluster(tmp_path, bed=bed, **controller_flags)
        made.append(c)
        c.controller.start()
        for name in hosts:
            export = {"hostA": "a", "hostB": "b"}.get(name, name)
            c.add_agent(name, tmp_path / export, flags=agent_flags).start()
        c.wait_online(*hosts)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()


@pytest.fixture
def bed_cluster(make_bed_cluster: BedCluster, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Like ``cluster``, with the controller, hostA and hostB each on a host of their own on the bed."""
    c = make_bed_cluster(**store_flags(request))
    yield c
    c.close()  # here, before a PostgreSQL store's database (set up after make_bed_cluster) is dropped
