"""Tests for zcrepl.controller.store.Store on both backends: persistence across a reopen, the state dir, and
the schema guard."""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import storehelpers
from storehelpers import INFO, STATS, _db_fds, create, schema, sql

from zcrepl.controller.store import Store, open_store
from zcrepl.controller.store_migrations import latest
from zcrepl.core.types import Attempt, JobState

# The shared fixtures: pytest finds a fixture by the name of the module attribute holding it.
_no_fd_leak = storehelpers._no_fd_leak
state_dir = storehelpers.state_dir
store = storehelpers.store
reopen = storehelpers.reopen


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
