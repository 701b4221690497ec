"""The engine's side of leadership (controller/leadership.py holds the lease): taking the lead, stepping down,
and the leader's periodic note of which agents are online, which followers read from the store.

A mixin of ``Engine`` (which owns the state named under TYPE_CHECKING), like faults.py.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from zcrepl.controller.registry import Registry
from zcrepl.controller.store import Store

if TYPE_CHECKING:
    from zcrepl.controller.policy import DecisionRecord
    from zcrepl.controller.runs import Run
    from zcrepl.controller.syncs import SyncManager
    from zcrepl.core.types import Endpoint, Job

AGENT_TOUCH = 2.0  # seconds between the leader's notes in the store of which agents are online


class Leading:
    if TYPE_CHECKING:
        store: Store
        registry: Registry
        syncs: SyncManager
        jobs: dict[int, Job]
        runs: dict[int, Run]
        _replicas_done: dict[int, list[Endpoint]]
        _last_decision: dict[int, DecisionRecord]
        _events: dict[int, asyncio.Event]

        def _read_state(self, lead: bool) -> tuple[SyncManager, bool]: ...
        def _notify(self, job_id: int) -> None: ...
        def wake(self) -> None: ...

    leading: bool
    epoch: int
    store_id: str
    _touched_at: float

    async def lead(self, epoch: int, store_id: str) -> None:
        """This controller now leads with ``epoch``: re-read the store (ids, agents, queued and running jobs, watch
        rules) before the first scheduling pass."""
        self.syncs, _ = await asyncio.to_thread(self._read_state, True)
        self.epoch, self.store_id, self.leading = epoch, store_id, True
        self.wake()

    def step_down(self) -> None:
        """The lease may be lost: stop scheduling and sending at once, close every agent's stream (they go
        looking for the new leader) and forget the jobs in memory (the next leader reads them from the store)."""
        self.leading = False
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
