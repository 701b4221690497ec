"""The engine's decisions as effects (issue 15, item 6): pure functions take what the engine knows (runs, jobs, the
scheduler's decisions, the clock's reading) and return what must happen, which the engine, a thin shell over the
store and the agent sessions, carries out in order (``Engine._apply``).

Begun with the scheduling pass: which running attempts are past a deadline (:func:`overdue`) and what the
scheduler's decisions change (:func:`scheduled`). No I/O, no clock, no asyncio, no store: tested with tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from zcrepl.controller import fence
from zcrepl.controller.policy import DecisionKind
from zcrepl.controller.runs import Run
from zcrepl.controller.scheduler import Decision
from zcrepl.core.types import Endpoint, Job, TransferStats


@dataclass(frozen=True)
class Persist:
    """Keep ``job`` as the engine's current copy and save its mutable fields."""

    job: Job


@dataclass(frozen=True)
class Record:
    """One line of the job's explain history (an unchanged wait is not repeated: ``Engine._decide``)."""

    job_id: int
    kind: DecisionKind
    reason: str


@dataclass(frozen=True)
class Notify:
    """Wake whoever waits for news of the job (``zc-ctl job --wait``, the web view)."""

    job_id: int


@dataclass(frozen=True)
class FailAttempt:
    """End the job's running attempt as failed (retried or not per ``retryable`` and the retry policy)."""

    job_id: int
    error: str
    retryable: bool
    stats: TransferStats


@dataclass(frozen=True)
class Start:
    """Start an attempt of the job reading from ``source``: the destination gets its ReceiveOrder."""

    job_id: int
    source: Endpoint


Effect = Persist | Record | Notify | FailAttempt | Start


@dataclass(frozen=True)
class Deadlines:
    """The settings :func:`overdue` judges with (ControllerConfig's fields of the same names)."""

    ready_timeout: float
    stall_timeout: float
    attempt_grace: float


def overdue(runs: Iterable[Run], jobs: Mapping[int, Job], now: float, limits: Deadlines) -> list[FailAttempt]:
    """The running attempts to fail now, and why: held too long for a lost agent (fence.py), the source's failure
    no longer waiting for the destination's verdict, a destination that did not prepare within ``ready_timeout``,
    or no report from the busy side for ``stall_timeout``."""
    out: list[FailAttempt] = []
    for run in runs:
        job = jobs[run.job_id]
        if fence.expired(run, now):
            out.append(FailAttempt(run.job_id, fence.expiry_reason(run, limits.attempt_grace), True, run.progress))
        elif (sent := fence.sender_failure(run, now)) is not None:
            out.append(FailAttempt(run.job_id, sent.error, sent.retryable, sent.stats))
        elif not run.receiver_ready and now > run.ready_deadline:
            out.append(FailAttempt(run.job_id, f"{job.destination.host} did not prepare to receive within "
                                   f"{limits.ready_timeout:.0f}s", True, run.progress))
        elif run.receiver_ready and now - run.last_report > limits.stall_timeout:
            quiet = run.source.host if run.sender_done is None else job.destination.host
            out.append(FailAttempt(run.job_id, f"no report from {quiet} for {limits.stall_timeout:.0f}s; the "
                                   "transfer is stalled (check that host's zc-agent log)", True, run.progress))
    return out


def scheduled(decisions: Iterable[Decision], jobs: Mapping[int, Job], now: float) -> list[Effect]:
    """What the scheduler's ``decisions`` change: starts, and waits whose reason is new (saved, announced and
    explained; a wait that ends without a start, reason "", is saved and announced only)."""
    out: list[Effect] = []
    for d in decisions:
        job = jobs[d.job_id]
        if d.start:
            out.append(Start(job.id, d.source or job.source))
        elif job.wait_reason != d.reason:
            out += [Persist(replace(job, wait_reason=d.reason, updated_at=now)), Notify(job.id)]
            if d.reason:
                out.append(Record(job.id, DecisionKind.WAIT, d.reason))
    return out
