"""Tests for zcrepl.controller.store.Store on both backends: attempts, their skipped entries, and the write
queue (ordering, batching, a failing write)."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import replace
from typing import Any

import pytest
import storehelpers
from storehelpers import STATS, create, sql

from zcrepl.controller.store import Store
from zcrepl.core.types import Attempt, JobState, Skipped, TransferStats

# The shared fixtures: pytest finds a fixture by the name of the module attribute holding it.
_no_fd_leak = storehelpers._no_fd_leak
state_dir = storehelpers.state_dir
store = storehelpers.store
reopen = storehelpers.reopen


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
