"""How the engine paces running transfers: the load policy's throttle orders (slow down, pause, resume as
either end crosses its high-water marks) and each link's AIMD stream target fed from the runs' progress.

A mixin of ``Engine`` (which owns the state named under TYPE_CHECKING), split out to keep the engine module
about its events and state transitions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from zcrepl.controller.compression import CompressChoice, CompressPolicy
from zcrepl.controller.links import LinkStep, LinkTracker
from zcrepl.controller.policy import DecisionKind, LinkState
from zcrepl.controller.registry import Registry
from zcrepl.controller.runs import Run, job_fields, link_cap, rate_limited
from zcrepl.controller.scheduler import Policy
from zcrepl.controller.throttle import Throttle, throttle_decision
from zcrepl.core.logs import kv
from zcrepl.core.types import HostHealth, Job, ThrottleOrder, TransferStats

log = logging.getLogger(__name__)
THROTTLE_EVERY = 2.0  # seconds between load decisions on a running transfer, and between its link samples


class Pacing:
    if TYPE_CHECKING:
        runs: dict[int, Run]
        jobs: dict[int, Job]
        policy: Policy
        registry: Registry
        links: LinkTracker
        compression: CompressPolicy
        clock: Callable[[], float]

        def _decide(self, job_id: int, kind: DecisionKind, reason: str, *, every: bool = False,
                    **details: str | int | float | bool) -> None: ...

        def _health(self, name: str) -> HostHealth | None: ...

    def _throttle_running(self, now: float) -> None:
        """Slow down, pause or speed up running sends as either end crosses its high-water marks."""
        t = self.policy.thresholds
        if t is None:
            return
        for run in list(self.runs.values()):
            if not run.sending or now - run.rate_at < THROTTLE_EVERY:
                continue
            job = self.jobs[run.job_id]
            rate_bps = (run.progress.bytes_done - run.rate_bytes) / (now - run.rate_at)
            run.rate_at, run.rate_bytes = now, run.progress.bytes_done
            link = LinkState(run.source.host, job.destination.host, ema_bps=rate_bps)
            d = throttle_decision(self._health(run.source.host), self._health(job.destination.host), t,
                                  run.bwlimit, link, now=now, paused=run.paused, ceiling=job.options.bwlimit,
                                  rate_bps=rate_bps, dst_path=job.destination.path, src_path=run.source.path)
            if d.action is Throttle.HOLD:
                continue
            run.paused = d.action is Throttle.PAUSE
            run.bwlimit = d.bwlimit
            src = self.registry.session(run.source.host)
            if src is not None:
                src.outbox.put_nowait(ThrottleOrder(job.id, run.attempt, run.bwlimit, run.paused, d.reason))
            kind = d.action.kind
            if kind is not None:
                self._decide(job.id, kind, d.reason, bwlimit=run.bwlimit, paused=run.paused)
            log.info("throttle", extra=kv(**job_fields(job, run), action=d.action.value, bwlimit=run.bwlimit,
                                          reason=d.reason))

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
        if step is None or not step.changed:
            return
        self._decide(job.id, DecisionKind.STREAMS, f"{step.reason} (the target for the next jobs on this link)",
                     every=True, streams=step.state.streams)
        log.info("link streams", extra=kv(link=step.state.name, streams=step.state.streams, reason=step.reason))

    def _compress_choice(self, job: Job, run: Run, streams: int) -> CompressChoice:
        """zstd on this send or not (controller/compression.py), from the link's throughput and both ends."""
        src, dst = run.source.host, job.destination.host
        rates = tuple(rec.info.compress_bps if rec is not None else 0
                      for rec in (self.registry.agents.get(src), self.registry.agents.get(dst)))
        state = self.links.states.get((src, dst))
        choice = self.compression.decide(job.options.compress, src, dst, (rates[0], rates[1]),
                                         state.ema_bps if state is not None else 0.0,
                                         (self._health(src), self._health(dst)), streams, job.options.compress_level)
        run.compressed = choice.on
        return choice

    def _link_cap(self, link: tuple[str, str]) -> int:
        return link_cap(self.policy, link)
