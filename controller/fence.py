"""Attempts whose agents went out of reach: kept, never run twice at once, until the agents report or time out.

An agent the controller loses (stream closed, heartbeats stopped) may still be running its attempts: a cut
between it and the controller says nothing about the link between the two agents, which carries the data.
So the attempt is not failed at once: it is *held* for ``attempt_grace`` seconds, during which no other
attempt of the job starts (the run still holds its hosts and its destination in the scheduler). It ends when:

- the agent comes back and lists the attempt as running (or as finished, its final report following the
  Register): the attempt carries on as if nothing happened;
- the agent comes back without it (it restarted): the attempt failed, the job is retried now;
- the other agent of the attempt reports its end (the destination is the only writer, and it fences older
  attempts itself, see agent/attempts.py);
- ``attempt_grace`` passes: the attempt is failed and retried. The agent stops a transfer itself once it has
  been without the controller for ``attempt_grace`` minus the time it may take to notice the loss (gRPC
  keepalive), so by then it is no longer running.

Also here, whose word settles a failed attempt: when the source reports a failure first, it is often only the
echo of the destination's ("the destination aborted"), which says what went wrong and whether another attempt
can help (a full filesystem cannot be retried away). So the source's report waits up to ``VERDICT_WAIT`` seconds
for the destination's.

Pure functions over the engine's runs and jobs; the engine applies what they return.
"""

from __future__ import annotations

from zcrepl.controller.runs import Run
from zcrepl.core.types import Job, Role, TransferReport

VERDICT_WAIT = 2.0


def holds(run: Run, job: Job, host: str) -> bool:
    """``host`` may be moving data of the attempt: its source or its destination once the SendOrder went out
    (before that no byte can flow, so losing either end simply fails the attempt)."""
    return run.sending and host in (job.destination.host, run.source.host)


def hold_until(run: Run, now: float, grace: float) -> float:
    """``host`` went out of reach: until when the attempt is kept for it, ``grace`` seconds from its first loss
    (an earlier loss's deadline stands); 0.0 when it cannot be kept (no grace configured, or its grace already ran
    out). The engine applies it with ``Run.held``."""
    if grace <= 0 or (run.lost_until and now >= run.lost_until):
        return 0.0
    return run.lost_until or now + grace


def rejoin(run: Run, job: Job, host: str, active: set[tuple[int, int]]) -> str:
    """``host`` registered again with ``active`` attempts: '' when the attempt carries on (``Run.regained``),
    else why it failed."""
    if not holds(run, job, host) or (job.id, run.attempt) in active:
        return ""
    return f"{host}'s agent came back without attempt {run.attempt} (it restarted): the attempt is lost"


def expired(run: Run, now: float) -> bool:
    return bool(run.lost_until) and now >= run.lost_until


def expiry_reason(run: Run, grace: float) -> str:
    hosts = " and ".join(sorted(run.lost_hosts)) or "an agent"
    return (f"{hosts} stayed out of reach of the controller for {grace:g}s (attempt_grace) during the transfer; "
            "its agent has stopped the attempt by now")


def awaits_destination(run: Run, job: Job, report: TransferReport, destination_online: bool) -> bool:
    """Whether the source's failure ``report`` waits for the destination's: a retryable one, the first, once the
    destination (connected, and a different host) has the attempt; the engine keeps it (``Run.sender_failed``) and
    fails the attempt with the destination's report, or with this one after the wait. A failure that is final
    already (a missing source path) does not wait."""
    return (report.role is Role.SENDER and report.retryable and run.sender_failed is None and run.receiver_ready
            and destination_online and run.source.host != job.destination.host)


def sender_failure(run: Run, now: float) -> TransferReport | None:
    """The source's held failure once the destination has had ``VERDICT_WAIT`` seconds to give its own."""
    if run.sender_failed is not None and now - run.sender_failed_at >= VERDICT_WAIT:
        return run.sender_failed
    return None
