"""Tests for zcrepl.controller.store.Store: jobs, attempts, restart recovery, agents, schema guard (real SQLite)."""

from __future__ import annotations

import gc
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from zcrepl.controller.store import _SCHEMA, SCHEMA_VERSION, Store
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
def store(state_dir: str) -> Iterator[Store]:
    s = Store(state_dir)
    yield s
    s.close()


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
    assert store.db.execute("SELECT priority, options FROM jobs WHERE id=?", (job.id,)).fetchone()[0] == priority
    assert "priority" not in store.db.execute("SELECT options FROM jobs WHERE id=?", (job.id,)).fetchone()[0]


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


def test_attempt_for_missing_job_is_refused(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        store.start_attempt(12345, 1, 1.0)


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
    assert store.db.execute("SELECT first_seen, last_seen FROM agents").fetchall() == [(7.0, 9.0)]


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


def test_remove_agent_forgets_it_for_good(state_dir: str) -> None:
    s = Store(state_dir)
    try:
        s.upsert_agent(INFO, 1.0)
        s.upsert_agent(AgentInfo(name="hostB"), 2.0)
        s.remove_agent("hostA")
        s.remove_agent("never-there")
    finally:
        s.close()
    s = Store(state_dir)
    try:
        assert set(s.agents()) == {"hostB"}
    finally:
        s.close()


# -- skipped entries --------------------------------------------------------------------------------


def test_skipped_entries_of_the_latest_attempt_survive_a_reopen(state_dir: str) -> None:
    s = Store(state_dir)
    try:
        job = create(s)
        s.start_attempt(job.id, 1, 1.0)
        s.save_skipped(job.id, 1, [Skipped(b"old", "from the first attempt")])
        s.start_attempt(job.id, 2, 2.0)
        items = [Skipped(b"dev/null\xff", "device: only regular files, directories and symlinks are replicated"),
                 Skipped(b"deep/" * 3, "unreadable")]
        s.save_skipped(job.id, 2, items)
        s.save_job(replace(job, state=JobState.DONE, attempts=2,
                           progress=TransferStats(entries_skipped=7, scan_done=True)))
    finally:
        s.close()
    s = Store(state_dir)
    try:
        got = s.get_job(job.id)
        assert got is not None and got.skipped == tuple(items)
        assert got.progress.entries_skipped == 7 and got.done_with_skips
        assert s.list_jobs()[0].skipped == tuple(items)
    finally:
        s.close()


def test_stats_written_before_entries_skipped_existed_read_as_zero(store: Store) -> None:
    job = create(store)
    store.db.execute("UPDATE jobs SET progress=? WHERE id=?", ('{"entries": 3, "scan_done": true}', job.id))
    got = store.get_job(job.id)
    assert got is not None and got.progress == TransferStats(entries=3, scan_done=True) and got.skipped == ()


# -- persistence and the schema guard ---------------------------------------------------------------


def test_reopen_keeps_data(state_dir: str) -> None:
    s = Store(state_dir)
    try:
        job = create(s)
        s.start_attempt(job.id, 1, 11.0)
        saved = replace(job, state=JobState.RUNNING, attempts=1, progress=STATS, history=(Attempt(1, 11.0),))
        s.save_job(saved)
        s.upsert_agent(INFO, 3.0)
    finally:
        s.close()
    s = Store(state_dir)
    try:
        assert s.get_job(job.id) == saved
        assert s.agents() == {"hostA": (INFO, 3.0)}
        assert create(s).id > job.id  # ids are never reused
    finally:
        s.close()


def test_schema_2_state_dir_is_migrated(state_dir: str) -> None:
    """A state dir of the previous release (no priority column) opens; its jobs read as normal priority."""
    os.makedirs(state_dir)
    db = sqlite3.connect(os.path.join(state_dir, "controller.sqlite3"))
    try:
        db.executescript(_SCHEMA.replace(",\n    priority INTEGER NOT NULL DEFAULT 1", ""))
        assert "priority" not in {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
        db.execute("INSERT INTO meta VALUES ('schema', '2')")
        db.execute("INSERT INTO jobs (state, src_host, src_path, dst_host, dst_path, options, created_at, updated_at,"
                   " max_attempts) VALUES ('queued', 'hostA', x'2f61', 'hostB', x'2f62', ?, 5.0, 5.0, 3)",
                   ('{"delete": true, "checksum": false, "bwlimit": 0, "max_attempts": 0, "streams": 0,'
                    ' "durability": "file", "xattrs": false}',))
        db.commit()
    finally:
        db.close()
    s = Store(state_dir)
    try:
        (old,) = s.list_jobs()
        assert old.options == JobOptions(delete=True, durability=old.options.durability, priority=Priority.NORMAL)
        assert old.options.durability.value == "file"
        new = s.create_job(SRC, DST, JobOptions(priority=Priority.LOW), 3, 6.0)
        assert s.get_job(new.id).options.priority is Priority.LOW  # type: ignore[union-attr]
        assert s.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (str(SCHEMA_VERSION),)
    finally:
        s.close()


def test_creates_missing_state_dir(tmp_path: Path) -> None:
    s = Store(str(tmp_path / "a" / "b"))
    try:
        assert Path(s.path).is_file()
        assert Path(s.path).parent == tmp_path / "a" / "b"
    finally:
        s.close()


def test_schema_version_recorded(store: Store) -> None:
    assert store.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (str(SCHEMA_VERSION),)


def test_wal_mode(store: Store) -> None:
    assert store.db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def _bump_schema(state_dir: str, version: int) -> None:
    s = Store(state_dir)
    s.db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(version),))
    s.close()


def test_newer_schema_is_refused(state_dir: str) -> None:
    _bump_schema(state_dir, SCHEMA_VERSION + 1)
    try:
        with pytest.raises(RuntimeError, match=f"newer zc-controller \\(schema {SCHEMA_VERSION + 1}\\)"):
            Store(state_dir)
    finally:
        gc.collect()  # see test_refused_store_closes_its_connection


@pytest.mark.parametrize("version", [SCHEMA_VERSION, SCHEMA_VERSION - 1])
def test_same_or_older_schema_opens(state_dir: str, version: int) -> None:
    """Opens with the jobs it holds, records the current version, and takes new jobs."""
    with closing(Store(state_dir)) as s:
        kept = create(s)
    _bump_schema(state_dir, version)
    with closing(Store(state_dir)) as s:
        assert s.get_job(kept.id) == kept
        assert s.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (str(SCHEMA_VERSION),)
        assert create(s).id == kept.id + 1


def test_refused_store_closes_its_connection(state_dir: str) -> None:
    _bump_schema(state_dir, SCHEMA_VERSION + 1)
    path = os.path.join(state_dir, "controller.sqlite3")
    gc.disable()  # the connection sits in a reference cycle; only the cyclic GC would close it
    try:
        with pytest.raises(RuntimeError):
            Store(state_dir)
        leaked = _db_fds(path)
    finally:
        gc.enable()
        gc.collect()
    assert leaked == []
