"""Several controllers on one PostgreSQL store: SIGKILL the leader while jobs run and a watch rule ships.

A follower takes the lease and serves; it adopts the attempts that were running (held for their agents, which
come back still running them), so those transfers finish and are recorded under it, attempt 1 still; no job is
lost, none runs twice at once; the watch rule is redeployed and every
file its writer wrote arrives; ``agents`` and ``jobs`` answer on every live controller throughout. A submit the
old leader committed, sent again with its request id to the new leader (as zc-ctl's retry after UNAVAILABLE
does), gets the same job back: exactly one job.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hahelpers import address, controllers, drop_database, ha_cluster, leader, leads, pg_database
from zchelpers import Cluster, diff_trees, snapshot, wait_for

from zcrepl.cli.client import ControllerClient
from zcrepl.core.types import Endpoint, JobOptions, JobState
from zcrepl.proto import controller_pb2 as cpb
from zcrepl.proto import schedule_pb2 as schpb
from zcrepl.proto import watchrules_pb2 as spb
from zcrepl.proto.channels import channel
from zcrepl.proto.controller_pb2_grpc import ControllerStub
from zcrepl.proto.convert import endpoint_to_pb

JOBS = 3
FILE = 96 * 1024
RATE = 192 * 1024  # bytes/s per job: each runs ~2 s, so all run when the leader dies


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory, pg_server: Any) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("ha")
    name, url = pg_database(pg_server)
    c = ha_cluster(base, url)
    try:
        for d in controllers(c):
            d.spawn()
        a = c.add_agent("hostA", base / "a").spawn()
        b = c.add_agent("hostB", base / "b").spawn()
        for d in (*controllers(c), a, b):
            d.wait_ready()
        c.wait_online("hostA", "hostB")
        yield c
    finally:
        c.close()
        drop_database(pg_server, name)


def _ep(host: str, path: Path) -> Endpoint:
    return Endpoint(host, os.fsencode(path))


def _client(c: Cluster, target: str) -> ControllerClient:
    return ControllerClient(target, c.pki.trust(), timeout=5.0)


class Readers(threading.Thread):
    """Asks every given controller for agents and jobs, over and over, noting any failure."""

    def __init__(self, c: Cluster, targets: list[str]) -> None:
        super().__init__(name="readers", daemon=True)
        self.clients = [_client(c, t) for t in targets]
        self.failures: list[str] = []
        self.rounds = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for cl in self.clients:
                try:
                    cl.agents()
                    cl.jobs(limit=50)
                except Exception as err:
                    self.failures.append(f"{cl.target}: {err}")
            self.rounds += 1
            self.stop.wait(0.1)

    def close(self) -> None:
        self.stop.set()
        self.join(10)
        for cl in self.clients:
            cl.close()


def test_sigkill_leader(ha: Cluster) -> None:
    c, base = ha, ha.base
    old = leader(c)
    src = base / "a"
    (src / "w").mkdir()
    (base / "b" / "w").mkdir()
    for i in range(JOBS):
        (src / f"s{i}").mkdir()
        for k in range(4):
            (src / f"s{i}" / f"f{k}").write_bytes(os.urandom(FILE))
    stop_writer = threading.Event()
    written: list[str] = []

    def writer() -> None:
        n = 0
        while not stop_writer.wait(0.05):
            (src / "w" / f"n{n:04d}").write_bytes(os.urandom(512) + str(n).encode())
            written.append(f"n{n:04d}")
            n += 1

    with _client(c, c.controller_addr) as cl:
        rule = cl.create_watch_rule(_ep("hostA", src / "w"), [_ep("hostB", base / "b" / "w")], JobOptions())
        ids = [cl.submit(_ep("hostA", src / f"s{i}"), _ep("hostB", base / "b" / f"s{i}"), JobOptions(bwlimit=RATE)).id
               for i in range(JOBS)]
        wt = threading.Thread(target=writer, name="writer", daemon=True)
        wt.start()
        wait_for(lambda: all(j.state is JobState.RUNNING and j.progress.bytes_done > 0
                             for j in cl.jobs((JobState.RUNNING,)) if j.id in ids)
                 and len(cl.jobs((JobState.RUNNING,))) == JOBS, 20, what="all jobs running")
    # Committed by the old leader just before it dies; its answer is what a client may never see.
    again = cpb.SubmitJobRequest(source=endpoint_to_pb(_ep("hostA", src / "s0")),
                                 destination=endpoint_to_pb(_ep("hostB", base / "b" / "r")),
                                 request_id="5f0c6f7e-2d1b-4c59-9a53-5f8d0f1e2b3c")
    with channel(address(old), c.pki.trust()) as ch:
        first = ControllerStub(ch).SubmitJob(again, timeout=5)
    survivors = [d for d in controllers(c) if d is not old]
    readers = Readers(c, [address(d) for d in survivors])
    readers.start()
    try:
        killed = time.monotonic()
        old.kill()
        new = leader(c, timeout=30)
        led = time.monotonic() - killed
        with _client(c, c.controller_addr) as cl:
            cl.jobs()  # a write below needs the leader; this read works anywhere
            probe = cl.submit(_ep("hostA", src / "s0"), _ep("hostB", base / "b" / "p"), JobOptions())
            serving = time.monotonic() - killed
            with channel(address(new), c.pki.trust()) as ch:
                retried = ControllerStub(ch).SubmitJob(again, timeout=5)
            assert retried.id == first.id
            made = [j.id for j in cl.jobs() if j.destination.path == os.fsencode(base / "b" / "r")]
            assert made == [first.id]
            with _client(c, address(new)) as direct:
                wait_for(lambda: {a.info.name for a in direct.agents() if a.online} >= {"hostA", "hostB"}, 30,
                         what="agents back at the new leader")
            agents_back = time.monotonic() - killed
            print(f"\nfailover: new leader {new.name} after {led:.2f}s, accepting writes after {serving:.2f}s, "
                  f"agents reconnected after {agents_back:.2f}s")
            every = [*ids, probe.id, first.id]
            done = wait_for(lambda: (js := [cl.job(i) for i in every]) and all(j.state.final for j in js)
                            and js, 60, interval=0.2, what="every job final")
            stop_writer.set()
            wt.join(5)
            wait_for(lambda: not diff_trees(snapshot(src / "w"), snapshot(base / "b" / "w")), 30, interval=0.2,
                     what="the watch rule's destination to catch up")
            assert [r.id for r in cl.watch_rules()] == [rule.id]
    finally:
        stop_writer.set()
        readers.close()
    assert not readers.failures, readers.failures[:5]
    assert readers.rounds > 0
    assert [j.state for j in done] == [JobState.DONE] * (JOBS + 2), [(j.id, j.state, j.error) for j in done]
    for i in range(JOBS):
        assert not diff_trees(snapshot(src / f"s{i}"), snapshot(base / "b" / f"s{i}"))
    assert set(os.listdir(base / "b" / "w")) >= set(written)
    # The transfers running at the kill carried on and were recorded by the new leader: no second attempt.
    assert [len(j.history) for j in done[:JOBS]] == [1] * JOBS, [(j.id, j.history) for j in done]
    # Never two attempts of a job at once: each started after the one before it ended.
    for j in done:
        history = sorted(j.history, key=lambda a: a.number)
        for before, after in itertools.pairwise(history):
            assert 0 < before.ended_at <= after.started_at, (j.id, history)
    assert not leads(old) and leads(new)
    # A follower answers a write with the leader's address (which the clients above followed on their own).
    follower = next(d for d in survivors if d is not new)
    with channel(address(follower), c.pki.trust()) as ch, pytest.raises(grpc.RpcError) as info:
        ControllerStub(ch).CancelJob(cpb.JobRef(id=ids[0]), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE and "follower" in info.value.details()
    assert dict(info.value.trailing_metadata())["zc-leader"] == address(new)


def test_a_repeated_fanout_watch_rule_or_schedule_is_made_once(ha: Cluster) -> None:
    """zc-ctl's retry of a fan-out, a new watch rule or a schedule (the same request id) gets what the first call
    made; another id makes another, whatever the request says."""
    c, base = ha, ha.base
    src = base / "a" / "fan"
    src.mkdir()
    (src / "f").write_bytes(b"fan-out")
    (base / "a" / "w2").mkdir()
    fan = cpb.SubmitFanoutRequest(source=endpoint_to_pb(_ep("hostA", src)),
                                  destinations=[endpoint_to_pb(_ep("hostB", base / "b" / f"fan{i}")) for i in (1, 2)],
                                  request_id="0b6a3f58-1c1e-4f0e-9d55-7c1b2a3e4f50")
    rule = spb.CreateWatchRuleRequest(source=endpoint_to_pb(_ep("hostA", base / "a" / "w2")),
                                 destinations=[endpoint_to_pb(_ep("hostB", base / "b" / "w2"))],
                                 request_id="9c2d7e14-5a3b-4c8d-8e9f-0a1b2c3d4e5f")
    with channel(address(leader(c)), c.pki.trust()) as ch:
        stub = ControllerStub(ch)
        first, again = stub.SubmitFanout(fan, timeout=5), stub.SubmitFanout(fan, timeout=5)
        assert len(first.jobs) == 2 and [j.id for j in again.jobs] == [j.id for j in first.jobs]
        made, repeat = stub.CreateWatchRule(rule, timeout=5), stub.CreateWatchRule(rule, timeout=5)
        rule.request_id = "another"  # and another destination: two rules may not write to one directory
        rule.destinations[0].path = os.fsencode(base / "b" / "w3")
        other = stub.CreateWatchRule(rule, timeout=5)
        assert repeat.id == made.id != other.id
        listed = [r.id for r in stub.ListWatchRules(spb.ListWatchRulesRequest(), timeout=5).rules
                  if r.source.path == os.fsencode(base / "a" / "w2")]
        assert sorted(listed) == sorted([made.id, other.id])
        for r in (made, other):
            stub.RemoveWatchRule(spb.WatchRef(id=r.id), timeout=5)
        jobs = stub.ListJobs(cpb.ListJobsRequest(group_id=first.jobs[0].group_id), timeout=5).jobs
        assert sorted(j.id for j in jobs) == sorted(j.id for j in first.jobs)
        add = schpb.CreateScheduleRequest(source=endpoint_to_pb(_ep("hostA", src)),
                                          destination=endpoint_to_pb(_ep("hostB", base / "b" / "nightly")),
                                          cron="0 2 * * *", request_id="5e1f0c3a-2b4d-4e6f-8a9b-c0d1e2f3a4b5")
        sched, sched_again = stub.CreateSchedule(add, timeout=5), stub.CreateSchedule(add, timeout=5)
        assert sched_again.id == sched.id
        listed_schedules = stub.ListSchedules(schpb.ListSchedulesRequest(), timeout=5).schedules
        assert [s.id for s in listed_schedules if s.cron == "0 2 * * *"] == [sched.id]
        stub.RemoveSchedule(schpb.ScheduleRef(id=sched.id), timeout=5)
