"""The engine's decisions as effects (issue 15, item 6): pure functions take what the engine knows (runs, jobs, the
scheduler's decisions, the clock's reading) and return what must happen, which the engine, a thin shell over the
store and the agent sessions, carries out in order (``Engine._apply``).

The scheduling pass: which running attempts are past a deadline (:func:`overdue`) and what the scheduler's
decisions change (:func:`scheduled`); the agents' reports (:func:`reported`); how an attempt ends and its job
settles (:func:`succeeded`, :func:`failed`, :func:`cancelled`); an attempt's start (:func:`started`) and its
send once the destination is ready (:func:`send`, :func:`unready`). No I/O, no clock, no asyncio, no store:
tested with tables.

Beside it, with the same effects: effects_faults.py (agents lost and back, attempts adopted after a takeover, a job
whose scheduling raised), effects_pacing.py (the send's streams and compression, throttling, link steps) and
effects_submit.py (a new job's checks and creation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from zcrepl.controller import dataplane, fence, lifecycle
from zcrepl.controller.compression import CompressChoice
from zcrepl.controller.policy import DecisionKind
from zcrepl.controller.runs import Run, job_fields, skip_note
from zcrepl.controller.scheduler import Decision
from zcrepl.core.types import (
    CancelOrder,
    Compress,
    Endpoint,
    Job,
    JobState,
    Phase,
    ReceiveOrder,
    Role,
    SendOrder,
    ThrottleOrder,
    TransferReport,
    TransferStats,
)


@dataclass(frozen=True)
class Persist:
    """Keep ``job`` as the engine's current copy and save its mutable fields."""

    job: Job


@dataclass(frozen=True)
class Record:
    """One line of the job's explain history (an unchanged wait is not repeated, unless ``every``:
    ``Engine._record``)."""

    job_id: int
    kind: DecisionKind
    reason: str
    details: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    every: bool = False


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


@dataclass(frozen=True)
class Heard:
    """The running attempt takes ``report``'s bookkeeping: when its side last spoke, what it skipped, a dry run's
    plan, and a final report's stats as that side's result."""

    report: TransferReport
    at: float


@dataclass(frozen=True)
class Misdirected:
    """A report about the job came from ``agent``, which has no side in its attempt: ignored, and logged."""

    job_id: int
    agent: str


@dataclass(frozen=True)
class Progress:
    """The attempt's running totals (kept in memory only: too frequent to write, the final ones are saved)."""

    job_id: int
    stats: TransferStats


@dataclass(frozen=True)
class Send:
    """The destination is ready: choose the streams and compression and give the source its SendOrder."""

    job_id: int


@dataclass(frozen=True)
class AwaitVerdict:
    """Keep the source's failure ``report`` until the destination's own says why (fence.py, ``VERDICT_WAIT``)."""

    report: TransferReport
    at: float


@dataclass(frozen=True)
class Succeed:
    """Both sides are done: end the attempt and the job as done."""

    job_id: int


@dataclass(frozen=True)
class EndAttempt:
    """The job's attempt is over, done (``error`` "") or failed: forget its run, let its link and the metrics learn
    from ``stats`` (``link_failed``: count it against the link), and save its end, what it skipped and a dry run's
    plan."""

    job_id: int
    error: str
    stats: TransferStats
    link_failed: bool


@dataclass(frozen=True)
class Withdraw:
    """The job's attempt is called off (``reason``): forget its run and save its end; its link learns nothing."""

    job_id: int
    reason: str


@dataclass(frozen=True)
class Order:
    """Give ``host``'s agent ``order`` (if it is connected: one that is not learns at its Register)."""

    host: str
    order: CancelOrder | ReceiveOrder | SendOrder | ThrottleOrder


@dataclass(frozen=True)
class ReplicaDone:
    """A fan-out destination is complete: a source for the group's other jobs."""

    group_id: int
    replica: Endpoint


@dataclass(frozen=True)
class Settle:
    """Save the job as it now is, count it, forget it when final, and announce it (``Engine._settle``)."""

    job: Job


@dataclass(frozen=True)
class Begin:
    """Save the start of ``run``'s attempt and keep it as the job's attempt in flight."""

    run: Run


@dataclass(frozen=True)
class Sending:
    """The SendOrder went out with ``streams`` streams (``compressed`` or not): the run and its link measure it
    from ``at``."""

    job_id: int
    streams: int
    compressed: bool
    at: float


@dataclass(frozen=True)
class Log:
    """One line of the controller's log."""

    message: str
    fields: Mapping[str, object]
    warning: bool = False


@dataclass(frozen=True)
class Track:
    """A job just created in the store: keep it as queued here (nothing to save: the store made it)."""

    job: Job


@dataclass(frozen=True)
class Group:
    """The jobs of one fan-out, grouped under ``group_id``: finished destinations become sources for the others."""

    job_ids: tuple[int, ...]
    group_id: int


@dataclass(frozen=True)
class Wake:
    """Run a scheduling pass soon (something it decides on changed)."""


@dataclass(frozen=True)
class Hold:
    """``host`` went out of reach during the job's attempt: keep the attempt for it until ``until`` (fence.py)."""

    job_id: int
    host: str
    until: float


@dataclass(frozen=True)
class Regained:
    """``host`` came back still running the job's held attempt: it carries on."""

    job_id: int
    host: str


@dataclass(frozen=True)
class Adopt:
    """Keep ``run``, an attempt a previous leader left running (its start is saved already), as the job's attempt
    in flight, and let its link measure it."""

    run: Run


@dataclass(frozen=True)
class Drop:
    """Forget the job's attempt in flight without saving anything (its scheduling failed half-way)."""

    job_id: int


@dataclass(frozen=True)
class Paced:
    """The load policy looked at the job's running send at ``at`` (``rate_bytes`` done then) and keeps it at
    ``bwlimit`` bytes/s (0: no cap of its own), ``paused`` or not."""

    job_id: int
    at: float
    rate_bytes: int
    bwlimit: int
    paused: bool


# The shell carries out each family in one place (``Engine._apply``); mypy checks that none is left out.
JobEffect = Persist | Record | Notify | Settle | Order | Log | Track | Group | Wake
AttemptEffect = Start | FailAttempt | Begin | Sending | EndAttempt | Withdraw | ReplicaDone
ReportEffect = Heard | Misdirected | Progress | Send | AwaitVerdict | Succeed
RunEffect = Hold | Regained | Adopt | Drop | Paced
Effect = JobEffect | AttemptEffect | ReportEffect | RunEffect


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


def reported(run: Run | None, job: Job | None, r: TransferReport, agent: str, now: float,
             destination_online: bool) -> list[Effect]:
    """What ``agent``'s report ``r`` changes: nothing when its attempt is settled already (a late report), a
    logged refusal when ``agent`` is not the side it speaks for; else the run takes it (:class:`Heard`) and then
    the destination's readiness starts the send, progress is announced, the second side done ends the job, and a
    failure ends the attempt (the source's retryable one first waits for the destination's verdict while
    ``destination_online``)."""
    if run is None or job is None or run.attempt != r.attempt:
        return []
    if agent != (run.source.host if r.role is Role.SENDER else job.destination.host):
        return [Misdirected(job.id, agent)]
    out: list[Effect] = [Heard(r, now)]
    if r.phase is Phase.READY and r.role is Role.RECEIVER:
        out.append(Send(job.id))
    elif r.phase is Phase.PROGRESS:
        out += [Progress(job.id, r.stats), Notify(job.id)]
    elif r.phase is Phase.DONE:
        if (run.receiver_done if r.role is Role.SENDER else run.sender_done) is not None:
            out.append(Succeed(job.id))
    elif r.phase is Phase.FAILED:
        if fence.awaits_destination(run, job, r, destination_online):
            out.append(AwaitVerdict(r, now))
        else:
            out.append(FailAttempt(job.id, r.error or f"{agent} reported a failure", r.retryable, r.stats))
    return out


def unknown_attempts(host: str, active: Iterable[tuple[int, int]], runs: Mapping[int, Run]) -> list[Order]:
    """``host``'s agent registered running ``active`` (job, attempt) pairs: those that are not the jobs' attempts in
    flight here (settled, or superseded while it was away) are stopped."""
    return [Order(host, CancelOrder(job_id, attempt, "attempt unknown to the controller"))
            for job_id, attempt in active if (run := runs.get(job_id)) is None or run.attempt != attempt]


def cancel_orders(job: Job, run: Run, reason: str, discard: bool = False) -> list[Order]:
    """Tell both agents of the attempt to stop it (``discard``: and drop what it kept for a resume)."""
    return [Order(h, CancelOrder(job.id, run.attempt, reason, discard))
            for h in sorted({run.source.host, job.destination.host})]


def succeeded(job: Job, run: Run, now: float) -> list[Effect]:
    """Both sides of ``run`` reported done: the attempt's stats (the source's, with what only the destination
    knows), the job done, a fan-out's new replica, its explain line."""
    stats = run.with_receiver_counts(replace(run.sender_done or run.progress, entries_skipped=run.entries_skipped()))
    out: list[Effect] = [EndAttempt(job.id, "", stats, False)]
    if job.group_id:
        out.append(ReplicaDone(job.group_id, job.destination))
    return [*out, Settle(lifecycle.succeeded(job, stats, now)),
            Record(job.id, DecisionKind.DONE, f"attempt {run.attempt} done: {stats.files_done} files, "
                   f"{stats.bytes_done} bytes moved, {stats.files_skipped} up to date{skip_note(stats, run)}"),
            Log("job done", {**job_fields(job, run), "files": stats.files_done, "bytes": stats.bytes_done,
                             "skipped": stats.files_skipped, "deleted": stats.deleted,
                             "left_out": stats.entries_skipped, "file_errors": stats.file_errors,
                             "seconds": round(now - job.updated_at, 3)})]


def failed(job: Job, run: Run, error: str, retryable: bool, stats: TransferStats, now: float,
           retry: lifecycle.RetryPolicy, rand: Callable[[], float] | None = None) -> list[Effect]:
    """``run`` failed with ``error``: the job back in the queue after a backoff (``rand`` draws its jitter) while
    ``retryable`` and its budget last, else failed; both agents told to stop (a job given up keeps nothing for a
    resume that will never come). ``stats`` count when they say anything, else the last progress does."""
    merged = stats if stats.entries or stats.bytes_done else run.progress
    after = lifecycle.failed_attempt(replace(job, progress=merged), error, retryable, now, retry, rand)
    then = (f"retry in {after.next_attempt_at - now:.1f}s" if after.state is JobState.QUEUED
            else "no retry left" if retryable else "not retried: another attempt cannot help")
    return [EndAttempt(job.id, error, merged, retryable),
            *cancel_orders(after, run, error, discard=after.state is JobState.FAILED),
            Log("attempt failed", {**job_fields(after, run), "error": error, "retryable": retryable,
                                   "next": after.state.value}, warning=True),
            Record(job.id, DecisionKind.FAIL, f"attempt {run.attempt} failed: {error}; {then}"),
            Settle(after)]


def cancelled(job: Job, run: Run | None, now: float) -> list[Effect]:
    """The operator cancels ``job`` (lifecycle.cancelled refuses a finished one): its attempt, if one runs, is
    called off and its agents drop what they kept for a resume."""
    why = "cancelled by the operator"
    after = lifecycle.cancelled(job, now)
    stop: list[Effect] = [] if run is None else [Withdraw(job.id, why), *cancel_orders(after, run, why, True)]
    return [*stop, Settle(after), Record(job.id, DecisionKind.CANCEL, why),
            Log("job cancelled", job_fields(after, run))]


def started(job: Job, source: Endpoint, now: float, *, ticket: bytes, ready_by: float, crypt: dataplane.Decision,
            addresses: tuple[str, ...], ranked: str = "") -> list[Effect]:
    """Start an attempt of the queued ``job`` reading ``source`` (a fan-out's finished replica, ``ranked`` why, or
    its own source): the job running, the attempt saved, the destination given its ReceiveOrder with ``ticket`` (the
    source's data connection proves itself with it), from ``addresses`` the source may connect from, and ready by
    ``ready_by``; TLS on its data connections as ``crypt`` decided."""
    after = lifecycle.started(job, now)
    run = Run(job.id, after.attempts, ticket, ready_by, source, encrypt=crypt.encrypt)
    via = "" if source == job.source else f" from the finished replica {source}"
    why = f"; copies ranked by link throughput, load and failures: {ranked}" if ranked else ""
    order = ReceiveOrder(job.id, run.attempt, ticket, job.destination.path, replace(job.options, encrypt=run.encrypt),
                         source.host, addresses)
    return [Persist(after), Begin(run), Log("attempt started", job_fields(after, run)),
            Record(job.id, DecisionKind.SWITCH_SOURCE if via else DecisionKind.START,
                   f"attempt {run.attempt} started{via}: {source.host} and {job.destination.host} are online and "
                   f"under their load thresholds{why}; {crypt.why}", {"attempt": run.attempt, "source": source.host}),
            Order(job.destination.host, order), Notify(job.id)]


def unready(job: Job, run: Run) -> list[Effect]:
    """The destination is ready for ``run`` but an end went offline meanwhile: the attempt fails, and is retried."""
    return [FailAttempt(job.id, f"{run.source.host} went offline before the transfer started", True, run.progress)]


def send(job: Job, run: Run, data_address: str, now: float, streams: int, why: str,
         compress: CompressChoice) -> list[Effect]:
    """The destination is ready for ``run``: the source gets its SendOrder towards the destination's
    ``data_address`` with ``streams`` streams (``why``: the load policy's reason) and zstd or not as ``compress``
    decided."""
    options = replace(job.options, streams=streams, encrypt=run.encrypt,
                      compress=Compress.ON if compress.on else Compress.OFF)
    return [Log("streams chosen", {**job_fields(job, run), "streams": streams, "why": why, "compress": compress.on}),
            Record(job.id, DecisionKind.START, f"sending with {streams} streams: {why}", {"streams": streams}),
            Record(job.id, DecisionKind.START, compress.why, {"compress": compress.on}),
            Order(run.source.host, SendOrder(job.id, run.attempt, run.ticket, run.source.path, options,
                                             job.destination.host, data_address, job.destination.path)),
            Sending(job.id, streams, compress.on, now)]
