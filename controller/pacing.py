"""How the engine paces running transfers: the load policy's throttle orders (slow down, pause, resume as
either end crosses its high-water marks) and each link's AIMD stream target fed from the runs' progress. The
decisions are controller/effects_pacing.py's; this shell feeds the link tracker and carries them out.

A mixin of ``Engine`` (which owns the state named under TYPE_CHECKING), split out to keep the engine module
about its events and state transitions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from zcrepl.controller import effects_pacing
from zcrepl.controller.compression import CompressPolicy
from zcrepl.controller.links import LinkStep, LinkTracker
from zcrepl.controller.runs import Run, link_cap, rate_limited
from zcrepl.controller.scheduler import Policy
from zcrepl.core.types import HostHealth, Job, TransferStats

if TYPE_CHECKING:
    from zcrepl.controller.effects import Effect


class Pacing:
    if TYPE_CHECKING:
        runs: dict[int, Run]
        jobs: dict[int, Job]
        policy: Policy
        links: LinkTracker
        compression: CompressPolicy
        clock: Callable[[], float]

        def _apply(self, todo: Sequence[Effect], now: float) -> None: ...

        def _health(self, name: str) -> HostHealth | None: ...

    def _throttle_running(self, now: float) -> None:
        """Slow down, pause or speed up running sends as either end crosses its high-water marks."""
        self._apply(effects_pacing.throttled(list(self.runs.values()), self.jobs, self._health,
                                             self.policy.thresholds, now), now)

    def _sample_links(self, now: float) -> None:
        """Feed each sending run's progress to its link's AIMD state (the tracker keeps the cadence)."""
        for run in list(self.runs.values()):
            if run.sending:
                job = self.jobs[run.job_id]
                link = (run.source.host, job.destination.host)
                self._link_step(job, self.links.sample((job.id, run.attempt), link, run.progress, now,
                                                       limited=rate_limited(job, run), cap=self._link_cap(link)))

    def _link_ended(self, job: Job, run: Run, stats: TransferStats, *, failed: bool) -> None:
        link = (run.source.host, job.destination.host)
        if not run.sending:
            self.links.forget((job.id, run.attempt))
            return
        self.compression.ended(link, run.compressed, stats)
        self._link_step(job, self.links.end((job.id, run.attempt), link, stats, self.clock(), failed=failed,
                                            limited=rate_limited(job, run), cap=self._link_cap(link)))

    def _link_step(self, job: Job, step: LinkStep | None) -> None:
        if step is not None and step.changed:
            self._apply(effects_pacing.link_stepped(job.id, step), self.clock())

    def _link_cap(self, link: tuple[str, str]) -> int:
        return link_cap(self.policy, link)
