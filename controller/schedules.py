"""Schedules: stored rules that queue an ordinary job (through ``Engine.submit``, SubmitJob's own path) each time a
cron expression or an interval comes due.

``Schedules`` keeps every schedule in memory (read once at start-up, written behind through ``ScheduleStore``) and
owns the one loop that fires them. The loop is a single object with ``start``/``stop``, so whoever decides that
this controller may act (the leader, where several share a store) gates it as a whole; it sleeps until the next
due time (or until ``wake``: a schedule added, resumed or removed) rather than polling. Its clock is the engine's,
injected, so tests drive it with a fake one.

Rules of a run: a run whose previous job is still queued or running is skipped, and the skip is recorded (a
backup that takes longer than its interval never piles up); runs missed while the controller was down (or not
the leader) run once when the loop starts, not once per missed slot, and the next due time is the first slot after
now.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from zcrepl.controller import schedule_spec as spec
from zcrepl.controller.policy import DecisionKind
from zcrepl.controller.schedule_store import ScheduleStore
from zcrepl.core.errors import UnknownJob, ZcError
from zcrepl.core.logs import kv
from zcrepl.core.schedtypes import Schedule, ScheduleState
from zcrepl.core.types import Endpoint, JobOptions

if TYPE_CHECKING:
    from zcrepl.controller.engine import Engine

log = logging.getLogger(__name__)
# The longest the loop sleeps without looking at the clock again: the wait runs on the monotonic clock, and a
# wall clock stepped forward (NTP, a VM resumed) must not delay a due run by more than this.
MAX_SLEEP = 300.0


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


class Schedules:
    def __init__(self, store: ScheduleStore, engine: Engine, clock: Callable[[], float] | None = None) -> None:
        self.store = store
        self.engine = engine
        self.clock = clock or engine.clock
        self.schedules: dict[int, Schedule] = {s.id: s for s in store.all()}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.sleeping_until = math.inf  # when the loop looks next (seen by tests and logs)

    # -- the operator's calls -----------------------------------------------------------------------
    def add(self, src: Endpoint, dst: Endpoint, options: JobOptions, cron: str = "", every: float = 0.0,
            tz: str = "") -> Schedule:
        """Checked as a job would be (hosts, paths, backup and link-dest directories) and for timing that can
        never fire; nothing is stored when either fails."""
        now = self.clock()
        due = spec.check(cron, every, tz, now)
        self.engine.admit(src, dst, options)
        s = Schedule(self.store.new_id(), src, dst, options, cron=" ".join(cron.split()), every=every, tz=tz,
                     created_at=now, next_due=due)
        self.schedules[s.id] = s
        self.store.save(s)
        log.info("schedule added", extra=kv(schedule=s.id, when=s.when, next_due=stamp(due), src=str(src),
                                            dst=str(dst), host=dst.host))
        self.wake()
        return s

    def pause(self, schedule_id: int) -> Schedule:
        s = replace(self.get(schedule_id), state=ScheduleState.PAUSED, next_due=0.0)
        return self._changed(s, "schedule paused")

    def resume(self, schedule_id: int) -> Schedule:
        """Runs again from the first slot after now: what fell due while paused is not made up for."""
        s = self.get(schedule_id)
        if s.state is ScheduleState.ACTIVE:
            return s
        due = spec.next_due(s.cron, s.every, s.tz, s.created_at, self.clock())
        return self._changed(replace(s, state=ScheduleState.ACTIVE, next_due=due), "schedule resumed")

    def remove(self, schedule_id: int) -> Schedule:
        """Forget the schedule; a run already queued or running goes on as the ordinary job it is."""
        s = self.schedules.pop(self.get(schedule_id).id)
        self.store.remove(s.id)
        log.info("schedule removed", extra=kv(schedule=s.id))
        self.wake()
        return s

    def reload(self) -> None:
        """Read the schedules and the largest id again: this controller takes the lead after another (blocking, off
        the loop)."""
        self.store = ScheduleStore(self.store.store)
        self.schedules = {s.id: s for s in self.store.all()}

    def get(self, schedule_id: int) -> Schedule:
        s = self.schedules.get(schedule_id)
        if s is None:
            raise UnknownJob(f"no schedule {schedule_id}; run 'zc-ctl schedules' to list them")
        return s

    def naming(self, host: str) -> list[int]:
        """Schedules whose source or destination is on ``host``."""
        return sorted(s.id for s in self.schedules.values() if host in (s.source.host, s.destination.host))

    async def listed(self) -> list[Schedule]:
        """Every schedule, with its last run's job as it is now (live, or read from the store)."""
        out = []
        # A follower's copy may be stale (the leader changes them): it reads the store.
        items = self.schedules.values() if self.engine.leading else await self.store.store.call(self.store.sql.all)
        for s in sorted(items, key=lambda x: x.id):
            if s.last_job_id:
                try:
                    job = await self.engine.get_async(s.last_job_id)
                except UnknownJob:
                    pass
                else:
                    s = replace(s, last_state=job.state.value, last_job_error=job.error)
            out.append(s)
        return out

    def _changed(self, s: Schedule, what: str) -> Schedule:
        self.schedules[s.id] = s
        self.store.save(s)
        log.info(what, extra=kv(schedule=s.id, next_due=stamp(s.next_due) if s.next_due else "-"))
        self.wake()
        return s

    # -- the loop -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Fire what is due (what fell due while this controller was down: once) and keep firing; on the running
        event loop. Starting a started loop does nothing."""
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()  # here, not in the task: a wake before its first pass is not lost
            self._task = asyncio.get_running_loop().create_task(self._run(), name="zc-schedules")

    def stop(self) -> None:
        """Stop firing (the schedules stay stored; ``start`` picks up what fell due meanwhile)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.sleeping_until = math.inf

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        try:
            while True:
                wake.clear()
                try:
                    self.sleeping_until = self.step()
                except Exception:  # one bad pass must not end the schedules for good
                    log.exception("schedule pass failed")
                    self.sleeping_until = self.clock() + MAX_SLEEP
                delay = min(self.sleeping_until - self.clock(), MAX_SLEEP)
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel (stop) that lands as the
                # event is set, and the loop would go on after stop.
                try:
                    async with asyncio.timeout(max(delay, 0.0)):
                        await wake.wait()
                except TimeoutError:
                    pass
        finally:
            if self._wake is wake:
                self._wake = None

    def step(self) -> float:
        """Fire every active schedule that is due now (once each, however many of its slots have passed); the
        next due time of any schedule (inf: none)."""
        now = self.clock()
        for s in sorted(self.schedules.values(), key=lambda x: (x.next_due, x.id)):
            if s.state is ScheduleState.ACTIVE and s.next_due <= now:
                try:
                    self._fire(s, now)
                except Exception as err:  # one schedule (its zone gone from the system...) must not stop the others
                    log.exception("schedule could not fire", extra=kv(schedule=s.id))
                    self.schedules[s.id] = s = replace(s, next_due=now + MAX_SLEEP, last_error_at=now,
                                                       last_error=f"could not fire: {err}; tried again shortly")
                    self.store.save(s)
        return min((s.next_due for s in self.schedules.values() if s.state is ScheduleState.ACTIVE),
                   default=math.inf)

    def _fire(self, s: Schedule, now: float) -> None:
        due = s.next_due
        late = now - due
        nxt = spec.next_due(s.cron, s.every, s.tz, s.created_at, now)  # first: if it cannot be known, nothing runs
        fields = {"schedule": s.id, "due": stamp(due), "late": round(late, 3), "host": s.destination.host}
        previous = self.engine.jobs.get(s.last_job_id) if s.last_job_id else None
        if previous is not None:
            why = (f"the run due at {stamp(due)} was skipped: job {previous.id} (the previous run) was still "
                   f"{previous.state.value}")
            s = replace(s, skips=s.skips + 1, last_skip_at=now, last_skip=why)
            self.engine._decide(previous.id, DecisionKind.SCHEDULE, f"schedule {s.id}: {why}")
            log.warning("scheduled run skipped: the previous one is still going", extra=kv(**fields, job=previous.id))
        else:
            try:
                job = self.engine.submit(s.source, s.destination, s.options)
            except ZcError as err:
                s = replace(s, last_error=f"the run due at {stamp(due)} could not be queued: {err}", last_error_at=now)
                log.warning("scheduled run not queued", extra=kv(**fields, error=str(err)))
            else:
                # As a fan-out marks its jobs after submit: the job row exists, this write follows it.
                self.engine.jobs[job.id] = replace(job, schedule_id=s.id)
                self.store.mark_job(job.id, s.id)
                s = replace(s, runs=s.runs + 1, last_job_id=job.id, last_run_at=now, last_error="", last_error_at=0.0)
                self.engine._decide(job.id, DecisionKind.SCHEDULE,
                                    f"queued by schedule {s.id} ({s.when}) for the run due at {stamp(due)}")
                log.info("scheduled run queued", extra=kv(**fields, job=job.id))
        if spec.next_due(s.cron, s.every, s.tz, s.created_at, due) < now:
            log.info("schedule missed runs: they are not repeated", extra=kv(**fields, next_due=stamp(nxt)))
        self.schedules[s.id] = s = replace(s, next_due=nxt)
        self.store.save(s)
