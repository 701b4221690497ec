"""The controller's SQL, written once for both backends (SQLite and PostgreSQL).

Statements use ``?`` placeholders (a PostgreSQL connection rewrites them) and only syntax both dialects share:
``INSERT .. ON CONFLICT .. DO UPDATE``, ``RETURNING``, quoted identifiers. What differs (column types, the
schema steps, how a connection is opened and a transaction run) lives in the ``Db`` implementations and in
store_migrations.py. Everything here runs on the store's own thread (store.py), never on the event loop.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
from typing import Any, Protocol

from zcrepl.core.types import (
    AgentInfo,
    Attempt,
    Compress,
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


class Cursor(Protocol):
    """What a statement gives back: its rows. No ``rowcount``: PostgreSQL's statements are pipelined (store_pg.py)
    and a count is known only once the result is fetched; ask for rows with ``RETURNING`` instead."""

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Db(Protocol):
    """One connection's worth of SQL, used by one thread at a time."""

    dialect: str  # "sqlite" or "postgres": picks the migration steps
    where: str  # for messages: the file, or the URL without its password
    order_column: str  # a column that orders rows by insertion (SQLite's rowid; an identity column in PostgreSQL)

    def execute(self, sql: str, args: Sequence[object] = ()) -> Cursor: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None: ...
    # A write nobody reads the result of, which commutes with the batched writes of other statements (different
    # tables, rows that exist already): it may wait, with the others of its statement, until the next execute,
    # executemany or commit, and go out as one executemany then (writes of one statement keep their order).
    def batched(self, sql: str, args: Sequence[object]) -> None: ...
    def transaction(self) -> Any: ...  # a context manager: commit on success, roll back on error
    def transient(self, err: BaseException) -> bool: ...  # worth retrying (connection lost, database busy)
    def close(self) -> None: ...


class SqliteDb:
    dialect = "sqlite"
    order_column = "rowid"

    def __init__(self, path: str) -> None:
        self.where = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            # Not inside a transaction: SQLite refuses to change the journal mode there.
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            self.conn.close()
            raise

    def execute(self, sql: str, args: Sequence[object] = ()) -> Cursor:
        return self.conn.execute(sql, args)

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        self.conn.executemany(sql, rows)

    def batched(self, sql: str, args: Sequence[object]) -> None:
        self.conn.execute(sql, args)  # in-process: a statement costs no round trip

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def transient(self, err: BaseException) -> bool:
        return isinstance(err, sqlite3.OperationalError)  # locked, busy, disk full or I/O error

    def close(self) -> None:
        self.conn.close()


def path_text(p: bytes) -> str:
    """A path (bytes: any name Linux allows) as JSON-safe text: UTF-8 with surrogate escapes for the other bytes
    (JSON writes them as \\udcXX), so every byte survives; the one encoding of paths inside the store's JSON."""
    return p.decode("utf-8", "surrogateescape")


def text_path(t: str) -> bytes:
    return t.encode("utf-8", "surrogateescape")


def options_json(o: JobOptions) -> str:
    # The priority has its own column (a later "change priority" is one UPDATE, and it can be queried).
    doc = {k: v for k, v in asdict(o).items() if k != "priority"}
    doc["backup_dir"] = path_text(o.backup_dir)
    doc["link_dest"] = [path_text(p) for p in o.link_dest]
    return json.dumps({**doc, "durability": o.durability.value})


def options_from_json(text: str, priority: int = int(Priority.NORMAL)) -> JobOptions:
    doc = json.loads(text)
    doc.pop("priority", None)
    doc["durability"] = Durability(doc.get("durability", Durability.JOB.value))
    doc["filters"] = tuple(doc.get("filters", ()))  # JSON gives a list
    doc["backup_dir"] = text_path(doc.get("backup_dir", ""))
    doc["link_dest"] = tuple(text_path(p) for p in doc.get("link_dest", ()))
    doc["compress"] = Compress(doc.get("compress", Compress.AUTO))  # rows from before compression: auto
    return JobOptions(**doc, priority=Priority(priority))


_STATS_FIELDS = tuple(f.name for f in fields(TransferStats))


def _stats_json(s: TransferStats) -> str:
    # Not asdict(): its deep copy was a third of the store thread's time in a scheduling pass (every field is a
    # number, a bool or a string).
    return json.dumps({f: getattr(s, f) for f in _STATS_FIELDS}, separators=(",", ":"))


def _stats(text: str) -> TransferStats:
    return TransferStats(**json.loads(text or "{}"))


_JOB_COLS = ("id, state, src_host, src_path, dst_host, dst_path, options, created_at, updated_at, started_at,"
             " finished_at, attempts, failures, max_attempts, error, wait_reason, progress, next_attempt_at,"
             " group_id, priority, schedule_id")


class JobsSql:
    """Jobs, their attempts and skipped entries, the explain history and the agents ever registered."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def max_job_id(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()[0])

    def create_job(self, job: Job) -> None:
        self.db.execute(
            "INSERT INTO jobs (id, state, src_host, src_path, dst_host, dst_path, options, created_at, updated_at,"
            " max_attempts, priority) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (job.id, job.state.value, job.source.host, job.source.path, job.destination.host, job.destination.path,
             options_json(job.options), job.created_at, job.updated_at, job.max_attempts,
             int(job.options.priority)))

    def save_job(self, job: Job) -> None:
        """Persist the mutable fields of a job (never its endpoints or options)."""
        self.db.batched(
            "UPDATE jobs SET state=?, updated_at=?, started_at=?, finished_at=?, attempts=?, failures=?,"
            " max_attempts=?, error=?, wait_reason=?, progress=?, next_attempt_at=? WHERE id=?",
            (job.state.value, job.updated_at, job.started_at, job.finished_at, job.attempts, job.failures,
             job.max_attempts, job.error, job.wait_reason, _stats_json(job.progress), job.next_attempt_at,
             job.id))

    def start_attempt(self, job_id: int, number: int, now: float, source: bytes = b"") -> None:
        self.db.execute(
            "INSERT INTO attempts (job_id, number, started_at, source) VALUES (?,?,?,?) ON CONFLICT (job_id, number)"
            " DO UPDATE SET started_at=excluded.started_at, source=excluded.source, ended_at=0, error='', stats='{}'",
            (job_id, number, now, source))

    def set_group(self, job_ids: list[int], group_id: int) -> None:
        self.db.executemany("UPDATE jobs SET group_id=? WHERE id=?", [(group_id, j) for j in job_ids])

    def end_attempt(self, job_id: int, number: int, now: float, error: str, stats: TransferStats) -> None:
        self.db.execute("UPDATE attempts SET ended_at=?, error=?, stats=? WHERE job_id=? AND number=?",
                        (now, error, _stats_json(stats), job_id, number))

    def save_skipped(self, job_id: int, attempt: int, items: list[Skipped]) -> None:
        """The entries an attempt left out and the files it could not copy (the first ones; the attempt's stats
        count them all)."""
        if items:
            self.db.executemany(
                "INSERT INTO skipped (job_id, attempt, seq, path, reason, error) VALUES (?,?,?,?,?,?) ON CONFLICT"
                " (job_id, attempt, seq) DO UPDATE SET path=excluded.path, reason=excluded.reason,"
                " error=excluded.error",
                [(job_id, attempt, i, x.path, x.reason, int(x.error)) for i, x in enumerate(items)])

    def save_plan(self, job_id: int, attempt: int, items: list[PlanItem]) -> None:
        """A dry run's plan (the first items; the attempt's stats count them all)."""
        if items:
            self.db.executemany(
                "INSERT INTO plan (job_id, attempt, seq, path, change, kind, why, size, target)"
                " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (job_id, attempt, seq) DO UPDATE SET path=excluded.path,"
                " change=excluded.change, kind=excluded.kind, why=excluded.why, size=excluded.size,"
                " target=excluded.target",
                [(job_id, attempt, i, x.path, x.change, x.kind, ",".join(x.why), x.size, x.target)
                 for i, x in enumerate(items)])

    def _plan(self, job_id: int, attempt: int) -> tuple[PlanItem, ...]:
        rows = self.db.execute("SELECT path, change, kind, why, size, target FROM plan WHERE job_id=? AND attempt=?"
                               " ORDER BY seq", (job_id, attempt)).fetchall()
        return tuple(PlanItem(bytes(p), c, k, tuple(w.split(",")) if w else (), n, bytes(t))
                     for p, c, k, w, n, t in rows)

    def get_job(self, job_id: int) -> Job | None:
        row = self.db.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def list_jobs(self, states: tuple[JobState, ...] = (), limit: int = 0, group_id: int = 0) -> list[Job]:
        sql = f"SELECT {_JOB_COLS} FROM jobs"
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
        rows = self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {JobState(s): int(n) for s, n in rows}

    def recover_interrupted(self, now: float, keep: frozenset[int] = frozenset()) -> list[int]:
        """After a restart: running jobs (but those in ``keep``) go back to the queue; their open attempt is
        closed, not counted."""
        ids = [int(r[0]) for r in self.db.execute("SELECT id FROM jobs WHERE state='running' ORDER BY id").fetchall()
               if int(r[0]) not in keep]
        for job_id in ids:
            self.db.execute("UPDATE attempts SET ended_at=?, error=? WHERE job_id=? AND ended_at=0",
                            (now, "interrupted: the controller restarted", job_id))
            self.db.execute("UPDATE jobs SET state='queued', updated_at=?, wait_reason=? WHERE id=?",
                            (now, "requeued after a controller restart", job_id))
        return ids

    def open_attempts(self) -> list[tuple[int, int, bytes]]:
        """(job id, attempt, source as HOST:PATH) of every running job's attempt still open: what a new leader
        may find its agents still running."""
        rows = self.db.execute(
            "SELECT a.job_id, a.number, a.source FROM attempts a JOIN jobs j ON j.id = a.job_id "
            "WHERE j.state = 'running' AND a.ended_at = 0 AND a.number = j.attempts ORDER BY a.job_id").fetchall()
        return [(int(j), int(n), bytes(src)) for j, n, src in rows]

    def _attempts(self, job_id: int) -> tuple[Attempt, ...]:
        rows = self.db.execute(
            "SELECT number, started_at, ended_at, error, stats, source FROM attempts WHERE job_id=? ORDER BY number",
            (job_id,)).fetchall()
        return tuple(Attempt(n, s, e, err, _stats(st), bytes(src)) for n, s, e, err, st, src in rows)

    def _skipped(self, job_id: int, attempt: int) -> tuple[Skipped, ...]:
        rows = self.db.execute("SELECT path, reason, error FROM skipped WHERE job_id=? AND attempt=? ORDER BY seq",
                               (job_id, attempt)).fetchall()
        return tuple(Skipped(bytes(p), r, bool(e)) for p, r, e in rows)

    def _job(self, row: Sequence[Any]) -> Job:
        (jid, state, sh, sp, dh, dp, opts, created, updated, started, finished, attempts, failures,
         max_attempts, error, wait_reason, progress, next_at, group_id, priority, schedule_id) = row
        options = options_from_json(opts, priority)
        return Job(
            id=jid, state=JobState(state), source=Endpoint(sh, bytes(sp)), destination=Endpoint(dh, bytes(dp)),
            options=options, created_at=created, updated_at=updated,
            started_at=started, finished_at=finished, attempts=attempts, failures=failures,
            max_attempts=max_attempts, error=error, wait_reason=wait_reason, progress=_stats(progress),
            history=self._attempts(jid), next_attempt_at=next_at, group_id=group_id,
            skipped=self._skipped(jid, attempts) if attempts else (),
            plan=self._plan(jid, attempts) if attempts and options.dry_run else (), schedule_id=schedule_id,
        )

    # -- decisions (the explain history) ---------------------------------------------------------------
    def add_decision(self, job_id: int, at: float, kind: str, reason: str, details: str = "{}") -> None:
        self.db.batched("INSERT INTO decisions (job_id, at, kind, reason, details) VALUES (?,?,?,?,?)",
                        (job_id, at, kind, reason, details))

    def decisions(self, job_id: int) -> list[tuple[float, str, str]]:
        rows = self.db.execute(f"SELECT at, kind, reason FROM decisions WHERE job_id=? ORDER BY {self.db.order_column}",
                               (job_id,)).fetchall()
        return [(at, kind, reason) for at, kind, reason in rows]

    # -- agents -------------------------------------------------------------------------------------
    def upsert_agent(self, info: AgentInfo, now: float) -> None:
        doc = json.dumps({**asdict(info), "exports": [path_text(e) for e in info.exports]})
        self.db.execute(
            "INSERT INTO agents (name, info, first_seen, last_seen) VALUES (?,?,?,?)"
            " ON CONFLICT (name) DO UPDATE SET info=excluded.info, last_seen=excluded.last_seen",
            (info.name, doc, now, now))

    def remove_agent(self, name: str) -> None:
        self.db.execute("DELETE FROM agents WHERE name=?", (name,))

    def touch_agent(self, name: str, now: float) -> None:
        self.db.execute("UPDATE agents SET last_seen=? WHERE name=?", (now, name))

    def touch_agents(self, names: list[str], now: float) -> None:
        self.db.executemany("UPDATE agents SET last_seen=? WHERE name=?", [(now, n) for n in names])

    def agents(self) -> dict[str, tuple[AgentInfo, float]]:
        out = {}
        for name, doc, last_seen in self.db.execute("SELECT name, info, last_seen FROM agents").fetchall():
            d = json.loads(doc)
            d["exports"] = tuple(text_path(e) for e in d.get("exports", ()))
            d["source_addresses"] = tuple(d.get("source_addresses", ()))
            out[name] = (AgentInfo(**d), last_seen)
        return out
