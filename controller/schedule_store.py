"""Schedules in the controller's store (either backend; the table comes from store_migrations.py, step 8 on
SQLite and 3 on PostgreSQL).

``SchedulesSql`` runs on the store's thread; ``ScheduleStore`` is what the synchronous ``Schedules`` calls: writes
are queued, and ids are handed out here (the largest stored one plus one, read once at start-up), so nothing on the
event loop waits for the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from zcrepl.controller.store import Store
from zcrepl.controller.store_sql import Db, options_from_json, options_json
from zcrepl.core.schedtypes import Schedule, ScheduleState
from zcrepl.core.types import Endpoint

_COLS = ("id, state, src_host, src_path, dst_host, dst_path, options, priority, cron, every_seconds, tz, created_at,"
         " next_due, runs, last_job_id, last_run_at, skips, last_skip_at, last_skip, last_error, last_error_at")


class SchedulesSql:
    def __init__(self, db: Db) -> None:
        self.db = db

    def max_id(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(id), 0) FROM schedules").fetchone()[0])

    def save(self, s: Schedule) -> None:
        """Insert the schedule, or write every field but its definition (endpoints, options, timing)."""
        self.db.execute(
            f"INSERT INTO schedules ({_COLS}) VALUES ({','.join('?' * 21)}) ON CONFLICT (id) DO UPDATE SET"
            " state=excluded.state, next_due=excluded.next_due, runs=excluded.runs,"
            " last_job_id=excluded.last_job_id, last_run_at=excluded.last_run_at, skips=excluded.skips,"
            " last_skip_at=excluded.last_skip_at, last_skip=excluded.last_skip, last_error=excluded.last_error,"
            " last_error_at=excluded.last_error_at",
            (s.id, s.state.value, s.source.host, s.source.path, s.destination.host, s.destination.path,
             options_json(s.options), int(s.options.priority), s.cron, s.every, s.tz, s.created_at, s.next_due,
             s.runs, s.last_job_id, s.last_run_at, s.skips, s.last_skip_at, s.last_skip, s.last_error,
             s.last_error_at))

    def all(self) -> list[Schedule]:
        return [_schedule(r) for r in self.db.execute(f"SELECT {_COLS} FROM schedules ORDER BY id").fetchall()]

    def remove(self, schedule_id: int) -> None:
        self.db.execute("DELETE FROM schedules WHERE id=?", (schedule_id,))

    def mark_job(self, job_id: int, schedule_id: int) -> None:
        self.db.execute("UPDATE jobs SET schedule_id=? WHERE id=?", (schedule_id, job_id))


class ScheduleStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.sql = SchedulesSql(store.db)
        self._id = store.run(self.sql.max_id)

    def new_id(self) -> int:
        self._id += 1
        return self._id

    def all(self) -> list[Schedule]:
        """Blocking: for start-up, tools and tests."""
        return self.store.run(self.sql.all)

    def save(self, s: Schedule) -> None:
        self.store.write("schedule_save", self.sql.save, s)

    def remove(self, schedule_id: int) -> None:
        self.store.write("schedule_remove", self.sql.remove, schedule_id)

    def mark_job(self, job_id: int, schedule_id: int) -> None:
        self.store.write("schedule_job", self.sql.mark_job, job_id, schedule_id)


def _schedule(row: Sequence[Any]) -> Schedule:
    (sid, state, sh, sp, dh, dp, options, priority, cron, every, tz, created, next_due, runs, last_job, last_run,
     skips, last_skip_at, last_skip, last_error, last_error_at) = row
    return Schedule(
        id=int(sid), source=Endpoint(sh, bytes(sp)), destination=Endpoint(dh, bytes(dp)),
        options=options_from_json(options, priority), cron=cron, every=float(every), tz=tz,
        state=ScheduleState(state), created_at=created, next_due=next_due, runs=int(runs), last_job_id=int(last_job),
        last_run_at=last_run, skips=int(skips), last_skip_at=last_skip_at, last_skip=last_skip, last_error=last_error,
        last_error_at=last_error_at,
    )

