"""PostgreSQL itself failing (issue 15 item 5): the database is down for 10 s under two controllers.

The leader cannot renew its lease and stops leading at once (one log line); nobody leads meanwhile, writes are
refused with a sentence, reads of the store fail cleanly; the agents keep transferring what they have; when the
database returns a controller leads again under a higher epoch, adopts the attempts the agents went on with,
and every job ends done in its first attempt, none lost.

Slow (a 10 s outage): ``pytest -m slow -k db_outage``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hahelpers import STOPS, controllers, ha_cluster, leader, leads
from zchelpers import Cluster, diff_trees, snapshot, wait_for

from zcrepl.cli.client import ControllerClient
from zcrepl.core.errors import Unavailable
from zcrepl.core.types import Endpoint, JobOptions, JobState

OUTAGE = 10.0
JOBS = 2
FILE = 512 * 1024
RATE = 128 * 1024  # bytes/s per job: 4 files take ~16 s, longer than the outage


@pytest.fixture
def cluster(tmp_path: Path, own_pg_server: Any) -> Iterator[tuple[Cluster, Any]]:
    name = "zc_outage"
    own_pg_server.admin(f"CREATE DATABASE {name} TEMPLATE template0")
    c = ha_cluster(tmp_path, own_pg_server.url(name), controllers=2, attempt_grace=60)
    try:
        for d in controllers(c):
            d.spawn()
        agents = [c.add_agent("hostA", tmp_path / "a").spawn(), c.add_agent("hostB", tmp_path / "b").spawn()]
        for d in (*controllers(c), *agents):
            d.wait_ready()
        c.wait_online("hostA", "hostB")
        yield c, own_pg_server
    finally:
        c.close()


def _ep(host: str, path: Path) -> Endpoint:
    return Endpoint(host, os.fsencode(path))


def _received(root: Path) -> int:
    """Bytes under ``root``, the partial area's included: grows while a transfer moves data."""
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(root) for f in fs)


@pytest.mark.slow
def test_db_outage(cluster: tuple[Cluster, Any]) -> None:
    c, pg = cluster
    base = c.base
    first = leader(c)
    for i in range(JOBS):
        (base / "a" / f"s{i}").mkdir()
        for k in range(4):
            (base / "a" / f"s{i}" / f"f{k}").write_bytes(os.urandom(FILE))
    with ControllerClient(c.controller_addr, c.pki.trust(), patience=60) as cl:
        ids = [cl.submit(_ep("hostA", base / "a" / f"s{i}"), _ep("hostB", base / "b" / f"s{i}"),
                         JobOptions(bwlimit=RATE)).id for i in range(JOBS)]
        wait_for(lambda: len([j for j in cl.jobs((JobState.RUNNING,)) if j.progress.bytes_done]) == JOBS, 30,
                 what="both jobs moving data")
        pg.halt()
        down = time.monotonic()
        wait_for(lambda: STOPS in first.log(), 10, what="the leader to stop leading")
        stepped = time.monotonic() - down
        before = _received(base / "b")
        time.sleep(OUTAGE / 2)
        assert not any(leads(d) for d in controllers(c))
        with ControllerClient(c.controller_addr, c.pki.trust(), patience=1) as brief, \
                pytest.raises(Unavailable, match=r"no controller leads right now"):
            brief.submit(_ep("hostA", base / "a" / "s0"), _ep("hostB", base / "b" / "x"), JobOptions())
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down)))
        moved = _received(base / "b") - before
        pg.start()
        back = time.monotonic()
        new = leader(c, timeout=30)
        print(f"\noutage: the leader stopped leading {stepped:.2f}s after the database went down; agents moved "
              f"{moved} bytes meanwhile; {new.name} leads {time.monotonic() - back:.2f}s after it came back")
        assert moved > 0, "the agents stopped transferring while the database was down"
        done = wait_for(lambda: (js := [cl.job(i) for i in ids]) and all(j.state.final for j in js) and js, 90,
                        interval=0.5, what="every job final")
    assert [j.state for j in done] == [JobState.DONE] * JOBS, [(j.id, j.error) for j in done]
    # The attempts the agents went on with were adopted when leadership resumed, and finished: none retried.
    assert [len(j.history) for j in done] == [1] * JOBS, [(j.id, j.history) for j in done]
    for i in range(JOBS):
        assert not diff_trees(snapshot(base / "a" / f"s{i}"), snapshot(base / "b" / f"s{i}"))
    epochs = [int(m) for d in controllers(c) for m in re.findall(r"holds the lease\" epoch=(\d+)", d.log())]
    assert len(epochs) == 2 and epochs[0] != epochs[1]  # a new leader's epoch after the outage
    assert "stopping transfers without the controller" not in c.daemons["hostA"].log()
