"""Job state transitions as pure functions of (job, event, now, policy).

::

    queued --start--> running --done--> done
      ^                  |  \\--failed, budget left--> queued (next_attempt_at = now + backoff)
      |                  |   \\-failed, not retryable or budget spent--> failed
      +--cancel--> cancelled <--cancel--+
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from zcrepl.core.backoff import backoff_delay
from zcrepl.core.config import ControllerConfig
from zcrepl.core.errors import Conflict
from zcrepl.core.settings import default_of
from zcrepl.core.types import Job, JobState, TransferStats


@dataclass(frozen=True)
class RetryPolicy:
    """The engine builds it from ControllerConfig; built without one (tests) it holds the config's defaults."""

    max_attempts: int = default_of(ControllerConfig, "max_attempts")
    base: float = default_of(ControllerConfig, "retry_base")
    cap: float = default_of(ControllerConfig, "retry_max")


def started(job: Job, now: float) -> Job:
    if job.state is not JobState.QUEUED:
        raise Conflict(f"job {job.id} is {job.state.value}, only a queued job can start")
    return replace(job, state=JobState.RUNNING, attempts=job.attempts + 1, updated_at=now,
                   started_at=job.started_at or now, wait_reason="", progress=TransferStats())


def succeeded(job: Job, stats: TransferStats, now: float) -> Job:
    return replace(job, state=JobState.DONE, progress=stats, updated_at=now, finished_at=now, error="",
                   wait_reason="", next_attempt_at=0.0)


def failed_attempt(job: Job, error: str, retryable: bool, now: float, policy: RetryPolicy,
                   rand: Callable[[], float] | None = None) -> Job:
    """Back to the queue with a backoff while the budget lasts, else failed for good."""
    failures = job.failures + 1
    if retryable and failures < job.max_attempts:
        delay = backoff_delay(failures, policy.base, policy.cap, rand) if rand else backoff_delay(
            failures, policy.base, policy.cap)
        return replace(job, state=JobState.QUEUED, failures=failures, error=error, updated_at=now,
                       next_attempt_at=now + delay,
                       wait_reason=f"retry {failures + 1} of {job.max_attempts} in {delay:.1f}s after: {error}")
    return replace(job, state=JobState.FAILED, failures=failures, error=error, updated_at=now, finished_at=now,
                   wait_reason="", next_attempt_at=0.0)


def cancelled(job: Job, now: float) -> Job:
    if job.state.final:
        raise Conflict(f"job {job.id} is already {job.state.value}; nothing to cancel")
    return replace(job, state=JobState.CANCELLED, updated_at=now, finished_at=now, wait_reason="",
                   error=job.error or "cancelled by the operator")
