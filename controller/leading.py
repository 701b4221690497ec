"""The engine's side of leadership (controller/leadership.py holds the lease): taking the lead, stepping down,
and the leader's periodic note of which agents are online, which followers read from the store.

A mixin of ``Engine`` (which owns the state named under TYPE_CHECKING), like faults.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from zcrepl.controller import effects_faults
from zcrepl.controller.registry import Registry
from zcrepl.controller.runs import Run
from zcrepl.controller.store import Store
from zcrepl.core.config import ControllerConfig
from zcrepl.core.logs import kv
from zcrepl.core.types import Endpoint, JobState

if TYPE_CHECKING:
    from zcrepl.controller.effects import Effect
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
        def _apply(self, todo: Sequence[Effect], now: float) -> None: ...
        def _notify(self, job_id: int) -> None: ...
        def wake(self) -> None: ...

    leading: bool
    epoch: int
    store_id: str
    _touched_at: float

    def _read_state(self, lead: bool, adopt: bool = False) -> tuple[WatchRuleManager, bool]:
        """Blocking (off the loop): everything a leader resumes from the store, and the watch rules. Called again
        when this controller takes the lead after another, so nothing handed out before is handed out again;
        then (``adopt``) the attempts that were running carry on if their agents still run them
        (``effects_faults.adopted``)."""
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
            now = self.clock()
            self._apply(effects_faults.adopted(running, self.jobs, now, self.config.ready_timeout,
                                               self.config.attempt_grace), now)
        return self._watch_rule_manager(), lead

    async def lead(self, epoch: int, store_id: str) -> None:
        """This controller now leads with ``epoch``: re-read the store (ids, agents, queued and running jobs, watch
        rules) before the first scheduling pass."""
        self.watch_rules, _ = await asyncio.to_thread(self._read_state, True, True)
        await asyncio.to_thread(self.schedules.reload)
        self.epoch, self.store_id, self.leading = epoch, store_id, True
        self.schedules.start()  # what fell due while no controller led runs now, once
        self.wake()

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
