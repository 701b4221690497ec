"""Versioned schema steps, one ordered list per dialect, run at start-up in one transaction.

The version lives where controllers before this file kept it (``meta``, key ``schema``), so an older
zc-controller meeting a newer database refuses it in a sentence instead of misreading it. SQLite's steps 1-4
are the schemas those controllers created (1: jobs, attempts, agents; 2: fan-out groups and attempt sources;
3: priorities; 4: skipped entries; 5: files that could not be copied, among the skipped entries); step 6 adds
what they created without a version bump (decisions, watch rules, join tokens, issued certificates) when
missing; step 7 adds a dry run's plan; step 8 schedules, and the schedule that queued each job; step 9
the request ids of writes. PostgreSQL's step 1 is the shape of the first controller that could use it (no
older PostgreSQL database exists); later steps follow the SQLite ones.
"""

from __future__ import annotations

from zcrepl.controller.store_sql import Db
from zcrepl.core.types import Priority

_SQLITE: dict[int, str] = {
    1: """
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
""",
    2: """
ALTER TABLE jobs ADD COLUMN group_id INTEGER NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN source BLOB NOT NULL DEFAULT x'';
""",
    # Existing jobs are normal, the column default, which is also what an older submit meant.
    3: f"ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT {int(Priority.NORMAL)};",
    4: """
CREATE TABLE IF NOT EXISTS skipped (
    job_id INTEGER NOT NULL REFERENCES jobs(id), attempt INTEGER NOT NULL, seq INTEGER NOT NULL,
    path BLOB NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)
);
""",
    # A file that should have been copied and was not (unreadable, changed while read) is kept with the skipped
    # entries, marked; stored stats gain file_errors (absent reads as 0).
    5: "ALTER TABLE skipped ADD COLUMN error INTEGER NOT NULL DEFAULT 0;",
    6: """
CREATE TABLE IF NOT EXISTS decisions (
    job_id INTEGER NOT NULL REFERENCES jobs(id), at REAL NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS decisions_job ON decisions(job_id);
CREATE TABLE IF NOT EXISTS syncs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    src_host TEXT NOT NULL, src_path BLOB NOT NULL,
    dsts TEXT NOT NULL,
    options TEXT NOT NULL,
    created_at REAL NOT NULL,
    "window" REAL NOT NULL, quiet REAL NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0,
    counters TEXT NOT NULL DEFAULT '{}',
    last_error TEXT NOT NULL DEFAULT '', last_error_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS join_tokens (
    digest BLOB PRIMARY KEY, agent TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL,
    used_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS issued_certs (
    serial TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, issued_at REAL NOT NULL,
    not_after REAL NOT NULL, revoked_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS issued_certs_name ON issued_certs(name);
""",
    # A dry run's plan (issue 12): its first items, per attempt.
    7: """
CREATE TABLE IF NOT EXISTS plan (
    job_id INTEGER NOT NULL REFERENCES jobs(id), attempt INTEGER NOT NULL, seq INTEGER NOT NULL,
    path BLOB NOT NULL, change TEXT NOT NULL, kind TEXT NOT NULL, why TEXT NOT NULL, size INTEGER NOT NULL,
    target BLOB NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)
);
""",
    # Schedules (issue 12): a rule that queues an ordinary job when due; each job names the schedule that queued it.
    8: """
ALTER TABLE jobs ADD COLUMN schedule_id INTEGER NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS schedules (
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    src_host TEXT NOT NULL, src_path BLOB NOT NULL,
    dst_host TEXT NOT NULL, dst_path BLOB NOT NULL,
    options TEXT NOT NULL, priority INTEGER NOT NULL,
    cron TEXT NOT NULL DEFAULT '', every_seconds REAL NOT NULL DEFAULT 0, tz TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL, next_due REAL NOT NULL DEFAULT 0,
    runs INTEGER NOT NULL DEFAULT 0, last_job_id INTEGER NOT NULL DEFAULT 0, last_run_at REAL NOT NULL DEFAULT 0,
    skips INTEGER NOT NULL DEFAULT 0, last_skip_at REAL NOT NULL DEFAULT 0, last_skip TEXT NOT NULL DEFAULT '',
    last_error TEXT NOT NULL DEFAULT '', last_error_at REAL NOT NULL DEFAULT 0
);
""",
    # Request ids of writes (issue 15): a zc-ctl retry after a failover finds what the first call made.
    9: """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT NOT NULL, kind TEXT NOT NULL, ref INTEGER NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (request_id, kind, ref)
);
""",
}

# PostgreSQL's REAL is 4 bytes: times are DOUBLE PRECISION. Ids are handed out by the controller (store.py), so
# they are plain BIGINT keys; decisions get an identity column to keep their order.
_POSTGRES: dict[int, str] = {
    1: f"""
CREATE TABLE jobs (
    id BIGINT PRIMARY KEY,
    state TEXT NOT NULL,
    src_host TEXT NOT NULL, src_path BYTEA NOT NULL,
    dst_host TEXT NOT NULL, dst_path BYTEA NOT NULL,
    options TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION NOT NULL DEFAULT 0, finished_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    error TEXT NOT NULL DEFAULT '', wait_reason TEXT NOT NULL DEFAULT '',
    progress TEXT NOT NULL DEFAULT '{{}}', next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    group_id BIGINT NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT {int(Priority.NORMAL)}
);
CREATE INDEX jobs_state ON jobs(state);
CREATE INDEX jobs_group ON jobs(group_id) WHERE group_id <> 0;
CREATE TABLE attempts (
    job_id BIGINT NOT NULL REFERENCES jobs(id), number INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL, ended_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '', stats TEXT NOT NULL DEFAULT '{{}}', source BYTEA NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, number)
);
CREATE TABLE decisions (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id BIGINT NOT NULL REFERENCES jobs(id), at DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL,
    reason TEXT NOT NULL, details TEXT NOT NULL DEFAULT '{{}}'
);
CREATE INDEX decisions_job ON decisions(job_id);
CREATE TABLE agents (
    name TEXT PRIMARY KEY, info TEXT NOT NULL, first_seen DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL
);
CREATE TABLE skipped (
    job_id BIGINT NOT NULL REFERENCES jobs(id), attempt INTEGER NOT NULL, seq INTEGER NOT NULL,
    path BYTEA NOT NULL, reason TEXT NOT NULL, error INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, attempt, seq)
);
CREATE TABLE syncs (
    id BIGINT PRIMARY KEY,
    state TEXT NOT NULL,
    src_host TEXT NOT NULL, src_path BYTEA NOT NULL,
    dsts TEXT NOT NULL,
    options TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    "window" DOUBLE PRECISION NOT NULL, quiet DOUBLE PRECISION NOT NULL,
    epoch BIGINT NOT NULL DEFAULT 0,
    counters TEXT NOT NULL DEFAULT '{{}}',
    last_error TEXT NOT NULL DEFAULT '', last_error_at DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE TABLE join_tokens (
    digest BYTEA PRIMARY KEY, agent TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL, used_at DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE TABLE issued_certs (
    serial TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, issued_at DOUBLE PRECISION NOT NULL,
    not_after DOUBLE PRECISION NOT NULL, revoked_at DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE INDEX issued_certs_name ON issued_certs(name);
""",
    2: """
CREATE TABLE plan (
    job_id BIGINT NOT NULL REFERENCES jobs(id), attempt INTEGER NOT NULL, seq INTEGER NOT NULL,
    path BYTEA NOT NULL, change TEXT NOT NULL, kind TEXT NOT NULL, why TEXT NOT NULL, size BIGINT NOT NULL,
    target BYTEA NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)
);
""",
    3: """
ALTER TABLE jobs ADD COLUMN schedule_id BIGINT NOT NULL DEFAULT 0;
CREATE TABLE schedules (
    id BIGINT PRIMARY KEY,
    state TEXT NOT NULL,
    src_host TEXT NOT NULL, src_path BYTEA NOT NULL,
    dst_host TEXT NOT NULL, dst_path BYTEA NOT NULL,
    options TEXT NOT NULL, priority INTEGER NOT NULL,
    cron TEXT NOT NULL DEFAULT '', every_seconds DOUBLE PRECISION NOT NULL DEFAULT 0, tz TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL, next_due DOUBLE PRECISION NOT NULL DEFAULT 0,
    runs BIGINT NOT NULL DEFAULT 0, last_job_id BIGINT NOT NULL DEFAULT 0,
    last_run_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    skips BIGINT NOT NULL DEFAULT 0, last_skip_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_skip TEXT NOT NULL DEFAULT '',
    last_error TEXT NOT NULL DEFAULT '', last_error_at DOUBLE PRECISION NOT NULL DEFAULT 0
);
""",
    # SQLite's step 9.
    4: """
CREATE TABLE requests (
    request_id TEXT NOT NULL, kind TEXT NOT NULL, ref BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (request_id, kind, ref)
);
""",
}

STEPS: dict[str, dict[int, str]] = {"sqlite": _SQLITE, "postgres": _POSTGRES}


def latest(dialect: str) -> int:
    return max(STEPS[dialect])


def version(db: Db) -> int:
    """The schema version recorded in the database; 0 for an empty one."""
    if db.dialect == "postgres":
        have = db.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]
    else:
        have = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() is not None
    row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() if have else None
    return int(row[0]) if row else 0


def migrate(db: Db) -> tuple[int, int]:
    """Bring the schema to the latest version in one transaction; (version found, version now)."""
    steps = STEPS[db.dialect]
    with db.transaction():
        if db.dialect == "postgres":
            # Controllers starting together on one database take turns: the first migrates, the others see it done.
            db.execute("SELECT pg_advisory_xact_lock(7420)")
        found = version(db)
        if found > latest(db.dialect):
            raise RuntimeError(f"{db.where} was written by a newer zc-controller (schema {found}); upgrade "
                               "zc-controller or point --store elsewhere")
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for number in sorted(n for n in steps if n > found):
            for statement in steps[number].split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute("INSERT INTO meta (key, value) VALUES ('schema', ?) ON CONFLICT (key) DO UPDATE SET value=?",
                   (str(latest(db.dialect)), str(latest(db.dialect))))
    return found, latest(db.dialect)
