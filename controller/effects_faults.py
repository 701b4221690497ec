"""The engine's decisions about faults as effects (issue 15, item 6; the effect types are in effects.py): an agent
lost while it runs attempts (held for ``attempt_grace``, or failed), the same agent back (its held attempts carry on
or fail), the attempts a new leader finds running (adopted, held for both agents), and a job whose scheduling raised
(kept queued, its half-started attempt dropped). No I/O, no clock, no store: tested with tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from zcrepl.controller import fence
from zcrepl.controller.effects import (
    Adopt,
    Drop,
    Effect,
    FailAttempt,
    Hold,
    Log,
    Persist,
    Record,
    Regained,
    cancel_orders,
)
from zcrepl.controller.policy import DecisionKind
from zcrepl.controller.runs import Run, job_fields
from zcrepl.core.types import Endpoint, Job


def host_lost(name: str, why: str, runs: Iterable[Run], jobs: Mapping[int, Job], now: float,
              grace: float) -> list[Effect]:
    """``name`` went offline (``why``): each of its attempts that may be moving data is held for it (fence.py) while
    its grace lasts; the others, and all of them without a grace, fail (and are retried)."""
    out: list[Effect] = []
    for run in runs:
        job = jobs[run.job_id]
        if name not in (run.source.host, job.destination.host):
            continue
        until = fence.hold_until(run, now, grace) if fence.holds(run, job, name) else 0.0
        if until:
            out += [Hold(job.id, name, until),
                    Record(job.id, DecisionKind.WAIT, f"{name} went offline during attempt {run.attempt} ({why}); "
                           f"the attempt is held for up to {grace:g}s, since its agents may still be running it: no "
                           "other attempt starts meanwhile", every=True),
                    Log("attempt held", {**job_fields(job, run), "agent": name, "grace": grace}, warning=True)]
        else:
            out.append(FailAttempt(job.id, f"{name} went offline during the transfer ({why})", True, run.progress))
    return out


def rejoined(name: str, active: set[tuple[int, int]], runs: Iterable[Run], jobs: Mapping[int, Job]) -> list[Effect]:
    """``name`` registered (again) running ``active`` (job, attempt) pairs: the attempts held for it carry on if it
    still runs them; one it came back without failed."""
    out: list[Effect] = []
    for run in runs:
        job = jobs[run.job_id]
        why = fence.rejoin(run, job, name, active)
        if why:
            out.append(FailAttempt(job.id, why, True, run.progress))
        elif name in run.lost_hosts:
            out += [Regained(job.id, name),
                    Record(job.id, DecisionKind.RESUME, f"{name} is back and still runs attempt {run.attempt}: it "
                           "carries on", every=True),
                    Log("held attempt carries on", {**job_fields(job, run), "agent": name})]
    return out


def adopted(running: Iterable[tuple[int, int, bytes]], jobs: Mapping[int, Job], now: float, ready_timeout: float,
            grace: float) -> list[Effect]:
    """The attempts a previous leader left running (job, attempt, ``host:path`` of its source), taken over: each is
    held for its two agents as if both had just gone out of reach (fence.py), for ``grace`` seconds. An agent that
    comes back still running it lets it carry on, and its reports settle it as usual (the final ones an agent sends
    again on reconnecting included); one that comes back without it, or not at all, fails it and the job is
    retried. No other attempt of the job starts meanwhile. A job no longer queued or running is left alone."""
    out: list[Effect] = []
    for job_id, attempt, source in running:
        job = jobs.get(job_id)
        if job is None:
            continue
        host, _, path = source.partition(b":")
        src = Endpoint(host.decode(), path) if host else job.source
        run = Run(job_id, attempt, b"", now + ready_timeout, src, receiver_ready=True, sending=True,
                  last_report=now, streams=max(1, job.options.streams), progress=job.progress, rate_at=now)
        for name in sorted({src.host, job.destination.host}):
            if until := fence.hold_until(run, now, grace):
                run.held(name, until)  # a run of our own making, not yet the engine's
        out += [Adopt(run),
                Record(job_id, DecisionKind.WAIT, f"attempt {attempt} was running when this controller took the "
                       f"lead: held for up to {grace:g}s for its agents, which may still be running it; no other "
                       "attempt starts meanwhile", every=True),
                Log("running attempt adopted", job_fields(job, run))]
    return out


def schedule_failed(job: Job, run: Run | None, err: Exception) -> list[Effect]:
    """Scheduling ``job`` raised ``err`` (its attempt ``run`` may have begun): the attempt is dropped and its agents
    told to stop, the job stays queued as it was with the failure as its wait reason, explained; the pass goes on
    with the other jobs."""
    why = f"waiting: scheduling this job failed ({err!r}); tried again next pass (see the controller log)"
    after = replace(job, wait_reason=why)
    stop: list[Effect] = [] if run is None else [Drop(job.id), *cancel_orders(after, run, "scheduling this job failed")]
    return [*stop, Persist(after), Record(job.id, DecisionKind.WAIT, why)]
