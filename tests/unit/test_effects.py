"""The engine's pure core (controller/effects.py): deadlines of running attempts and the scheduler's decisions as
effects, judged without asyncio, a store or agents."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from zcrepl.controller.effects import Deadlines, FailAttempt, Notify, Persist, Record, Start, overdue, scheduled
from zcrepl.controller.policy import DecisionKind
from zcrepl.controller.runs import Run
from zcrepl.controller.scheduler import Decision
from zcrepl.core.types import Endpoint, Job, JobState, Phase, Role, TransferReport, TransferStats

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
