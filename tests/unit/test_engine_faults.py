"""Faults at the controller, through a real Engine and SQLite Store with agents played by the test and an
injected clock: attempts of agents it lost are held, not rerun (controller/fence.py); one job whose scheduling
fails does not stop the others; a job given up drops its partial files. Also the agent's side of the fence:
it stops its transfers itself before the controller gives their attempts up."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from enginehelpers import Harness

from zcrepl.controller.registry import Session
from zcrepl.core.types import (
    AgentInfo,
    CancelOrder,
    Endpoint,
    HostHealth,
    Job,
    JobOptions,
    JobState,
    Phase,
    ReceiveOrder,
    Role,
    SendOrder,
    TransferReport,
    TransferStats,
)

GRACE = 60.0


class Agents(Harness):
    """The shared harness with the fence's view: sessions that reconnect listing their attempts, time that
    passes with heartbeats, agents lost."""

    def __init__(self, state: Path, store_spec: str = "", **config: Any) -> None:
        super().__init__(state, store_spec, **{"retry_base": 1.0, "attempt_grace": GRACE, **config})

    def connect(self, name: str, active: list[tuple[int, int]] = ()) -> Session:  # type: ignore[assignment]
        s = self.engine.connect(AgentInfo(name, data_address=f"10.0.0.{len(self.sessions) + 1}:7422",
                                          exports=(b"/srv",)), list(active))
        self.sessions[name] = s
        self.beat(name)
        return s

    def advance(self, seconds: float) -> None:
        """Time passes; the agents still connected keep heartbeating; the engine ticks."""
        self.now += seconds
        for name, s in self.sessions.items():
            if s.open:
                self.beat(name)
        self.engine.tick()

    def orders(self, name: str) -> list[object]:
        return [o for o in super().orders(name) if o is not None]

    def report(self, name: str, job: Job, role: Role, phase: Phase, attempt: int = 1, **stats: Any) -> None:
        super().report(name, job, role, phase, attempt, **{"files_done": 1, **stats})

    def running(self) -> Job:
        """A job from a to b, started and sending (attempt 1)."""
        job = self.engine.submit(Endpoint("a", b"/srv/x"), Endpoint("b", b"/srv/y"), JobOptions())
        self.engine.tick()
        assert any(isinstance(o, ReceiveOrder) for o in self.orders("b"))
        self.report("b", job, Role.RECEIVER, Phase.READY)
        assert any(isinstance(o, SendOrder) for o in self.orders("a"))
        return job

    def lose(self, name: str) -> None:
        self.engine.disconnect(self.sessions[name], "its stream closed")

    def job(self, job: Job) -> Job:
        return self.engine.get(job.id)


@pytest.fixture
def agents(tmp_path: Path, store_spec: str) -> Iterator[Any]:
    made: list[Agents] = []

    def make(**config: Any) -> Agents:
        assert not made or not store_spec, "one engine per test on PostgreSQL: it has one database"
        h = Agents(tmp_path / f"state{len(made)}", store_spec, **config)
        h.connect("a")
        h.connect("b")
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


# -- attempts of lost agents ----------------------------------------------------------------------------------
@pytest.mark.parametrize("lost", ["a", "b"], ids=["source", "destination"])
def test_a_lost_agent_that_comes_back_with_the_attempt_carries_on(agents: Any, lost: str) -> None:
    h = agents()
    job = h.running()
    h.advance(5)
    h.lose(lost)
    h.advance(GRACE - 1)
    assert h.job(job).state is JobState.RUNNING and h.job(job).attempts == 1  # held, not retried
    assert not [o for o in h.orders("b" if lost == "a" else "a") if isinstance(o, CancelOrder)]
    h.connect(lost, active=[(job.id, 1)])
    assert not [o for o in h.orders(lost) if isinstance(o, CancelOrder)]
    h.advance(10)
    h.report("a", job, Role.SENDER, Phase.DONE)
    h.report("b", job, Role.RECEIVER, Phase.DONE)
    done = h.job(job)
    assert done.state is JobState.DONE and done.attempts == 1, done
    kinds = [reason for _, _, reason in asyncio.run(h.engine.explain(job.id))]
    assert any("held for up to 60s" in r for r in kinds) and any("is back and still runs" in r for r in kinds)


def test_an_agent_that_comes_back_without_the_attempt_fails_it_at_once(agents: Any) -> None:
    h = agents()
    job = h.running()
    h.lose("a")
    h.advance(2)
    h.connect("a", active=[])  # it restarted
    j = h.job(job)
    assert j.state is JobState.QUEUED and j.failures == 1 and "came back without attempt 1" in j.error
    assert any(isinstance(o, CancelOrder) and o.attempt == 1 for o in h.orders("b"))


def test_the_attempt_is_given_up_after_the_grace_and_only_then(agents: Any) -> None:
    h = agents()
    job = h.running()
    h.lose("a")
    h.advance(GRACE - 0.5)
    assert h.job(job).state is JobState.RUNNING
    h.advance(1)
    j = h.job(job)
    assert j.state is JobState.QUEUED and "stayed out of reach of the controller for 60s" in j.error, j.error
    assert any(isinstance(o, CancelOrder) for o in h.orders("b"))
    # a comes back late, still listing the old attempt: it is told to cancel it
    h.connect("a", active=[(job.id, 1)])
    assert any(isinstance(o, CancelOrder) and o.attempt == 1 for o in h.orders("a"))


def test_the_other_end_reporting_failure_settles_a_held_attempt(agents: Any) -> None:
    h = agents()
    job = h.running()
    h.lose("a")
    h.report("b", job, Role.RECEIVER, Phase.FAILED)  # the destination, the only writer, stopped
    assert h.job(job).state is JobState.QUEUED


def test_without_a_grace_a_lost_agent_fails_its_attempts_at_once(agents: Any) -> None:
    h = agents(attempt_grace=0)
    job = h.running()
    h.lose("b")
    assert h.job(job).state is JobState.QUEUED and "b went offline" in h.job(job).error


@pytest.mark.parametrize("lost", ["a", "b"], ids=["source", "destination"])
def test_an_agent_lost_before_the_send_order_fails_the_attempt_at_once(agents: Any, lost: str) -> None:
    h = agents()
    job = h.engine.submit(Endpoint("a", b"/srv/x"), Endpoint("b", b"/srv/y"), JobOptions())
    h.engine.tick()  # the ReceiveOrder went to b, which has not answered READY: no byte can flow yet
    h.lose(lost)
    assert h.job(job).state is JobState.QUEUED and f"{lost} went offline" in h.job(job).error


# -- one job's failure is its own ----------------------------------------------------------------------------
def test_a_job_whose_scheduling_fails_waits_with_the_reason_and_the_others_start(
        agents: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from zcrepl.controller import scheduler

    h = agents()
    h.connect("c")
    jobs = [h.engine.submit(Endpoint("a", f"/srv/x{i}".encode()), Endpoint(dst, f"/srv/y{i}".encode()), JobOptions())
            for i, dst in enumerate(("b", "c", "b"))]
    real = scheduler._blocker

    def blocker(job: Job, *args: Any) -> str:
        if job.id == jobs[0].id:  # a bug that only this job's data triggers
            raise ZeroDivisionError("division by zero")
        return real(job, *args)

    monkeypatch.setattr(scheduler, "_blocker", blocker)
    h.engine.tick()
    first = h.job(jobs[0])
    assert first.state is JobState.QUEUED and "scheduling this job failed (ZeroDivisionError" in first.wait_reason
    assert [h.job(j).state for j in jobs[1:]] == [JobState.RUNNING, JobState.RUNNING]
    assert any("scheduling this job failed" in r for _, _, r in asyncio.run(h.engine.explain(jobs[0].id)))
    monkeypatch.setattr(scheduler, "_blocker", real)
    h.advance(1)
    assert h.job(jobs[0]).state is JobState.RUNNING  # tried again on the next pass


def test_a_job_that_fails_to_start_stays_queued_and_the_pass_goes_on(agents: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    h = agents()
    jobs = [h.engine.submit(Endpoint("a", f"/srv/x{i}".encode()), Endpoint("b", f"/srv/y{i}".encode()),
                            JobOptions()) for i in range(3)]
    real = h.store.start_attempt

    def start_attempt(job_id: int, *args: Any) -> None:
        if job_id == jobs[1].id:
            raise OSError(28, "No space left on device")
        real(job_id, *args)

    monkeypatch.setattr(h.store, "start_attempt", start_attempt)
    h.engine.tick()
    assert [h.job(j).state for j in jobs] == [JobState.RUNNING, JobState.QUEUED, JobState.RUNNING]
    assert jobs[1].id not in h.engine.runs
    assert "No space left on device" in h.job(jobs[1]).wait_reason


def test_a_job_given_up_drops_its_partial_files(agents: Any) -> None:
    h = agents(max_attempts=1)
    job = h.running()
    h.report("b", job, Role.RECEIVER, Phase.FAILED)
    assert h.job(job).state is JobState.FAILED
    cancels = [o for o in h.orders("a") + h.orders("b") if isinstance(o, CancelOrder)]
    assert cancels and all(o.discard_partial for o in cancels)


def test_the_destinations_verdict_on_a_failed_attempt_wins_over_the_sources_echo(agents: Any) -> None:
    h = agents()
    job = h.running()
    echo = TransferReport(job.id, 1, Role.SENDER, Phase.FAILED, TransferStats(), "a: the destination aborted", True)
    h.engine.report(h.sessions["a"], echo)
    assert h.job(job).state is JobState.RUNNING  # waits for b's word
    h.advance(1)
    full = TransferReport(job.id, 1, Role.RECEIVER, Phase.FAILED, TransferStats(), "b:/srv/y: the filesystem is full",
                          False)
    h.engine.report(h.sessions["b"], full)
    j = h.job(job)
    assert j.state is JobState.FAILED and "filesystem is full" in j.error  # not retried: it would fail the same way


def test_the_sources_failure_stands_when_the_destination_says_nothing(agents: Any) -> None:
    h = agents()
    job = h.running()
    h.engine.report(h.sessions["a"], TransferReport(job.id, 1, Role.SENDER, Phase.FAILED, TransferStats(),
                                                    "a: cannot read /srv/x", True))
    h.advance(1.9)
    assert h.job(job).state is JobState.RUNNING
    h.advance(0.2)
    assert h.job(job).state is JobState.QUEUED and "cannot read" in h.job(job).error


# -- the agent's side ------------------------------------------------------------------------------------------
class _Running:
    """What ControllerLink needs of Attempts: how many run, and a way to stop them all."""

    def __init__(self) -> None:
        self.stopped: list[str] = []

    def count(self) -> int:
        return 0 if self.stopped else 1

    def refs(self) -> list[tuple[int, int]]:
        return []

    def cancel_all(self, reason: str) -> None:
        self.stopped.append(reason)


@pytest.mark.parametrize(("grace", "lost_for", "stops"), [
    (60.0, 29.0, False),  # the controller holds the attempt for 60 s; the agent keeps it 60 - 30 s
    (60.0, 31.0, True),
    (0.0, 0.0, True),  # no grace: stop as soon as the loss is noticed
    (20.0, 0.0, True),  # a grace shorter than the keepalive's detection time leaves the agent none
])
def test_an_agent_without_the_controller_stops_its_transfers_before_the_controller_gives_up(
        grace: float, lost_for: float, stops: bool) -> None:
    import time

    from zcrepl.agent.link import LOSS_DETECTION, ControllerLink

    assert LOSS_DETECTION == 30.0
    running = _Running()
    link = ControllerLink("10.0.0.1:7420", lambda: AgentInfo("a"), HostHealth, running,  # type: ignore[arg-type]
                          heartbeat_interval=1.0, reconnect_max=1.0)
    link.attempt_grace = grace
    link._lost_at = time.monotonic() - lost_for
    link._fence()
    assert bool(running.stopped) is stops, running.stopped
    if stops:
        why = "no controller for 30s" if grace > LOSS_DETECTION else "lost the controller stream"
        assert why in running.stopped[0]
