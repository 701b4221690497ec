"""Durable controller state in SQLite (WAL): jobs, their attempts, and every agent ever registered.

All calls come from the controller's event-loop thread; each write is one short transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import asdict
from pathlib import Path

from zcrepl.core.types import (
    AgentInfo,
    Attempt,
    Durability,
    Endpoint,
    Job,
    JobOptions,
    JobState,
    PlanItem,
    Priority,
    Skipped,
    TransferStats,
)

SCHEMA_VERSION = 5
_SCHEMA = """
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
CREATE TABLE IF NOT EXISTS plan (
    job_id INTEGER NOT NULL REFERENCES jobs(id), attempt INTEGER NOT NULL, seq INTEGER NOT NULL,
    path BLOB NOT NULL, change TEXT NOT NULL, kind TEXT NOT NULL, why TEXT NOT NULL, size INTEGER NOT NULL,
    target BLOB NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)
);
"""


def _options_json(o: JobOptions) -> str:
    # The priority has its own column (a later "change priority" is one UPDATE, and it can be queried).
    doc = {k: v for k, v in asdict(o).items() if k != "priority"}
    # Paths are bytes: kept as str with surrogate escapes (JSON writes them as \udcXX), any byte survives.
    doc["backup_dir"] = _path_text(o.backup_dir)
    doc["link_dest"] = [_path_text(p) for p in o.link_dest]
    return json.dumps({**doc, "durability": o.durability.value})


def _path_text(p: bytes) -> str:
    return p.decode("utf-8", "surrogateescape")


def _options(text: str, priority: int) -> JobOptions:
    doc = json.loads(text)
    doc["durability"] = Durability(doc.get("durability", Durability.JOB.value))
    doc["filters"] = tuple(doc.get("filters", ()))  # JSON gives a list
    doc["backup_dir"] = doc.get("backup_dir", "").encode("utf-8", "surrogateescape")
    doc["link_dest"] = tuple(p.encode("utf-8", "surrogateescape") for p in doc.get("link_dest", ()))
    return JobOptions(**doc, priority=Priority(priority))


def _stats_json(s: TransferStats) -> str:
    return json.dumps(asdict(s), separators=(",", ":"))


def _stats(text: str) -> TransferStats:
    return TransferStats(**json.loads(text or "{}"))


class Store:
    def __init__(self, state_dir: str) -> None:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        self.path = os.path.join(state_dir, "controller.sqlite3")
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            has_meta = self.db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
            row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() if has_meta else None
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} was written by a newer zc-controller (schema {row[0]}); "
                                   "upgrade zc-controller or point --state-dir elsewhere")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(_SCHEMA)
            self._migrate()
            if row is None:
                self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            else:
                self.db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
        except BaseException:
            self.db.close()
            raise

    def _migrate(self) -> None:
        """Additive columns with defaults, so a state dir written by an older controller opens as it was.

        Schema 1 -> 2: fan-out groups and the source each attempt read from. 2 -> 3: job priority (existing
        jobs are normal, the column default, which is also what an older submit meant). 3 -> 4: the ``skipped``
        table (created by the schema script) and ``entries_skipped`` in stored stats (absent reads as 0; an
        older controller would choke on it, hence the version). 4 -> 5: ``error`` on skipped entries (a file
        that could not be copied), the ``plan`` table (a dry run's items), and ``file_errors`` and the plan, link
        and backup counters in stored stats (the same reasoning).
        """
        for table, column, decl in (("jobs", "group_id", "INTEGER NOT NULL DEFAULT 0"),
                                    ("attempts", "source", "BLOB NOT NULL DEFAULT x''"),
                                    ("jobs", "priority", f"INTEGER NOT NULL DEFAULT {int(Priority.NORMAL)}"),
                                    ("skipped", "error", "INTEGER NOT NULL DEFAULT 0")):
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def close(self) -> None:
        self.db.close()

    # -- jobs ---------------------------------------------------------------------------------------
    def create_job(self, src: Endpoint, dst: Endpoint, options: JobOptions, max_attempts: int, now: float) -> Job:
        cur = self.db.execute(
            "INSERT INTO jobs (state, src_host, src_path, dst_host, dst_path, options, created_at, updated_at,"
            " max_attempts, priority) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (JobState.QUEUED.value, src.host, src.path, dst.host, dst.path, _options_json(options),
             now, now, max_attempts, int(options.priority)),
        )
        job = self.get_job(int(cur.lastrowid or 0))
        assert job is not None
        return job

    def save_job(self, job: Job) -> None:
        """Persist the mutable fields of a job (never its endpoints or options)."""
        self.db.execute(
            "UPDATE jobs SET state=?, updated_at=?, started_at=?, finished_at=?, attempts=?, failures=?,"
            " max_attempts=?, error=?, wait_reason=?, progress=?, next_attempt_at=? WHERE id=?",
            (job.state.value, job.updated_at, job.started_at, job.finished_at, job.attempts, job.failures,
             job.max_attempts, job.error, job.wait_reason, _stats_json(job.progress), job.next_attempt_at,
             job.id),
        )

    def start_attempt(self, job_id: int, number: int, now: float, source: bytes = b"") -> None:
        self.db.execute("INSERT OR REPLACE INTO attempts (job_id, number, started_at, source) VALUES (?,?,?,?)",
                        (job_id, number, now, source))

    def set_group(self, job_ids: list[int], group_id: int) -> None:
        self.db.executemany("UPDATE jobs SET group_id=? WHERE id=?", [(group_id, j) for j in job_ids])

    def end_attempt(self, job_id: int, number: int, now: float, error: str, stats: TransferStats) -> None:
        self.db.execute("UPDATE attempts SET ended_at=?, error=?, stats=? WHERE job_id=? AND number=?",
                        (now, error, _stats_json(stats), job_id, number))

    def save_skipped(self, job_id: int, attempt: int, items: list[Skipped]) -> None:
        """The entries an attempt left out and the files it could not copy (the first ones; the attempt's stats
        count them all)."""
        self.db.executemany("INSERT OR REPLACE INTO skipped (job_id, attempt, seq, path, reason, error) "
                            "VALUES (?,?,?,?,?,?)",
                            [(job_id, attempt, i, x.path, x.reason, int(x.error)) for i, x in enumerate(items)])

    def save_plan(self, job_id: int, attempt: int, items: list[PlanItem]) -> None:
        """A dry run's plan (the first items; the attempt's stats count them all)."""
        self.db.executemany(
            "INSERT OR REPLACE INTO plan (job_id, attempt, seq, path, change, kind, why, size, target)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            [(job_id, attempt, i, x.path, x.change, x.kind, ",".join(x.why), x.size, x.target)
             for i, x in enumerate(items)])

    def _plan(self, job_id: int, attempt: int) -> tuple[PlanItem, ...]:
        rows = self.db.execute("SELECT path, change, kind, why, size, target FROM plan WHERE job_id=? AND attempt=?"
                               " ORDER BY seq", (job_id, attempt)).fetchall()
        return tuple(PlanItem(bytes(p), c, k, tuple(w.split(",")) if w else (), n, bytes(t))
                     for p, c, k, w, n, t in rows)

    def _skipped(self, job_id: int, attempt: int) -> tuple[Skipped, ...]:
        rows = self.db.execute("SELECT path, reason, error FROM skipped WHERE job_id=? AND attempt=? ORDER BY seq",
                               (job_id, attempt)).fetchall()
        return tuple(Skipped(bytes(p), r, bool(e)) for p, r, e in rows)

    def get_job(self, job_id: int) -> Job | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def list_jobs(self, states: tuple[JobState, ...] = (), limit: int = 0, group_id: int = 0) -> list[Job]:
        sql = "SELECT * FROM jobs"
        where: list[str] = []
        args: list[object] = []
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += [s.value for s in states]
        if group_id:
            where.append("group_id = ?")
            args.append(group_id)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC"
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        return [self._job(r) for r in self.db.execute(sql, args).fetchall()]

    def job_counts(self) -> dict[JobState, int]:
        """How many jobs are in each state (read through the jobs_state index)."""
        return {JobState(s): n for s, n in self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")}

    def recover_interrupted(self, now: float) -> list[int]:
        """After a restart: running jobs go back to the queue; their open attempt is closed, not counted."""
        ids = [r[0] for r in self.db.execute("SELECT id FROM jobs WHERE state='running'").fetchall()]
        for job_id in ids:
            self.db.execute("UPDATE attempts SET ended_at=?, error=? WHERE job_id=? AND ended_at=0",
                            (now, "interrupted: the controller restarted", job_id))
            self.db.execute("UPDATE jobs SET state='queued', updated_at=?, wait_reason=? WHERE id=?",
                            (now, "requeued after a controller restart", job_id))
        return ids

    def _attempts(self, job_id: int) -> tuple[Attempt, ...]:
        rows = self.db.execute(
            "SELECT number, started_at, ended_at, error, stats, source FROM attempts WHERE job_id=? ORDER BY number",
            (job_id,)).fetchall()
        return tuple(Attempt(n, s, e, err, _stats(st), bytes(src)) for n, s, e, err, st, src in rows)

    def _job(self, row: tuple) -> Job:  # type: ignore[type-arg]
        (jid, state, sh, sp, dh, dp, opts, created, updated, started, finished, attempts, failures,
         max_attempts, error, wait_reason, progress, next_at, group_id, priority) = row
        options = _options(opts, priority)
        return Job(
            id=jid, state=JobState(state), source=Endpoint(sh, bytes(sp)), destination=Endpoint(dh, bytes(dp)),
            options=options, created_at=created, updated_at=updated,
            started_at=started, finished_at=finished, attempts=attempts, failures=failures,
            max_attempts=max_attempts, error=error, wait_reason=wait_reason, progress=_stats(progress),
            history=self._attempts(jid), next_attempt_at=next_at, group_id=group_id,
            skipped=self._skipped(jid, attempts) if attempts else (),
            plan=self._plan(jid, attempts) if attempts and options.dry_run else (),
        )

    # -- decisions (the explain history) ---------------------------------------------------------------
    def add_decision(self, job_id: int, at: float, kind: str, reason: str, details: str = "{}") -> None:
        self.db.execute("INSERT INTO decisions (job_id, at, kind, reason, details) VALUES (?,?,?,?,?)",
                        (job_id, at, kind, reason, details))

    def decisions(self, job_id: int) -> list[tuple[float, str, str]]:
        return [(at, kind, reason) for at, kind, reason in self.db.execute(
            "SELECT at, kind, reason FROM decisions WHERE job_id=? ORDER BY rowid", (job_id,)).fetchall()]

    # -- agents -------------------------------------------------------------------------------------
    def upsert_agent(self, info: AgentInfo, now: float) -> None:
        doc = json.dumps({**asdict(info), "exports": [os.fsdecode(e) for e in info.exports]})
        self.db.execute(
            "INSERT INTO agents (name, info, first_seen, last_seen) VALUES (?,?,?,?)"
            " ON CONFLICT(name) DO UPDATE SET info=excluded.info, last_seen=excluded.last_seen",
            (info.name, doc, now, now),
        )

    def remove_agent(self, name: str) -> None:
        self.db.execute("DELETE FROM agents WHERE name=?", (name,))

    def touch_agent(self, name: str, now: float) -> None:
        self.db.execute("UPDATE agents SET last_seen=? WHERE name=?", (now, name))

    def agents(self) -> dict[str, tuple[AgentInfo, float]]:
        out = {}
        for name, doc, last_seen in self.db.execute("SELECT name, info, last_seen FROM agents").fetchall():
            d = json.loads(doc)
            d["exports"] = tuple(os.fsencode(e) for e in d.get("exports", ()))
            d["source_addresses"] = tuple(d.get("source_addresses", ()))
            out[name] = (AgentInfo(**d), last_seen)
        return out

