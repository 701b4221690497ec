"""How the engine meets faults: agents it loses while they run attempts (held, see fence.py) and come back, and
a job whose scheduling raises (kept to that job, the pass goes on for the others). The decisions are
controller/effects_faults.py's; this shell carries them out.

A mixin of ``Engine`` (which owns the state named under TYPE_CHECKING), like pacing.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from zcrepl.controller import effects_faults
from zcrepl.controller.runs import Run, job_fields
from zcrepl.core.config import ControllerConfig
from zcrepl.core.logs import kv
from zcrepl.core.types import Job

if TYPE_CHECKING:
    from zcrepl.controller.effects import Effect

log = logging.getLogger(__name__)


class Faults:
    if TYPE_CHECKING:
        config: ControllerConfig
        runs: dict[int, Run]
        jobs: dict[int, Job]
        clock: Callable[[], float]

        def _apply(self, todo: Sequence[Effect], now: float) -> None: ...

    def _host_lost(self, name: str, why: str) -> None:
        """``name`` went offline: its attempts are held for it (fence.py), or failed without a grace."""
        now = self.clock()
        self._apply(effects_faults.host_lost(name, why, list(self.runs.values()), self.jobs, now,
                                             self.config.attempt_grace), now)

    def _rejoined(self, name: str, active: set[tuple[int, int]]) -> None:
        """``name`` registered (again): its held attempts carry on if it still runs them, else they failed."""
        self._apply(effects_faults.rejoined(name, active, list(self.runs.values()), self.jobs), self.clock())

    def _schedule_failed(self, job: Job, err: Exception) -> None:
        """Scheduling ``job`` raised: it stays queued as it was, the failure is logged and explained against it,
        and the pass goes on with the other jobs."""
        log.exception("scheduling a job failed", extra=kv(**job_fields(job, self.runs.get(job.id))))
        try:
            self._apply(effects_faults.schedule_failed(job, self.runs.get(job.id), err), self.clock())
        except Exception:
            log.exception("recording a scheduling failure failed", extra=kv(**job_fields(job)))
