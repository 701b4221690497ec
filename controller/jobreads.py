"""The engine's answers about jobs: the live job (queued or running, in memory) merged over the stored one.

Each read comes in two forms: ``await get_async(..)`` on the event loop, where the store's thread does the reading
while the loop serves on, and ``get(..)``, blocking, for tools and tests off the loop.
A mixin of ``Engine`` (which owns the state named under TYPE_CHECKING), like faults.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING

from zcrepl.controller.store import Store
from zcrepl.core.errors import UnknownJob
from zcrepl.core.types import Job, JobState


class JobReads:
    if TYPE_CHECKING:
        store: Store
        jobs: dict[int, Job]
        _events: dict[int, asyncio.Event]

    def get(self, job_id: int) -> Job:
        return self._merged(job_id, self.store.get_job(job_id))

    async def get_async(self, job_id: int) -> Job:
        return self._merged(job_id, await self.store.call(self.store.sql.get_job, job_id))

    def _merged(self, job_id: int, stored: Job | None) -> Job:
        if stored is None:
            raise UnknownJob(f"no job {job_id}; run 'zc-ctl jobs' to list jobs")
        job = self.jobs.get(job_id)
        return stored if job is None else replace(job, history=stored.history, skipped=stored.skipped, plan=stored.plan)

    def list_jobs(self, states: tuple[JobState, ...], limit: int, group_id: int = 0) -> list[Job]:
        return self._live(self.store.list_jobs(states, limit, group_id))

    async def list_jobs_async(self, states: tuple[JobState, ...], limit: int, group_id: int = 0) -> list[Job]:
        return self._live(await self.store.call(self.store.sql.list_jobs, states, limit, group_id))

    def _live(self, jobs: list[Job]) -> list[Job]:
        return [replace(self.jobs[j.id], history=j.history, skipped=j.skipped, plan=j.plan) if j.id in self.jobs else j
                for j in jobs]

    async def watch(self, job_id: int, keepalive: float = 5.0) -> AsyncIterator[Job]:
        while True:
            # Subscribe before reading: a change that lands while the snapshot is being sent must
            # wake the next wait, not be lost until the keepalive.
            ev = self._events.setdefault(job_id, asyncio.Event())
            job = await self.get_async(job_id)
            yield job
            if job.state.final:
                return
            try:
                await asyncio.wait_for(ev.wait(), keepalive)
            except TimeoutError:
                pass

    async def explain(self, job_id: int) -> list[tuple[float, str, str]]:
        await self.get_async(job_id)  # UnknownJob for a wrong id
        return await self.store.call(self.store.sql.decisions, job_id)
