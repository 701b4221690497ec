"""Domain types of schedules (a rule that queues an ordinary job when it is due), shared by controller and zc-ctl."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from zcrepl.core.types import Endpoint, JobOptions


class ScheduleState(enum.Enum):
    ACTIVE = "active"
    PAUSED = "paused"


@dataclass(frozen=True)
class Schedule:
    """A stored schedule. Exactly one of ``cron`` (read in ``tz``, UTC when empty) and ``every`` (seconds) is set.
    ``last_state`` and ``last_job_error`` are not stored: they are the last run's job as it is when listed."""

    id: int
    source: Endpoint
    destination: Endpoint
    options: JobOptions = field(default_factory=JobOptions)
    cron: str = ""
    every: float = 0.0
    tz: str = ""
    state: ScheduleState = ScheduleState.ACTIVE
    created_at: float = 0.0
    next_due: float = 0.0  # 0 while paused
    runs: int = 0  # jobs queued
    last_job_id: int = 0
    last_run_at: float = 0.0
    skips: int = 0  # due runs not started because the previous one was still going
    last_skip_at: float = 0.0
    last_skip: str = ""
    last_error: str = ""  # why the last due run could not be queued; cleared by the next one that is
    last_error_at: float = 0.0
    last_state: str = ""
    last_job_error: str = ""

    @property
    def when(self) -> str:
        """How the operator wrote it: "cron 0 2 * * * (UTC)" or "every 1h"."""
        if self.cron:
            return f"cron {self.cron} ({self.tz or 'UTC'})"
        return f"every {duration_text(self.every)}"


_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def duration_text(seconds: float) -> str:
    """``5400`` -> ``1h30m``; fractions of a second are kept as such (``0.5s``)."""
    if seconds != int(seconds) or seconds <= 0:
        return f"{seconds:g}s"
    left, parts = int(seconds), []
    for unit, size in _UNITS:
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return "".join(parts)
