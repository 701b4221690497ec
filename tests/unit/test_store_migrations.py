"""Schema migrations: a state dir written by every older zc-controller opens, keeps its data and ends in the
same shape as a new one; PostgreSQL starts at the current shape. The old schemas are copied verbatim from the
commits that introduced them (``git show COMMIT:controller/store.py``)."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from zcrepl.controller.pki_store import PkiStore
from zcrepl.controller.store import Store, open_store
from zcrepl.controller.store_migrations import STEPS, latest, migrate
from zcrepl.controller.watchrule_store import WatchRuleStore
from zcrepl.core.types import Attempt, Durability, Endpoint, JobOptions, JobState, Priority, Skipped
from zcrepl.core.watchtypes import WatchCounters, WatchRule, WatchState

# (commit, the schema version it recorded, what it added, its schema script)
HISTORY = [
    ("df2b20f", 1, "the first release: jobs, attempts, agents", """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    src_host TEXT NOT NULL, src_path BLOB NOT NULL,
    dst_host TEXT NOT NULL, dst_path BLOB NOT NULL,
    options TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    started_at REAL NOT NULL DEFAULT 0, finished_at REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    error TEXT NOT NULL DEFAULT '', wait_reason TEXT NOT NULL DEFAULT '',
    progress TEXT NOT NULL DEFAULT '{}', next_attempt_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL REFERENCES jobs(id), number INTEGER NOT NULL,
    started_at REAL NOT NULL, ended_at REAL NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '', stats TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (job_id, number)
);
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY, info TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL
);
"""),
    ("4e018c0", 1, "the explain history (decisions) added without a version bump", """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    src_host TEXT NOT NULL, src_path BLOB NOT NULL,
    dst_host TEXT NOT NULL, dst_path BLOB NOT NULL,
    options TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    started_at REAL NOT NULL DEFAULT 0, finished_at REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    error TEXT NOT NULL DEFAULT '', wait_reason TEXT NOT NULL DEFAULT '',
    progress TEXT NOT NULL DEFAULT '{}', next_attempt_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL REFERENCES jobs(id), number INTEGER NOT NULL,
    started_at REAL NOT NULL, ended_at REAL NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '', stats TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (job_id, number)
);
CREATE TABLE IF NOT EXISTS decisions (
    job_id INTEGER NOT NULL REFERENCES jobs(id), at REAL NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS decisions_job ON decisions(job_id);
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY, info TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL
);
"""),
    ("8b70515", 2, "fan-out groups, attempt sources", """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    src_host TEXT NOT NULL, src_path BLOB NOT NULL,
    dst_host TEXT NOT NULL, dst_path BLOB NOT NULL,
    options TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    started_at REAL NOT NULL DEFAULT 0, finished_at REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    error TEXT NOT NULL DEFAULT '', wait_reason TEXT NOT NULL DEFAULT '',
    progress TEXT NOT NULL DEFAULT '{}', next_attempt_at REAL NOT NULL DEFAULT 0,
    group_id INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL REFERENCES jobs(id), number INTEGER NOT NULL,
    started_at REAL NOT NULL, ended_at REAL NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '', stats TEXT NOT NULL DEFAULT '{}', source BLOB NOT NULL DEFAULT x'',
    PRIMARY KEY (job_id, number)
);
CREATE TABLE IF NOT EXISTS decisions (
    job_id INTEGER NOT NULL REFERENCES jobs(id), at REAL NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS decisions_job ON decisions(job_id);
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY, info TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL
);
"""),
    ("30300c3", 3, "job priorities", """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    src_host TEXT NOT NULL, src_path BLOB NOT NULL,
    dst_host TEXT NOT NULL, dst_path BLOB NOT NULL,
    options TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    started_at REAL NOT NULL DEFAULT 0, finished_at REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    error TEXT NOT NULL DEFAULT '', wait_reason TEXT NOT NULL DEFAULT '',
    progress TEXT NOT NULL DEFAULT '{}', next_attempt_at REAL NOT NULL DEFAULT 0,
    group_id INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL REFERENCES jobs(id), number INTEGER NOT NULL,
    started_at REAL NOT NULL, ended_at REAL NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '', stats TEXT NOT NULL DEFAULT '{}', source BLOB NOT NULL DEFAULT x'',
    PRIMARY KEY (job_id, number)
);
CREATE TABLE IF NOT EXISTS decisions (
    job_id INTEGER NOT NULL REFERENCES jobs(id), at REAL NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS decisions_job ON decisions(job_id);
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY, info TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL
);
"""),
    ("48c741b", 4, "skipped entries", """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    src_host TEXT NOT NULL, src_path BLOB NOT NULL,
    dst_host TEXT NOT NULL, dst_path BLOB NOT NULL,
    options TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    started_at REAL NOT NULL DEFAULT 0, finished_at REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    error TEXT NOT NULL DEFAULT '', wait_reason TEXT NOT NULL DEFAULT '',
    progress TEXT NOT NULL DEFAULT '{}', next_attempt_at REAL NOT NULL DEFAULT 0,
    group_id INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL REFERENCES jobs(id), number INTEGER NOT NULL,
    started_at REAL NOT NULL, ended_at REAL NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '', stats TEXT NOT NULL DEFAULT '{}', source BLOB NOT NULL DEFAULT x'',
    PRIMARY KEY (job_id, number)
);
CREATE TABLE IF NOT EXISTS decisions (
    job_id INTEGER NOT NULL REFERENCES jobs(id), at REAL NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS decisions_job ON decisions(job_id);
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY, info TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS skipped (
    job_id INTEGER NOT NULL REFERENCES jobs(id), attempt INTEGER NOT NULL, seq INTEGER NOT NULL,
    path BLOB NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)
);
"""),
    ("896573f", 5, "files that could not be copied (skipped.error)", """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    src_host TEXT NOT NULL, src_path BLOB NOT NULL,
    dst_host TEXT NOT NULL, dst_path BLOB NOT NULL,
    options TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    started_at REAL NOT NULL DEFAULT 0, finished_at REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    error TEXT NOT NULL DEFAULT '', wait_reason TEXT NOT NULL DEFAULT '',
    progress TEXT NOT NULL DEFAULT '{}', next_attempt_at REAL NOT NULL DEFAULT 0,
    group_id INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL REFERENCES jobs(id), number INTEGER NOT NULL,
    started_at REAL NOT NULL, ended_at REAL NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '', stats TEXT NOT NULL DEFAULT '{}', source BLOB NOT NULL DEFAULT x'',
    PRIMARY KEY (job_id, number)
);
CREATE TABLE IF NOT EXISTS decisions (
    job_id INTEGER NOT NULL REFERENCES jobs(id), at REAL NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS decisions_job ON decisions(job_id);
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY, info TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS skipped (
    job_id INTEGER NOT NULL REFERENCES jobs(id), attempt INTEGER NOT NULL, seq INTEGER NOT NULL,
    path BLOB NOT NULL, reason TEXT NOT NULL, error INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, attempt, seq)
);
"""),
]

# Tables later controllers added to a schema-4 database without a version bump (watch rules, then TLS enrolment).
SYNCS_AC9E2A6 = """
CREATE TABLE IF NOT EXISTS syncs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    src_host TEXT NOT NULL, src_path BLOB NOT NULL,
    dsts TEXT NOT NULL,
    options TEXT NOT NULL,
    created_at REAL NOT NULL,
    window REAL NOT NULL, quiet REAL NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0,
    counters TEXT NOT NULL DEFAULT '{}',
    last_error TEXT NOT NULL DEFAULT '', last_error_at REAL NOT NULL DEFAULT 0
);
"""
PKI_7D35674 = """
CREATE TABLE IF NOT EXISTS join_tokens (
    digest BLOB PRIMARY KEY, agent TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL,
    used_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS issued_certs (
    serial TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, issued_at REAL NOT NULL,
    not_after REAL NOT NULL, revoked_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS issued_certs_name ON issued_certs(name);
"""
# What each version's controller wrote as a job's options (v1: asdict of its four fields; v2+ added more).
OPTIONS = {1: '{"delete": true, "checksum": false, "bwlimit": 0, "max_attempts": 0}',
           2: '{"delete": true, "checksum": false, "bwlimit": 0, "max_attempts": 0, "streams": 0,'
              ' "durability": "file", "xattrs": false}'}
SRC, DST = Endpoint("hostA", b"/srv/a\xff"), Endpoint("hostB", b"/b")


def _old_state_dir(state_dir: Path, version: int, ddl: str, extra: str = "") -> None:
    """A database exactly as the older controller left it: its schema, its version, a finished job with an
    attempt, an agent (and an explain record when that table existed)."""
    state_dir.mkdir(parents=True)
    db = sqlite3.connect(state_dir / "controller.sqlite3")
    try:
        db.executescript(ddl + extra)
        db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(version),))
        db.execute("INSERT INTO jobs (state, src_host, src_path, dst_host, dst_path, options, created_at, updated_at,"
                   " attempts, max_attempts) VALUES ('done', ?, ?, ?, ?, ?, 5.0, 6.0, 1, 3)",
                   (SRC.host, SRC.path, DST.host, DST.path, OPTIONS[min(version, 2)]))
        db.execute("INSERT INTO attempts (job_id, number, started_at, ended_at) VALUES (1, 1, 5.0, 6.0)")
        db.execute("INSERT INTO agents VALUES ('hostA', '{\"name\": \"hostA\"}', 1.0, 2.0)")
        if "decisions" in ddl:
            db.execute("INSERT INTO decisions (job_id, at, kind, reason) VALUES (1, 5.0, 'start', 'old reason')")
        db.commit()
    finally:
        db.close()


def _shape(store: Store) -> dict[str, list[tuple[object, ...]]]:
    def read() -> dict[str, list[tuple[object, ...]]]:
        tables = [r[0] for r in store.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name").fetchall()]
        return {t: [tuple(c[1:]) for c in store.db.execute(f"PRAGMA table_info({t})").fetchall()] for t in tables}
    return store.run(read)


@pytest.fixture
def fresh_shape(tmp_path: Path) -> dict[str, list[tuple[object, ...]]]:
    s = open_store("", str(tmp_path / "fresh"))
    try:
        return _shape(s)
    finally:
        s.close()


@pytest.mark.parametrize(("commit", "version", "what", "ddl"), HISTORY, ids=[f"v{v}-{c}" for c, v, _, _ in HISTORY])
def test_every_older_sqlite_schema_opens_keeps_its_data_and_ends_like_a_new_one(
        tmp_path: Path, fresh_shape: dict[str, list[tuple[object, ...]]], commit: str, version: int, what: str,
        ddl: str) -> None:
    state = tmp_path / "state"
    _old_state_dir(state, version, ddl)
    s = open_store("", str(state))
    try:
        assert _shape(s) == fresh_shape
        assert s.run(lambda: s.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()) == (
            str(latest("sqlite")),)
        old = s.get_job(1)
        assert old is not None and (old.state, old.source, old.destination) == (JobState.DONE, SRC, DST)
        assert old.options.delete and old.options.priority is Priority.NORMAL and old.group_id == 0
        assert old.options.durability is (Durability.FILE if version >= 2 else Durability.JOB)
        assert old.history == (Attempt(1, 5.0, 6.0),)
        assert list(s.agents()) == ["hostA"]
        assert s.decisions(1) == ([(5.0, "start", "old reason")] if "decisions" in ddl else [])
        # What the newer controller writes works on the migrated database and survives a reopen.
        new = s.create_job(SRC, DST, JobOptions(priority=Priority.HIGH), 3, 10.0)
        assert new.id == 2
        s.start_attempt(new.id, 1, 11.0, b"hostC:/copy")
        s.save_skipped(new.id, 1, [Skipped(b"dev", "device")])
        s.add_decision(new.id, 11.0, "start", "new reason")
        rule = WatchRuleStore(s).create(SRC, (DST,), WatchRule(0, SRC, (DST,), JobOptions(delete=True)))
        asyncio.run(PkiStore(s).add_token("secret", "hostR", 1.0, 2.0))
    finally:
        s.close()
    s = open_store("", str(state))
    try:
        again = s.get_job(new.id)
        assert again is not None and again.options.priority is Priority.HIGH
        assert again.history == (Attempt(1, 11.0, source=b"hostC:/copy"),)
        assert s.decisions(new.id) == [(11.0, "start", "new reason")]
        assert [r.id for r in WatchRuleStore(s).all()] == [rule.id]
    finally:
        s.close()


def test_a_schema_4_database_with_watch_rules_and_tokens_keeps_them(tmp_path: Path) -> None:
    """Controllers after 48c741b added the syncs and enrolment tables to schema 4 without a bump."""
    state = tmp_path / "state"
    (v4,) = [ddl for commit, _, _, ddl in HISTORY if commit == "48c741b"]
    _old_state_dir(state, 4, v4, SYNCS_AC9E2A6 + PKI_7D35674)
    db = sqlite3.connect(state / "controller.sqlite3")
    try:
        db.execute("INSERT INTO syncs (state, src_host, src_path, dsts, options, created_at, window, quiet, epoch,"
                   " counters) VALUES ('paused', 'hostA', x'2f73', '[[\"hostB\", \"/d\"]]', ?, 1.0, 0.05, 0.5, 7,"
                   " '{\"sessions\": 3}')", (OPTIONS[2],))
        db.commit()
    finally:
        db.close()
    s = open_store("", str(state))
    try:
        syncs = WatchRuleStore(s)
        (rule,) = syncs.all()
        assert (rule.state, rule.window, rule.counters) == (WatchState.PAUSED, 0.05, WatchCounters(sessions=3))
        assert syncs.next_epoch(rule.id) == 8  # the stored epoch goes on, never repeats
    finally:
        s.close()


def test_the_steps_are_numbered_without_gaps() -> None:
    for dialect, steps in STEPS.items():
        assert sorted(steps) == list(range(1, latest(dialect) + 1)), dialect


def test_postgres_starts_at_the_current_shape_and_a_second_run_changes_nothing(pg_url: str, tmp_path: Path) -> None:
    s = open_store(pg_url, str(tmp_path))
    try:
        assert s.run(migrate, s.db) == (latest("postgres"), latest("postgres"))  # already done by open_store
        tables = s.run(lambda: sorted(r[0] for r in s.db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema='public'").fetchall()))
        assert tables == ["agents", "attempts", "decisions", "issued_certs", "jobs", "join_tokens", "meta", "plan",
                          "requests", "schedules", "skipped", "syncs"]
    finally:
        s.close()


def test_a_database_url_of_another_kind_is_refused_in_one_sentence(tmp_path: Path) -> None:
    from zcrepl.core.config import ControllerConfig, load_config
    from zcrepl.core.errors import ConfigError

    refusal = re.escape("store mysql://...: give a SQLite file path or a postgresql:// URL")
    with pytest.raises(ConfigError, match=refusal):
        load_config(ControllerConfig, flags={"store": "mysql://u@h/db", "insecure": True}, environ={})
    cfg = load_config(ControllerConfig, environ={"ZC_STORE": "postgresql://zc@db/zc", "ZC_INSECURE": "1"})
    assert cfg.store == "postgresql://zc@db/zc"
    assert not os.path.exists(tmp_path / "state")


def test_an_unreachable_postgres_is_refused_in_one_sentence_naming_why(pg_server: Any) -> None:
    from zcrepl.controller.store_pg import PgDb

    url = pg_server.url("no_such_db").replace("postgresql://", "postgresql://postgres:secret@")
    with pytest.raises(RuntimeError) as caught:
        PgDb(url, open_timeout=0.5)
    why = str(caught.value)
    assert why.startswith("cannot reach PostgreSQL at postgresql://postgres:***@/no_such_db?host=")
    assert '"no_such_db" does not exist' in why and "then start zc-controller again" in why
    assert "secret" not in why
