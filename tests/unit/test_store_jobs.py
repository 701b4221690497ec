"""Tests for zcrepl.controller.store.Store on both backends (real SQLite, real PostgreSQL): jobs and
restart recovery."""

from __future__ import annotations

from dataclasses import replace

import pytest
import storehelpers
from storehelpers import DST, OPTS, SRC, STATS, create, sql

from zcrepl.controller.store import Store
from zcrepl.core.types import Attempt, Endpoint, Job, JobOptions, JobState, Priority, TransferStats

# The shared fixtures: pytest finds a fixture by the name of the module attribute holding it.
_no_fd_leak = storehelpers._no_fd_leak
state_dir = storehelpers.state_dir
store = storehelpers.store
reopen = storehelpers.reopen


# -- jobs -------------------------------------------------------------------------------------------


def test_create_job(store: Store) -> None:
    job = create(store, now=12.5)
    assert job == Job(id=job.id, state=JobState.QUEUED, source=SRC, destination=DST, options=OPTS, created_at=12.5,
                      updated_at=12.5, max_attempts=3)
    assert job.id >= 1


@pytest.mark.parametrize("priority", list(Priority))
def test_priority_round_trips_in_its_own_column(store: Store, priority: Priority) -> None:
    job = store.create_job(SRC, DST, replace(OPTS, priority=priority), 3, 10.0)
    assert job.options.priority is priority
    assert store.get_job(job.id) == job
    assert sql(store, "SELECT priority FROM jobs WHERE id=?", (job.id,)) == [(priority,)]
    assert "priority" not in str(sql(store, "SELECT options FROM jobs WHERE id=?", (job.id,))[0][0])


def test_create_assigns_increasing_ids(store: Store) -> None:
    ids = [create(store).id for _ in range(3)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 3


def test_get_job_round_trips_endpoints_as_bytes(store: Store) -> None:
    job = create(store)
    got = store.get_job(job.id)
    assert got == job
    assert got is not None
    assert isinstance(got.destination.path, bytes)
    assert got.destination.path == b"/backup/\xff\nodd"


def test_get_missing_job(store: Store) -> None:
    assert store.get_job(999) is None


def test_save_job_round_trip(store: Store) -> None:
    job = create(store)
    changed = replace(job, state=JobState.FAILED, updated_at=20.0, started_at=15.0, finished_at=20.0, attempts=2,
                      failures=2, max_attempts=4, error="disk full on hostB", wait_reason="w", progress=STATS,
                      next_attempt_at=33.5)
    store.save_job(changed)
    assert store.get_job(job.id) == changed


def test_save_job_never_touches_endpoints_or_options(store: Store) -> None:
    job = create(store)
    store.save_job(replace(job, source=Endpoint("x", b"/x"), destination=Endpoint("y", b"/y"),
                           options=JobOptions(), created_at=99.0))
    assert store.get_job(job.id) == job


def test_save_job_only_that_job(store: Store) -> None:
    a, b = create(store), create(store)
    store.save_job(replace(a, state=JobState.DONE))
    assert store.get_job(b.id) == b


@pytest.mark.parametrize(
    ("states", "limit", "expected"),
    [
        ((), 0, [5, 4, 3, 2, 1]),
        ((), 2, [5, 4]),
        ((JobState.QUEUED,), 0, [5, 3, 1]),
        ((JobState.RUNNING,), 0, [4]),
        ((JobState.QUEUED, JobState.DONE), 0, [5, 3, 2, 1]),
        ((JobState.QUEUED, JobState.DONE), 3, [5, 3, 2]),
        ((JobState.FAILED,), 0, []),
    ],
)
def test_list_jobs(store: Store, states: tuple[JobState, ...], limit: int, expected: list[int]) -> None:
    jobs = [create(store, now=float(i)) for i in range(5)]
    store.save_job(replace(jobs[1], state=JobState.DONE))
    store.save_job(replace(jobs[3], state=JobState.RUNNING))
    ids = [j.id for j in jobs]
    assert [j.id for j in store.list_jobs(states, limit)] == [ids[i - 1] for i in expected]


def test_list_jobs_empty(store: Store) -> None:
    assert store.list_jobs() == []


# -- restart recovery -------------------------------------------------------------------------------


def test_recover_interrupted(store: Store) -> None:
    queued, running1, done, running2 = (create(store) for _ in range(4))
    for job, state in ((running1, JobState.RUNNING), (done, JobState.DONE), (running2, JobState.RUNNING)):
        store.save_job(replace(job, state=state, attempts=2, failures=1))
    store.start_attempt(running1.id, 1, 1.0)
    store.end_attempt(running1.id, 1, 2.0, "first failure", TransferStats())
    store.start_attempt(running1.id, 2, 3.0)
    store.start_attempt(done.id, 1, 1.0)

    ids = store.recover_interrupted(50.0)

    assert sorted(ids) == sorted([running1.id, running2.id])
    r1 = store.get_job(running1.id)
    assert r1 is not None
    assert r1.state is JobState.QUEUED
    assert r1.updated_at == 50.0
    assert "restart" in r1.wait_reason
    assert (r1.attempts, r1.failures) == (2, 1)  # the interrupted attempt does not spend the budget
    assert r1.history[0] == Attempt(1, 1.0, 2.0, "first failure")
    assert r1.history[1].ended_at == 50.0
    assert r1.history[1].error.startswith("interrupted")
    # Other jobs are untouched, including the open attempt of a job that is not running.
    assert store.get_job(queued.id) == queued
    d = store.get_job(done.id)
    assert d is not None
    assert d.state is JobState.DONE
    assert d.history == (Attempt(1, 1.0),)


def test_recover_with_nothing_running(store: Store) -> None:
    create(store)
    assert store.recover_interrupted(1.0) == []


def test_recover_is_idempotent(store: Store) -> None:
    job = create(store)
    store.save_job(replace(job, state=JobState.RUNNING))
    assert store.recover_interrupted(1.0) == [job.id]
    assert store.recover_interrupted(2.0) == []
