"""The web view's schedules section: each schedule's timing, route, next due time and its last run's result.

Read as ``zc-ctl schedules`` reads them, without waiting on the event loop: the leader's schedules are in memory,
a follower's come from the store (the leader changes them); the last runs' jobs that are no longer live are read
on the store's thread, in one call for the whole section. The list is capped (by id) and says how many there are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zcrepl.controller.schedules import stamp
from zcrepl.core.schedtypes import Schedule, ScheduleState, duration_text

if TYPE_CHECKING:
    from zcrepl.controller.engine import Engine
    from zcrepl.controller.store_sql import JobsSql
    from zcrepl.core.types import Endpoint, Job

SCHEDULES_SHOWN = 50
Text = Callable[[str], str]
ShowEndpoint = Callable[["Endpoint"], str]


async def section(engine: Engine, text: Text, endpoint: ShowEndpoint) -> dict[str, Any]:
    """``{"total", "paused", "items"}``; ``text`` and ``endpoint`` cut agents' words as the rest of the page does."""
    e = engine
    if e.leading:
        items = list(e.schedules.schedules.values())
        live = e.jobs
    else:
        items = await e.store.call(e.schedules.store.sql.all)
        live = {}
    items.sort(key=lambda s: s.id)
    shown = items[:SCHEDULES_SHOWN]
    wanted = [s.last_job_id for s in shown if s.last_job_id and s.last_job_id not in live]
    stored = await e.store.call(_jobs, e.store.sql, wanted) if wanted else {}
    return {"total": len(items), "paused": sum(s.state is ScheduleState.PAUSED for s in items),
            "items": [_item(s, live.get(s.last_job_id) or stored.get(s.last_job_id), text, endpoint) for s in shown]}


def _jobs(sql: JobsSql, ids: list[int]) -> dict[int, Job]:
    """On the store's thread: the stored jobs of ``ids`` (a removed job is simply missing)."""
    return {i: j for i in ids if (j := sql.get_job(i)) is not None}


def _item(s: Schedule, last: Job | None, text: Text, endpoint: ShowEndpoint) -> dict[str, Any]:
    return {
        "id": s.id, "when": s.when, "cron": s.cron, "tz": s.tz or ("UTC" if s.cron else ""), "every": s.every,
        "every_text": duration_text(s.every) if s.every else "",
        "source": endpoint(s.source), "destination": endpoint(s.destination),
        "paused": s.state is ScheduleState.PAUSED,
        "next_due": s.next_due or None, "next_due_text": stamp(s.next_due) if s.next_due else "",
        "runs": s.runs, "skips": s.skips, "last_skip": text(s.last_skip), "last_skip_at": s.last_skip_at or None,
        "last_job_id": s.last_job_id or None, "last_run_at": s.last_run_at or None,
        # The job may be gone from the store (removed with its history): its id stays, its result is unknown.
        "last_state": last.state.value if last is not None else ("unknown" if s.last_job_id else None),
        "last_error": text(last.error) if last is not None else "",
        "note": text(s.last_error),
    }
