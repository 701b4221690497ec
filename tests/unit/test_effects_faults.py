"""The engine's fault decisions (controller/effects_faults.py) as tables: an agent lost and back, the attempts a new
leader adopts, a job whose scheduling raised; without asyncio, a store or agents."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from zcrepl.controller.effects import (
    Adopt,
    Drop,
    Effect,
    FailAttempt,
    Hold,
    Log,
    Order,
    Persist,
    Record,
    Regained,
)
from zcrepl.controller.effects_faults import adopted, host_lost, rejoined, schedule_failed
from zcrepl.controller.policy import DecisionKind
from zcrepl.controller.runs import Run
from zcrepl.core.types import CancelOrder, Endpoint, Job, JobOptions, JobState, TransferStats

SRC, DST = Endpoint("hostA", b"/a"), Endpoint("hostB", b"/b")
NOW, GRACE = 1000.0, 60.0
SOME = TransferStats(entries=7, bytes_done=70)
WHY = "its stream closed"


def job(job_id: int = 1, **kw: Any) -> Job:
    return Job(job_id, JobState.RUNNING, SRC, DST, attempts=1, **kw)


def run(job_id: int = 1, **kw: Any) -> Run:
    fields = {"receiver_ready": True, "sending": True, "progress": SOME, **kw}
    return Run(job_id, 1, b"t" * 32, NOW + 10, SRC, **fields)


HELD = Record(1, DecisionKind.WAIT, "hostB went offline during attempt 1 (its stream closed); the attempt is held for "
              "up to 60s, since its agents may still be running it: no other attempt starts meanwhile", every=True)
LOST = FailAttempt(1, "hostB went offline during the transfer (its stream closed)", True, SOME)


@pytest.mark.parametrize(
    ("r", "grace", "expected"),
    [
        (run(), GRACE, [Hold(1, "hostB", NOW + GRACE), HELD]),
        (run(lost_hosts={"hostA"}, lost_until=NOW + 30), GRACE, [Hold(1, "hostB", NOW + 30), HELD]),
        (run(lost_hosts={"hostA"}, lost_until=NOW), GRACE, [LOST]),  # its grace ran out already
        (run(sending=False), GRACE, [LOST]),  # no byte flows before the SendOrder: nothing to hold
        (run(), 0.0, [LOST]),  # no grace configured
    ],
    ids=["held", "first-loss-deadline-stands", "grace-over", "not-sending", "no-grace"],
)
def test_host_lost(r: Run, grace: float, expected: list[Effect]) -> None:
    fx = host_lost("hostB", WHY, [r], {1: job()}, NOW, grace)
    logs = [e for e in fx if isinstance(e, Log)]
    assert [e for e in fx if not isinstance(e, Log)] == expected
    held = isinstance(expected[0], Hold)
    assert [(e.message, e.warning, e.fields["agent"]) for e in logs] == ([("attempt held", True, "hostB")] if held
                                                                         else [])


def test_host_lost_leaves_the_attempts_of_other_hosts_alone() -> None:
    other = replace(job(2), source=Endpoint("hostC", b"/c"), destination=Endpoint("hostD", b"/d"))
    runs = [run(1), Run(2, 1, b"t", NOW, other.source, sending=True)]
    assert [type(e) for e in host_lost("hostB", WHY, runs, {1: job(), 2: other}, NOW, GRACE)] == [Hold, Record, Log]


BACK = "hostB's agent came back without attempt 1 (it restarted): the attempt is lost"


@pytest.mark.parametrize(
    ("r", "active", "expected"),
    [
        (run(lost_hosts={"hostB"}, lost_until=NOW + 5), {(1, 1)},
         [Regained(1, "hostB"), Record(1, DecisionKind.RESUME, "hostB is back and still runs attempt 1: it carries "
                                       "on", every=True)]),
        (run(lost_hosts={"hostB"}, lost_until=NOW + 5), {(1, 2)}, [FailAttempt(1, BACK, True, SOME)]),
        (run(), set(), [FailAttempt(1, BACK, True, SOME)]),  # never lost, yet back without it: it restarted
        (run(), {(1, 1)}, []),
        (run(sending=False), set(), []),  # before the SendOrder: the destination is the agent's to prepare again
    ],
    ids=["carries-on", "came-back-without", "restarted-unnoticed", "nothing-to-say", "not-sending"],
)
def test_rejoined(r: Run, active: set[tuple[int, int]], expected: list[Effect]) -> None:
    fx = rejoined("hostB", active, [r], {1: job()})
    assert [e for e in fx if not isinstance(e, Log)] == expected


def test_regained_ends_the_hold_once_no_agent_is_missing() -> None:
    r = run(lost_hosts={"hostA", "hostB"}, lost_until=NOW + 5)
    r.regained("hostB")
    assert (r.lost_hosts, r.lost_until) == ({"hostA"}, NOW + 5)
    r.regained("hostA")
    assert (r.lost_hosts, r.lost_until) == (set(), 0.0)


@pytest.mark.parametrize(
    ("source", "streams", "reads", "lost"),
    [
        (b"hostC:/c", 4, Endpoint("hostC", b"/c"), {"hostB", "hostC"}),  # a fan-out's replica, as the store kept it
        (b"", 0, SRC, {"hostA", "hostB"}),  # an attempt saved before its source was: the job's own; one stream
    ],
    ids=["replica-source", "own-source"],
)
def test_adopted(source: bytes, streams: int, reads: Endpoint, lost: set[str]) -> None:
    running = replace(job(options=JobOptions(streams=streams)), progress=SOME)
    fx = adopted([(1, 3, source), (9, 1, b"")], {1: running}, NOW, ready_timeout=30.0, grace=GRACE)
    want = Run(1, 3, b"", NOW + 30.0, reads, receiver_ready=True, sending=True, last_report=NOW,
               streams=max(1, streams), progress=SOME, rate_at=NOW, lost_hosts=lost, lost_until=NOW + GRACE)
    assert fx[:2] == [Adopt(want), Record(1, DecisionKind.WAIT, "attempt 3 was running when this controller took the "
                                                                "lead: held for up to 60s for its agents, which may "
                                                                "still be running it; no other attempt starts "
                                                                "meanwhile", every=True)]
    assert isinstance(fx[2], Log) and len(fx) == 3  # job 9 is settled already: left alone


def test_schedule_failed() -> None:
    err = OSError("disk gone")
    why = f"waiting: scheduling this job failed ({err!r}); tried again next pass (see the controller log)"
    queued = replace(job(), state=JobState.QUEUED)
    stop = "scheduling this job failed"
    assert schedule_failed(queued, run(), err) == [
        Drop(1), Order("hostA", CancelOrder(1, 1, stop)), Order("hostB", CancelOrder(1, 1, stop)),
        Persist(replace(queued, wait_reason=why)), Record(1, DecisionKind.WAIT, why)]
    assert schedule_failed(queued, None, err) == [Persist(replace(queued, wait_reason=why)),
                                                  Record(1, DecisionKind.WAIT, why)]
