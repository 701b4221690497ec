"""The engine's side of leadership (controller/leadership.py holds the lease): taking the lead, stepping down,
and the leader's periodic note of which agents are online, which followers read from the store.

A mixin of ``Engine`` (which owns the state named under TYPE_CHECKING), like faults.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from zcrepl.controller import fence
from zcrepl.controller.links import LinkTracker
from zcrepl.controller.policy import DecisionKind
from zcrepl.controller.registry import Registry
from zcrepl.controller.runs import Run, job_fields
from zcrepl.controller.store import Store
from zcrepl.core.config import ControllerConfig
from zcrepl.core.logs import kv
from zcrepl.core.types import Endpoint, JobState

if TYPE_CHECKING:
    from zcrepl.controller.policy import DecisionRecord
    from zcrepl.controller.schedules import Schedules
    from zcrepl.controller.watchrules import WatchRuleManager
    from zcrepl.core.types import Job

log = logging.getLogger(__name__)

AGENT_TOUCH = 2.0  # seconds between the leader's notes in the store of which agents are online


class Leading:
    if TYPE_CHECKING:
        store: Store
        config: ControllerConfig
        links: LinkTracker
        registry: Registry
        watch_rules: WatchRuleManager
        schedules: Schedules
        jobs: dict[int, Job]
        runs: dict[int, Run]
        _replicas_done: dict[int, list[Endpoint]]
        _last_decision: dict[int, DecisionRecord]
        _events: dict[int, asyncio.Event]

        clock: Callable[[], float]

        def _watch_rule_manager(self) -> WatchRuleManager: ...
        def _decide(self, job_id: int, kind: DecisionKind, reason: str, *, every: bool = False,
                    **details: str | int | float | bool) -> None: ...
        def _notify(self, job_id: int) -> None: ...
        def wake(self) -> None: ...

    leading: bool
    epoch: int
    store_id: str
    _touched_at: float

    def _read_state(self, lead: bool, adopt: bool = False) -> tuple[WatchRuleManager, bool]:
        """Blocking (off the loop): everything a leader resumes from the store, and the watch rules. Called again
        when this controller takes the lead after another, so nothing handed out before is handed out again;
        then (``adopt``) the attempts that were running carry on if their agents still run them (leading.py)."""
        store = self.store
        if lead:
            store.reload_ids()
            self.registry.agents.clear()
            for name, (info, last_seen) in store.agents().items():
                self.registry.load(name, info, last_seen)
            running = store.run(store.sql.open_attempts) if adopt and self.config.attempt_grace > 0 else []
            requeued = store.recover_interrupted(self.clock(), frozenset(j for j, _, _ in running))
            if requeued:
                log.info("requeued interrupted jobs", extra=kv(jobs=",".join(map(str, requeued))))
            self.jobs = {j.id: j for j in store.list_jobs((JobState.QUEUED, JobState.RUNNING))}
            self._replicas_done = {g: [j.destination for j in store.list_jobs((JobState.DONE,), 0, g)]
                                   for g in {j.group_id for j in self.jobs.values() if j.group_id}}
            self._adopt(running, self.clock())
        return self._watch_rule_manager(), lead

    async def lead(self, epoch: int, store_id: str) -> None:
        """This controller now leads with ``epoch``: re-read the store (ids, agents, queued and running jobs, watch
        rules) before the first scheduling pass."""
        self.watch_rules, _ = await asyncio.to_thread(self._read_state, True, True)
        await asyncio.to_thread(self.schedules.reload)
        self.epoch, self.store_id, self.leading = epoch, store_id, True
        self.schedules.start()  # what fell due while no controller led runs now, once
        self.wake()

    def _adopt(self, running: list[tuple[int, int, bytes]], now: float) -> None:
        """Take over the attempts a previous leader left running: each is held for its two agents as if both had
        just gone out of reach (fence.py), for ``attempt_grace`` seconds. An agent that comes back still running
        it lets it carry on, and its reports settle it as usual (the final ones an agent sends again on
        reconnecting included); one that comes back without it, or not at all, fails it and the job is retried.
        No other attempt of the job starts meanwhile."""
        for job_id, attempt, source in running:
            job = self.jobs.get(job_id)
            if job is None:
                continue
            host, _, path = source.partition(b":")
            src = Endpoint(host.decode(), path) if host else job.source
            run = Run(job_id, attempt, b"", now + self.config.ready_timeout, src, receiver_ready=True, sending=True,
                      last_report=now, streams=max(1, job.options.streams), progress=job.progress, rate_at=now)
            for name in {src.host, job.destination.host}:
                fence.hold(run, name, now, self.config.attempt_grace)
            self.runs[job_id] = run
            self.links.start((job_id, attempt), run.progress, run.streams, now)
            self._decide(job_id, DecisionKind.WAIT, f"attempt {attempt} was running when this controller took the "
                         f"lead: held for up to {self.config.attempt_grace:g}s for its agents, which may still be "
                         "running it; no other attempt starts meanwhile", every=True)
            log.info("running attempt adopted", extra=kv(**job_fields(job, run)))

    def step_down(self) -> None:
        """The lease may be lost: stop scheduling and sending at once, close every agent's stream (they go
        looking for the new leader) and forget the jobs in memory (the next leader reads them from the store)."""
        self.leading = False
        self.schedules.stop()
        self.store.fence()
        for rec in self.registry.agents.values():
            if rec.session is not None:
                rec.session.close()
                rec.session = None
        self.runs.clear()
        self.jobs.clear()
        self._replicas_done.clear()
        self._last_decision.clear()
        for job_id in list(self._events):
            self._notify(job_id)

    def _touch_online(self, now: float) -> None:
        if now - self._touched_at < AGENT_TOUCH:
            return
        self._touched_at = now
        online = [n for n in self.registry.agents if self.registry.online(n, now)]
        if online:
            self.store.touch_agents(online, now)
