"""Tests for zcrepl.controller.store.Store on both backends (real SQLite, real PostgreSQL): jobs, attempts,
restart recovery, agents, the schema guard, and the write queue (ordering, batching, a failing write)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from zcrepl.controller.store import Store, open_store
from zcrepl.controller.store_migrations import latest
from zcrepl.core.types import (
    AgentInfo,
    Attempt,
    Endpoint,
    Job,
    JobOptions,
    JobState,
    Priority,
    Skipped,
    TransferStats,
)

SRC = Endpoint("hostA", b"/srv/data")
DST = Endpoint("hostB", b"/backup/\xff\nodd")
OPTS = JobOptions(delete=True, checksum=True, bwlimit=1000, max_attempts=3)
STATS = TransferStats(entries=5, files_total=3, files_done=2, bytes_total=300, bytes_done=200, files_skipped=1,
                      deleted=1, wire_bytes=250, skipped_special=1, errors=0, scan_done=True)


def _db_fds(path: str) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(path):
            out.append(target)
    return out


@pytest.fixture(autouse=True)
def _no_fd_leak() -> Iterator[None]:
    before = len(os.listdir("/proc/self/fd"))
    yield
    assert len(os.listdir("/proc/self/fd")) == before, "file descriptors leaked (an unclosed sqlite connection?)"


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    return str(tmp_path / "state")


@pytest.fixture
def store(store_spec: str, state_dir: str) -> Iterator[Store]:
    s = open_store(store_spec, state_dir)
    yield s
    s.close()


@pytest.fixture
def reopen(store_spec: str, state_dir: str) -> Iterator[Any]:
    """Opens the test's store again (the same file or database), closing each one at the end."""
    opened: list[Store] = []

    def make() -> Store:
        opened.append(open_store(store_spec, state_dir))
        return opened[-1]
    yield make
    for s in opened:
        s.close()


def sql(store: Store, query: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """A statement run on the store's own thread, after everything queued (the backends' rows as tuples)."""
    return store.run(lambda: [tuple(r) for r in store.db.execute(query, args).fetchall()])


def schema(store: Store) -> list[tuple[object, ...]]:
    return sql(store, "SELECT value FROM meta WHERE key='schema'")


def create(store: Store, now: float = 10.0, src: Endpoint = SRC, dst: Endpoint = DST) -> Job:
    return store.create_job(src, dst, OPTS, 3, now)


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


# -- attempts ---------------------------------------------------------------------------------------


def test_attempt_history(store: Store) -> None:
    job = create(store)
    store.start_attempt(job.id, 1, 20.0)
    store.end_attempt(job.id, 1, 25.0, "connection reset", STATS)
    store.start_attempt(job.id, 2, 30.0)
    got = store.get_job(job.id)
    assert got is not None
    assert got.history == (
        Attempt(1, 20.0, 25.0, "connection reset", STATS),
        Attempt(2, 30.0, 0.0, "", TransferStats()),
    )


def test_history_is_ordered_by_number(store: Store) -> None:
    job = create(store)
    for n in (3, 1, 2):
        store.start_attempt(job.id, n, float(n))
    got = store.get_job(job.id)
    assert got is not None
    assert [a.number for a in got.history] == [1, 2, 3]


def test_history_is_per_job(store: Store) -> None:
    a, b = create(store), create(store)
    store.start_attempt(a.id, 1, 1.0)
    got = store.get_job(b.id)
    assert got is not None
    assert got.history == ()


def test_restarting_an_attempt_number_replaces_it(store: Store) -> None:
    job = create(store)
    store.start_attempt(job.id, 1, 1.0)
    store.end_attempt(job.id, 1, 2.0, "boom", STATS)
    store.start_attempt(job.id, 1, 3.0)
    got = store.get_job(job.id)
    assert got is not None
    assert got.history == (Attempt(1, 3.0),)


def test_a_refused_write_is_logged_and_the_others_in_its_batch_still_commit(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """An attempt of a job that does not exist breaks the foreign key: that write alone is lost, in one
    sentence; the writes queued around it (the same transaction at first) are committed."""
    before = create(store)
    store.start_attempt(12345, 1, 1.0)
    after = create(store)
    store.start_attempt(after.id, 1, 2.0)
    with caplog.at_level(logging.ERROR, "zcrepl.controller.store"):
        asyncio.run(store.flush())
    assert [r.getMessage() for r in caplog.records] == ["a store write failed and is lost"]
    assert caplog.records[0].__dict__["kv"]["call"] == "start_attempt"
    assert [j.id for j in store.list_jobs()] == [after.id, before.id]
    assert store.get_job(after.id).history == (Attempt(1, 2.0),)  # type: ignore[union-attr]
    assert sql(store, "SELECT COUNT(*) FROM attempts WHERE job_id=12345") == [(0,)]


def test_reads_wait_for_every_write_queued_before_them(store: Store) -> None:
    jobs = [create(store, now=float(i)) for i in range(300)]
    for j in jobs:
        store.save_job(replace(j, state=JobState.DONE, finished_at=99.0))
    assert store.job_counts() == {JobState.DONE: 300}


def test_a_read_whose_caller_gave_up_is_dropped_and_the_store_goes_on(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """A cancelled RPC cancels its queued read (asyncio.wrap_future passes the cancellation on)."""
    job = create(store)
    gate = threading.Event()
    store.write("hold", gate.wait)  # holds the store's thread: the read below stays queued
    read = store.submit(store.sql.get_job, job.id)
    assert read.cancel()
    with caplog.at_level(logging.ERROR, "zcrepl.controller.store"):
        gate.set()
        assert store.get_job(job.id) == job
    assert not caplog.records


def test_a_blocking_read_is_refused_on_the_event_loop(store: Store) -> None:
    async def on_loop() -> None:
        with pytest.raises(RuntimeError, match="blocking store call on the event loop"):
            store.get_job(1)
        job = create(store)
        assert await store.call(store.sql.get_job, job.id) == job
    asyncio.run(on_loop())


def test_attempt_records_its_source(store: Store) -> None:
    job = create(store)
    store.start_attempt(job.id, 1, 5.0, b"hostB:/copy")
    assert store.get_job(job.id).history == (Attempt(1, 5.0, source=b"hostB:/copy"),)  # type: ignore[union-attr]


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


# -- agents -----------------------------------------------------------------------------------------

INFO = AgentInfo(name="hostA", grpc_address="10.0.0.1:7421", data_address="10.0.0.1:7422",
                 exports=(b"/srv/data", b"/srv/\xff\xfe odd", "/caf\u00e9".encode()), version="0.1.0", pid=4242,
                 hostname="hostA.example")


def test_agents_round_trip_with_non_utf8_exports(store: Store) -> None:
    store.upsert_agent(INFO, 7.0)
    assert store.agents() == {"hostA": (INFO, 7.0)}
    assert store.agents()["hostA"][0].exports[1] == b"/srv/\xff\xfe odd"


def test_upsert_replaces_info_and_last_seen(store: Store) -> None:
    store.upsert_agent(INFO, 7.0)
    newer = replace(INFO, version="0.2.0", exports=(b"/new",), pid=1)
    store.upsert_agent(newer, 9.0)
    assert store.agents() == {"hostA": (newer, 9.0)}


def test_upsert_keeps_first_seen(store: Store) -> None:
    store.upsert_agent(INFO, 7.0)
    store.upsert_agent(INFO, 9.0)
    assert sql(store, "SELECT first_seen, last_seen FROM agents") == [(7.0, 9.0)]


def test_touch_agent(store: Store) -> None:
    store.upsert_agent(INFO, 7.0)
    store.touch_agent("hostA", 8.0)
    store.touch_agent("unknown", 8.0)
    assert store.agents() == {"hostA": (INFO, 8.0)}


def test_several_agents(store: Store) -> None:
    other = AgentInfo(name="hostB")
    store.upsert_agent(INFO, 1.0)
    store.upsert_agent(other, 2.0)
    assert store.agents() == {"hostA": (INFO, 1.0), "hostB": (other, 2.0)}


def test_remove_agent_forgets_it_for_good(reopen: Any) -> None:
    s = reopen()
    try:
        s.upsert_agent(INFO, 1.0)
        s.upsert_agent(AgentInfo(name="hostB"), 2.0)
        s.remove_agent("hostA")
        s.remove_agent("never-there")
    finally:
        s.close()
    s = reopen()
    try:
        assert set(s.agents()) == {"hostB"}
    finally:
        s.close()


# -- skipped entries --------------------------------------------------------------------------------


def test_skipped_entries_of_the_latest_attempt_survive_a_reopen(reopen: Any) -> None:
    s = reopen()
    try:
        job = create(s)
        s.start_attempt(job.id, 1, 1.0)
        s.save_skipped(job.id, 1, [Skipped(b"old", "from the first attempt")])
        s.start_attempt(job.id, 2, 2.0)
        items = [Skipped(b"dev/null\xff", "device: only regular files, directories and symlinks are replicated"),
                 Skipped(b"deep/" * 3, "unreadable", error=True)]
        s.save_skipped(job.id, 2, items)
        s.save_job(replace(job, state=JobState.DONE, attempts=2,
                           progress=TransferStats(entries_skipped=7, scan_done=True)))
    finally:
        s.close()
    s = reopen()
    try:
        got = s.get_job(job.id)
        assert got is not None and got.skipped == tuple(items)
        assert got.progress.entries_skipped == 7 and got.done_with_skips
        assert s.list_jobs()[0].skipped == tuple(items)
    finally:
        s.close()


def test_stats_written_before_entries_skipped_existed_read_as_zero(store: Store) -> None:
    job = create(store)
    store.run(lambda: store.db.execute("UPDATE jobs SET progress=? WHERE id=?",
                                       ('{"entries": 3, "scan_done": true}', job.id)))
    got = store.get_job(job.id)
    assert got is not None and got.progress == TransferStats(entries=3, scan_done=True) and got.skipped == ()


# -- persistence and the schema guard ---------------------------------------------------------------


def test_reopen_keeps_data(reopen: Any) -> None:
    s = reopen()
    try:
        job = create(s)
        s.start_attempt(job.id, 1, 11.0)
        saved = replace(job, state=JobState.RUNNING, attempts=1, progress=STATS, history=(Attempt(1, 11.0),))
        s.save_job(saved)
        s.upsert_agent(INFO, 3.0)
    finally:
        s.close()
    s = reopen()
    try:
        assert s.get_job(job.id) == saved
        assert s.agents() == {"hostA": (INFO, 3.0)}
        assert create(s).id > job.id  # ids are never reused
    finally:
        s.close()


def test_creates_missing_state_dir(tmp_path: Path) -> None:
    s = open_store("", str(tmp_path / "a" / "b"))
    try:
        assert Path(s.path).is_file()
        assert Path(s.path).parent == tmp_path / "a" / "b"
    finally:
        s.close()


def test_a_store_path_outside_the_state_dir(tmp_path: Path) -> None:
    s = open_store(str(tmp_path / "db" / "jobs.sqlite3"), str(tmp_path / "state"))
    try:
        create(s)
        assert s.path == str(tmp_path / "db" / "jobs.sqlite3") and Path(s.path).is_file()
    finally:
        s.close()


def test_schema_version_recorded(store: Store) -> None:
    assert schema(store) == [(str(latest(store.db.dialect)),)]


def test_sqlite_runs_in_wal_mode(state_dir: str) -> None:
    s = open_store("", state_dir)
    try:
        assert sql(s, "PRAGMA journal_mode") == [("wal",)]
    finally:
        s.close()


def _set_schema(store: Store, version: int) -> None:
    store.run(lambda: store.db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(version),)))


def test_newer_schema_is_refused(reopen: Any) -> None:
    s = reopen()
    newer = latest(s.db.dialect) + 1
    _set_schema(s, newer)
    s.close()
    try:
        with pytest.raises(RuntimeError, match=f"newer zc-controller \\(schema {newer}\\).*--store"):
            reopen()
    finally:
        gc.collect()  # see test_refused_store_closes_its_connection


def test_the_same_schema_opens_and_keeps_its_version(reopen: Any) -> None:
    s = reopen()
    create(s)
    s.close()
    s = reopen()
    assert schema(s) == [(str(latest(s.db.dialect)),)] and len(s.list_jobs()) == 1


def test_refused_store_closes_its_connection(state_dir: str) -> None:
    s = open_store("", state_dir)
    _set_schema(s, latest("sqlite") + 1)
    s.close()
    path = os.path.join(state_dir, "controller.sqlite3")
    gc.disable()  # the connection sits in a reference cycle; only the cyclic GC would close it
    try:
        with pytest.raises(RuntimeError):
            open_store("", state_dir)
        leaked = _db_fds(path)
    finally:
        gc.enable()
        gc.collect()
    assert leaked == []


def test_writes_queued_while_postgres_drops_the_connection_are_retried_and_committed(
        pg_server: Any, pg_url: str, state_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    """The server ends the store's session (a restart, a failover, an operator's pg_terminate_backend): the
    batch in hand fails, is kept, and commits on a new connection from the pool."""
    s = open_store(pg_url, state_dir)
    try:
        job = create(s)
        assert s.get_job(job.id) == job
        pg_server.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid()", pg_server.database)
        with caplog.at_level(logging.ERROR, "zcrepl.controller.store"):
            s.save_job(replace(job, state=JobState.DONE, finished_at=3.0))
            s.add_decision(job.id, 3.0, "done", "after the reconnect")
            assert s.get_job(job.id) == replace(job, state=JobState.DONE, finished_at=3.0)
        assert [r.getMessage() for r in caplog.records][:1] == [
            "the store cannot be written; queued changes wait and are retried (check the database server, its "
            "disk and the URL)"]
        assert s.decisions(job.id) == [(3.0, "done", "after the reconnect")]
    finally:
        s.close()
