"""How zc-ctl shows schedules: a JSON document per schedule for scripts, a rich table for people."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from zcrepl.cli.render import ago, job_doc
from zcrepl.core.schedtypes import Schedule, ScheduleState
from zcrepl.core.types import Job, JobState

if TYPE_CHECKING:  # schedules_table imports it: JSON output never loads rich
    from rich.table import Table


def schedule_doc(s: Schedule) -> dict[str, Any]:
    # The options as a job shows them, so a script reads one shape for both.
    options = job_doc(Job(0, JobState.QUEUED, s.source, s.destination, s.options))["options"]
    return {
        "id": s.id, "state": s.state.value, "when": s.when, "cron": s.cron, "every": s.every, "tz": s.tz,
        "source": str(s.source), "destination": str(s.destination), "options": options,
        "created_at": s.created_at, "next_due": s.next_due or None,
        "runs": s.runs, "last_job_id": s.last_job_id or None, "last_run_at": s.last_run_at or None,
        "last_state": s.last_state or None, "last_job_error": s.last_job_error,
        "skips": s.skips, "last_skip_at": s.last_skip_at or None, "last_skip": s.last_skip,
        "last_error": s.last_error, "last_error_at": s.last_error_at or None,
    }


def when_due(t: float, now: float) -> str:
    """``2026-11-30 02:00 UTC (in 3h)``; a time already past reads as due now."""
    if not t:
        return "-"
    left = t - now
    rel = "due now" if left <= 0 else f"in {left:.0f}s" if left < 120 else (
        f"in {left / 60:.0f}m" if left < 7200 else f"in {left / 3600:.1f}h")
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) + f" ({rel})"


def last_run_text(s: Schedule, now: float) -> str:
    if not s.last_job_id:
        return "never run"
    state = s.last_state or "?"
    err = f": {s.last_job_error}" if s.last_job_error else ""
    return f"job {s.last_job_id} {state}{err} ({ago(s.last_run_at, now)})"


def schedules_table(items: list[Schedule]) -> Table:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="schedules", title_justify="left")
    for col in ("ID", "STATE", "WHEN", "SOURCE", "DESTINATION", "NEXT DUE", "RUNS", "LAST RUN", "SKIPPED", "NOTE"):
        if col in ("LAST RUN", "NOTE"):
            t.add_column(col, overflow="fold", max_width=48)
        elif col in ("SOURCE", "DESTINATION"):
            t.add_column(col, min_width=16, overflow="fold")
        else:
            t.add_column(col, no_wrap=col != "WHEN")
    now = time.time()
    for s in items:
        color = "yellow" if s.state is ScheduleState.PAUSED else "green"
        last = last_run_text(s, now)
        if s.last_state in (JobState.FAILED.value, JobState.CANCELLED.value):
            last = f"[red]{escape(last)}[/]"
        else:
            last = escape(last)
        note = s.last_error or s.last_skip
        note_at = s.last_error_at if s.last_error else s.last_skip_at
        t.add_row(str(s.id), f"[{color}]{s.state.value}[/]", escape(s.when), escape(str(s.source)),
                  escape(str(s.destination)), when_due(s.next_due, now), str(s.runs), last, str(s.skips),
                  f"{escape(note)} ({ago(note_at, now)})" if note else "")
    return t
