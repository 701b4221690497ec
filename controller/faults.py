"""How the engine meets faults: agents it loses while they run attempts (held, see fence.py) and come back, and
a job whose scheduling raises (kept to that job, the pass goes on for the others).

A mixin of ``Engine`` (which owns the state named under TYPE_CHECKING), like pacing.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from zcrepl.controller import fence
from zcrepl.controller.policy import DecisionKind
from zcrepl.controller.runs import Run, job_fields
from zcrepl.controller.store import Store
from zcrepl.core.config import ControllerConfig
from zcrepl.core.logs import kv
from zcrepl.core.types import Job, TransferStats

log = logging.getLogger(__name__)


class Faults:
    if TYPE_CHECKING:
        config: ControllerConfig
        store: Store
        runs: dict[int, Run]
        jobs: dict[int, Job]
        clock: Callable[[], float]

        def _decide(self, job_id: int, kind: DecisionKind, reason: str, *, every: bool = False,
                    **details: str | int | float | bool) -> None: ...

        def _fail_run(self, job_id: int, error: str, retryable: bool, stats: TransferStats) -> None: ...

        def _cancel_sides(self, job: Job, run: Run, reason: str, discard: bool = False) -> None: ...

    def _host_lost(self, name: str, why: str) -> None:
        """``name`` went offline: its attempts are held for it (fence.py), or failed without a grace."""
        now, grace = self.clock(), self.config.attempt_grace
        for job_id, run in list(self.runs.items()):
            job = self.jobs[job_id]
            if name not in (run.source.host, job.destination.host):
                continue
            if fence.holds(run, job, name) and fence.hold(run, name, now, grace):
                self._decide(job_id, DecisionKind.WAIT, f"{name} went offline during attempt {run.attempt} "
                             f"({why}); the attempt is held for up to {grace:g}s, since its agents may still be "
                             "running it: no other attempt starts meanwhile", every=True)
                log.warning("attempt held", extra=kv(**job_fields(job, run), agent=name, grace=grace))
            else:
                self._fail_run(job_id, f"{name} went offline during the transfer ({why})", True, run.progress)

    def _rejoined(self, name: str, active: set[tuple[int, int]]) -> None:
        """``name`` registered (again): its held attempts carry on if it still runs them, else they failed."""
        for job_id, run in list(self.runs.items()):
            lost = name in run.lost_hosts
            why = fence.rejoin(run, self.jobs[job_id], name, active)
            if why:
                self._fail_run(job_id, why, True, run.progress)
            elif lost:
                self._decide(job_id, DecisionKind.RESUME, f"{name} is back and still runs attempt {run.attempt}: "
                             "it carries on", every=True)
                log.info("held attempt carries on", extra=kv(**job_fields(self.jobs[job_id], run), agent=name))

    def _schedule_failed(self, job: Job, err: Exception) -> None:
        """Scheduling ``job`` raised: it stays queued as it was, the failure is logged and explained against it,
        and the pass goes on with the other jobs."""
        log.exception("scheduling a job failed", extra=kv(**job_fields(job, self.runs.get(job.id))))
        why = f"waiting: scheduling this job failed ({err!r}); tried again next pass (see the controller log)"
        run = self.runs.pop(job.id, None)
        job = self.jobs[job.id] = replace(job, wait_reason=why)
        if run is not None:
            self._cancel_sides(job, run, "scheduling this job failed")
        try:
            self.store.save_job(job)
            self._decide(job.id, DecisionKind.WAIT, why)
        except Exception:
            log.exception("recording a scheduling failure failed", extra=kv(**job_fields(job)))
