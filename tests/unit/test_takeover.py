"""A controller taking the lead after another (engine side, controller/leading.py): it re-reads the store, and the
attempts that were running are adopted, held for their agents: carried on when they come back with them, failed
and retried when they come back without. A follower's engine holds nothing and schedules nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from enginehelpers import Harness, idle

from zcrepl.controller.engine import Engine
from zcrepl.core.config import ControllerConfig
from zcrepl.core.types import AgentInfo, CancelOrder, JobState, Phase, ReceiveOrder, Role, TransferReport, TransferStats


def _running(tmp_path: Path) -> int:
    """A first leader starts a job's attempt, then dies (its writes are in the store)."""
    h = Harness(tmp_path)
    try:
        h.agent("hostA")
        h.agent("hostB")
        job = h.submit("hostA:/srv/a", "hostB:/srv/b")
        h.start(job)
        assert h.engine.runs[job.id].sending
    finally:
        h.close()
    return job.id


NOW = [2000.0]


def _follower(tmp_path: Path) -> Engine:
    from zcrepl.controller.store import open_store

    NOW[0] = 2000.0
    return Engine(ControllerConfig(state_dir=str(tmp_path)), open_store("", str(tmp_path)), clock=lambda: NOW[0],
                  lead=False)


def _join(engine: Engine, name: str, active: list[tuple[int, int]]) -> object:
    s = engine.connect(AgentInfo(name, data_address="127.0.0.1:9000", exports=(b"/srv",)), active)
    engine.heartbeat(s, idle(engine.clock()))
    return s


def test_adopted_attempt_carries_on_when_its_agents_come_back_with_it(tmp_path: Path) -> None:
    job_id = _running(tmp_path)
    e = _follower(tmp_path)
    try:
        assert not e.leading and not e.jobs and not e.runs
        e.tick()  # a follower's engine has nothing to schedule
        asyncio.run(e.lead(7, "S"))
        assert e.leading and e.epoch == 7
        run = e.runs[job_id]
        assert run.attempt == 1 and run.lost_hosts == {"hostA", "hostB"}
        a, b = _join(e, "hostA", [(job_id, 1)]), _join(e, "hostB", [(job_id, 1)])
        assert not run.lost_hosts and not run.lost_until
        for s in (a, b):
            assert not any(isinstance(o, CancelOrder) for o in _drain(s))
        for s, role in ((a, Role.SENDER), (b, Role.RECEIVER)):
            e.report(s, TransferReport(job_id, 1, role, Phase.DONE, TransferStats(files_done=1)))  # type: ignore[arg-type]
        job = e.get(job_id)
        assert job.state is JobState.DONE and [x.number for x in job.history] == [1]
    finally:
        e.store.close()


def test_adopted_attempt_fails_when_an_agent_comes_back_without_it(tmp_path: Path) -> None:
    job_id = _running(tmp_path)
    e = _follower(tmp_path)
    try:
        asyncio.run(e.lead(2, "S"))
        a = _join(e, "hostA", [(job_id, 1)])
        b = _join(e, "hostB", [])  # it restarted: the attempt is gone
        assert job_id not in e.runs and e.jobs[job_id].state is JobState.QUEUED
        NOW[0] += 3  # past the retry delay
        for s in (a, b):
            e.heartbeat(s, idle(NOW[0]))  # type: ignore[arg-type]
        e.tick()
        assert any(isinstance(o, ReceiveOrder) and o.attempt == 2 for o in _drain(b))
        e.step_down()
        assert not e.leading and not e.jobs and not e.runs
    finally:
        e.store.close()


def _drain(s: object) -> list[object]:
    q = s.outbox  # type: ignore[attr-defined]
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


def test_a_deposed_leaders_uncommitted_writes_are_dropped(tmp_path: Path) -> None:
    import threading

    import pytest

    from zcrepl.controller.store import Fenced, open_store
    from zcrepl.core.types import Endpoint, JobOptions

    store = open_store("", str(tmp_path))
    try:
        started, held = threading.Event(), threading.Event()

        def block() -> None:  # the store's thread is busy (as with a database out of reach)
            started.set()
            held.wait(10)

        busy = store.submit(block)
        assert started.wait(10)
        old = store.create_job(Endpoint("a", b"/x"), Endpoint("b", b"/y"), JobOptions(), 5, 1.0)
        waiting = store.submit(store.sql.get_job, old.id)
        store.fence()
        new = store.create_job(Endpoint("a", b"/x"), Endpoint("b", b"/z"), JobOptions(), 5, 2.0)
        held.set()
        busy.result(10)
        with pytest.raises(Fenced):
            waiting.result(10)
        assert store.get_job(old.id) is None and store.get_job(new.id) is not None
    finally:
        store.close()
