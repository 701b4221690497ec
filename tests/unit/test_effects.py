"""The engine's pure core (controller/effects.py): deadlines of running attempts and the scheduler's decisions as
effects, judged without asyncio, a store or agents."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from zcrepl.controller.compression import CompressChoice
from zcrepl.controller.dataplane import Decision as Crypt
from zcrepl.controller.effects import (
    AwaitVerdict,
    Begin,
    Deadlines,
    Effect,
    EndAttempt,
    FailAttempt,
    Heard,
    Log,
    Misdirected,
    Notify,
    Order,
    Persist,
    Progress,
    Record,
    ReplicaDone,
    Send,
    Sending,
    Settle,
    Start,
    Succeed,
    Withdraw,
    cancelled,
    failed,
    overdue,
    reported,
    scheduled,
    send,
    started,
    succeeded,
    unknown_attempts,
    unready,
)
from zcrepl.controller.lifecycle import RetryPolicy
from zcrepl.controller.policy import DecisionKind
from zcrepl.controller.runs import Run
from zcrepl.controller.scheduler import Decision
from zcrepl.core.errors import Conflict
from zcrepl.core.types import (
    CancelOrder,
    Compress,
    Endpoint,
    Job,
    JobOptions,
    JobState,
    Phase,
    ReceiveOrder,
    Role,
    SendOrder,
    TransferReport,
    TransferStats,
)

SRC, DST, COPY = Endpoint("hostA", b"/a"), Endpoint("hostB", b"/b"), Endpoint("hostC", b"/c")
LIMITS = Deadlines(ready_timeout=30.0, stall_timeout=120.0, attempt_grace=60.0)
NOW = 1000.0
SOME = TransferStats(entries=7, bytes_done=70)


def job(job_id: int = 1, **kw: Any) -> Job:
    return Job(job_id, JobState.QUEUED, SRC, DST, **kw)


def run(job_id: int = 1, **kw: Any) -> Run:
    fields = {"ready_deadline": NOW + 10, "receiver_ready": True, "last_report": NOW - 1, "progress": SOME, **kw}
    return Run(job_id, 1, b"t" * 32, source=SRC, **fields)


FAILED_SEND = TransferReport(1, 1, Role.SENDER, Phase.FAILED, TransferStats(bytes_done=5), "the pipe broke", False)


@pytest.mark.parametrize(
    ("r", "expected"),
    [
        (run(), None),
        (run(receiver_ready=False, ready_deadline=NOW), None),  # at the deadline is not past it
        (run(receiver_ready=False, ready_deadline=NOW - 1),
         FailAttempt(1, "hostB did not prepare to receive within 30s", True, SOME)),
        (run(last_report=NOW - 120), None),
        (run(last_report=NOW - 121), FailAttempt(1, "no report from hostA for 120s; the transfer is stalled (check "
                                                    "that host's zc-agent log)", True, SOME)),
        (run(last_report=NOW - 121, sender_done=SOME), FailAttempt(
            1, "no report from hostB for 120s; the transfer is stalled (check that host's zc-agent log)", True, SOME)),
        (run(lost_hosts={"hostB"}, lost_until=NOW), FailAttempt(
            1, "hostB stayed out of reach of the controller for 60s (attempt_grace) during the transfer; its agent "
               "has stopped the attempt by now", True, SOME)),
        (run(lost_hosts={"hostB"}, lost_until=NOW + 1), None),
        (run(sender_failed=FAILED_SEND, sender_failed_at=NOW - 1), None),  # the destination may still say why
        (run(sender_failed=FAILED_SEND, sender_failed_at=NOW - 2),
         FailAttempt(1, "the pipe broke", False, TransferStats(bytes_done=5))),
    ],
    ids=["fine", "ready-at-deadline", "ready-late", "stall-at-limit", "stalled-source", "stalled-destination",
         "grace-over", "grace-left", "verdict-awaited", "verdict-wait-over"],
)
def test_overdue(r: Run, expected: FailAttempt | None) -> None:
    assert overdue([r], {1: job()}, NOW, LIMITS) == ([expected] if expected else [])


def test_overdue_judges_each_attempt_on_its_own() -> None:
    runs = [run(1), run(2, last_report=0.0), run(3, receiver_ready=False, ready_deadline=0.0)]
    assert [f.job_id for f in overdue(runs, {i: job(i) for i in (1, 2, 3)}, NOW, LIMITS)] == [2, 3]


def test_scheduled() -> None:
    jobs = {1: job(1), 2: job(2, wait_reason="waiting: hostB disk 93% busy"), 3: job(3, wait_reason="old"),
            4: job(4, wait_reason="old"), 5: job(5)}
    decisions = [Decision(1, True), Decision(2, False, "waiting: hostB disk 93% busy"), Decision(3, False, "new"),
                 Decision(4, False, ""), Decision(5, True, source=COPY)]
    assert scheduled(decisions, jobs, NOW) == [
        Start(1, SRC),
        Persist(replace(jobs[3], wait_reason="new", updated_at=NOW)), Notify(3), Record(3, DecisionKind.WAIT, "new"),
        Persist(replace(jobs[4], wait_reason="", updated_at=NOW)), Notify(4),
        Start(5, COPY),
    ]


def rep(role: Role, phase: Phase, *, attempt: int = 1, error: str = "", retryable: bool = True) -> TransferReport:
    return TransferReport(1, attempt, role, phase, SOME, error, retryable)


S, R = Role.SENDER, Role.RECEIVER


@pytest.mark.parametrize(
    ("r", "report", "agent", "online", "expected"),
    [
        (run(receiver_ready=False), rep(R, Phase.READY), "hostB", True, [Send(1)]),
        (run(), rep(S, Phase.PROGRESS), "hostA", True, [Progress(1, SOME), Notify(1)]),
        (run(), rep(S, Phase.DONE), "hostA", True, []),  # the destination's verdict still to come
        (run(receiver_done=SOME), rep(S, Phase.DONE), "hostA", True, [Succeed(1)]),
        (run(sender_done=SOME), rep(R, Phase.DONE), "hostB", True, [Succeed(1)]),
        (run(sender_done=SOME), rep(S, Phase.DONE), "hostA", True, []),  # the same side twice is not both
        (run(), rep(R, Phase.FAILED, error="disk full", retryable=False), "hostB", True,
         [FailAttempt(1, "disk full", False, SOME)]),
        (run(), rep(S, Phase.FAILED, error="reset"), "hostA", True, [AwaitVerdict(rep(S, Phase.FAILED, error="reset"),
                                                                                   NOW)]),
        (run(), rep(S, Phase.FAILED, error="reset"), "hostA", False, [FailAttempt(1, "reset", True, SOME)]),
        (run(), rep(S, Phase.FAILED, error="no such path", retryable=False), "hostA", True,
         [FailAttempt(1, "no such path", False, SOME)]),  # final already: nothing to wait for
        (run(receiver_ready=False), rep(S, Phase.FAILED), "hostA", True,
         [FailAttempt(1, "hostA reported a failure", True, SOME)]),  # the destination has not the attempt yet
        (run(sender_failed=FAILED_SEND), rep(S, Phase.FAILED, error="again"), "hostA", True,
         [FailAttempt(1, "again", True, SOME)]),  # only the first failure waits
    ],
    ids=["ready", "progress", "one-side-done",
         "sender-second", "receiver-second", "same-side-twice", "destination-failed", "source-waits-verdict",
         "destination-offline", "source-final", "not-ready", "second-source-failure"],
)
def test_reported(r: Run, report: TransferReport, agent: str, online: bool, expected: list[Effect]) -> None:
    """A report of the attempt in flight, from its side: the run hears it first, then what it changes."""
    assert reported(r, job(), report, agent, NOW, online) == [Heard(report, NOW), *expected]


@pytest.mark.parametrize(
    ("r", "report", "agent", "expected"),
    [
        (None, rep(S, Phase.DONE), "hostA", []),  # the attempt was settled already
        (run(), rep(S, Phase.DONE, attempt=2), "hostA", []),  # a report of another attempt
        (run(), rep(S, Phase.DONE), "hostB", [Misdirected(1, "hostB")]),
        (run(), rep(R, Phase.DONE), "hostA", [Misdirected(1, "hostA")]),
    ],
    ids=["late", "other-attempt", "wrong-sender", "wrong-receiver"],
)
def test_reported_changes_nothing_when_not_the_attempts_word(r: Run | None, report: TransferReport, agent: str,
                                                             expected: list[Effect]) -> None:
    assert reported(r, job(), report, agent, NOW, True) == expected


def test_reported_about_a_job_on_one_host_fails_at_once() -> None:
    """Source and destination on one host: the source's failure is the host's only word, nothing to wait for."""
    same = replace(job(), destination=Endpoint("hostA", b"/b"))
    report = rep(S, Phase.FAILED, error="reset")
    assert reported(run(), same, report, "hostA", NOW, True) == [Heard(report, NOW), FailAttempt(1, "reset", True,
                                                                                               SOME)]


def test_heard_takes_a_final_report_as_its_sides_result() -> None:
    r = run()
    r.heard(rep(S, Phase.PROGRESS), NOW)
    assert (r.last_report, r.sender_done) == (NOW, None)
    r.heard(rep(R, Phase.DONE), NOW + 1)
    assert (r.last_report, r.sender_done, r.receiver_done) == (NOW + 1, None, SOME)


def test_heard_marks_the_destination_ready_before_the_send_is_decided() -> None:
    r = run(receiver_ready=False)
    r.heard(rep(S, Phase.READY), NOW)  # only the destination's READY counts
    assert not r.receiver_ready
    r.heard(rep(R, Phase.READY), NOW)
    assert r.receiver_ready


RUNNING = replace(job(attempts=1, max_attempts=3, updated_at=NOW - 4), state=JobState.RUNNING)
RETRY = RetryPolicy(max_attempts=3, base=2.0, cap=60.0)


def orders(reason: str, discard: bool) -> list[Effect]:
    return [Order(h, CancelOrder(1, 1, reason, discard)) for h in ("hostA", "hostB")]


def test_succeeded_takes_the_sources_stats_with_the_destinations_counts() -> None:
    r = run(sender_done=TransferStats(files_done=3, bytes_done=30), receiver_done=TransferStats(linked=2))
    fx = succeeded(RUNNING, r, NOW)
    stats = TransferStats(files_done=3, bytes_done=30, linked=2)
    assert fx[:2] == [EndAttempt(1, "", stats, False), Settle(replace(
        RUNNING, state=JobState.DONE, progress=stats, updated_at=NOW, finished_at=NOW))]
    assert fx[2] == Record(1, DecisionKind.DONE, "attempt 1 done: 3 files, 30 bytes moved, 0 up to date")
    assert isinstance(fx[3], Log) and fx[3].fields["seconds"] == 4.0 and not fx[3].warning


def test_a_fanout_destination_done_is_a_replica_before_its_job_settles() -> None:
    fx = succeeded(replace(RUNNING, group_id=9), run(sender_done=SOME, receiver_done=SOME), NOW)
    assert [type(e) for e in fx[:3]] == [EndAttempt, ReplicaDone, Settle] and fx[1] == ReplicaDone(9, DST)


@pytest.mark.parametrize(
    ("failures", "retryable", "state", "then", "discard"),
    [
        (0, True, JobState.QUEUED, "retry in 1.0s", False),  # half-jitter at its low end: base/2
        (2, True, JobState.FAILED, "no retry left", True),
        (0, False, JobState.FAILED, "not retried: another attempt cannot help", True),
    ],
    ids=["retried", "budget-spent", "not-retryable"],
)
def test_failed(failures: int, retryable: bool, state: JobState, then: str, discard: bool) -> None:
    fx = failed(replace(RUNNING, failures=failures), run(), "reset", retryable, TransferStats(), NOW, RETRY,
                rand=lambda: 0.0)
    assert fx[0] == EndAttempt(1, "reset", SOME, retryable)  # empty stats: the last progress counts
    assert fx[1:3] == orders("reset", discard)
    assert isinstance(fx[3], Log) and fx[3].warning and fx[3].fields["next"] == state.value
    assert fx[4] == Record(1, DecisionKind.FAIL, f"attempt 1 failed: reset; {then}")
    assert isinstance(fx[5], Settle) and fx[5].job.state is state and fx[5].job.failures == failures + 1


def test_failed_keeps_the_reports_stats_when_they_count_something() -> None:
    stats = TransferStats(bytes_done=5)
    assert failed(RUNNING, run(), "x", True, stats, NOW, RETRY)[0] == EndAttempt(1, "x", stats, True)


def test_cancelled() -> None:
    why = "cancelled by the operator"
    after = replace(RUNNING, state=JobState.CANCELLED, updated_at=NOW, finished_at=NOW, error=why)
    fx = cancelled(RUNNING, run(), NOW)
    assert fx[:5] == [Withdraw(1, why), *orders(why, True), Settle(after), Record(1, DecisionKind.CANCEL, why)]
    queued = cancelled(job(), None, NOW)  # nothing runs: nothing to call off
    assert [type(e) for e in queued] == [Settle, Record, Log]
    with pytest.raises(Conflict, match="already done"):
        cancelled(replace(RUNNING, state=JobState.DONE), None, NOW)


@pytest.mark.parametrize(
    ("source", "ranked", "kind", "reason"),
    [
        (SRC, "", DecisionKind.START, "attempt 2 started: hostA and hostB are online and under their load thresholds; "
                                      "encrypted: encrypt = always"),
        (COPY, "hostC: 80 MB/s", DecisionKind.SWITCH_SOURCE,
         "attempt 2 started from the finished replica hostC:/c: hostC and hostB are online and under their load "
         "thresholds; copies ranked by link throughput, load and failures: hostC: 80 MB/s; "
         "encrypted: encrypt = always"),
    ],
    ids=["own-source", "replica"],
)
def test_started(source: Endpoint, ranked: str, kind: DecisionKind, reason: str) -> None:
    queued = replace(job(attempts=1, progress=SOME, wait_reason="waiting"), options=JobOptions(streams=2))
    crypt = Crypt(True, "encrypted: encrypt = always")
    fx = started(queued, source, NOW, ticket=b"t" * 32, ready_by=NOW + 30, crypt=crypt, addresses=("10.0.0.1",),
                 ranked=ranked)
    after = replace(queued, state=JobState.RUNNING, attempts=2, updated_at=NOW, started_at=NOW, wait_reason="",
                    progress=TransferStats())
    assert fx[:2] == [Persist(after), Begin(Run(1, 2, b"t" * 32, NOW + 30, source, encrypt=True))]
    assert isinstance(fx[2], Log) and fx[2].fields["source"] == source.host
    assert fx[3:] == [Record(1, kind, reason, {"attempt": 2, "source": source.host}),
                      Order("hostB", ReceiveOrder(1, 2, b"t" * 32, b"/b", JobOptions(streams=2, encrypt=True),
                                                  source.host, ("10.0.0.1",))),
                      Notify(1)]


def test_only_a_queued_job_starts() -> None:
    with pytest.raises(Conflict, match="only a queued job can start"):
        started(RUNNING, SRC, NOW, ticket=b"t", ready_by=NOW, crypt=Crypt(False, ""), addresses=())


def test_send() -> None:
    r = run(encrypt=True)
    fx = send(job(options=JobOptions(streams=8)), r, "10.0.0.2:7001", NOW, 3, "hostA's disk is 70% busy",
              CompressChoice(True, "zstd: the link moves 5 MB/s"))
    assert isinstance(fx[0], Log) and fx[0].fields["streams"] == 3
    assert fx[1:] == [
        Record(1, DecisionKind.START, "sending with 3 streams: hostA's disk is 70% busy", {"streams": 3}),
        Record(1, DecisionKind.START, "zstd: the link moves 5 MB/s", {"compress": True}),
        Order("hostA", SendOrder(1, 1, r.ticket, b"/a", JobOptions(streams=3, encrypt=True, compress=Compress.ON),
                                 "hostB", "10.0.0.2:7001", b"/b")),
        Sending(1, 3, True, NOW),
    ]


def test_unready() -> None:
    assert unready(job(), run()) == [FailAttempt(1, "hostA went offline before the transfer started", True, SOME)]


def test_unknown_attempts() -> None:
    """An agent back with attempts: the one in flight here carries on, a settled or superseded one is stopped."""
    stale = [(1, 1), (1, 0), (5, 2)]
    assert unknown_attempts("hostA", stale, {1: run(1)}) == [
        Order("hostA", CancelOrder(1, 0, "attempt unknown to the controller")),
        Order("hostA", CancelOrder(5, 2, "attempt unknown to the controller"))]
