"""Tests for zcrepl.controller.policy's priorities: levels, aging, the order of the queue."""

from __future__ import annotations

import itertools
import random

import pytest
from policyhelpers import NOW, ep

from zcrepl.controller.policy import Priority, effective_priority, order_queue
from zcrepl.core.types import Job, JobOptions, JobState

# -- priorities ------------------------------------------------------------------------------------

AGING = 300.0


@pytest.mark.parametrize(
    ("prio", "waited", "aging", "expected"),
    [
        (Priority.LOW, 0.0, AGING, 0.0),
        (Priority.HIGH, 0.0, AGING, 2.0),
        (Priority.LOW, 450.0, AGING, 1.5),
        (Priority.NORMAL, 900.0, AGING, 4.0),
        (Priority.LOW, 900.0, 0.0, 0.0),  # aging disabled
        (Priority.HIGH, -5.0, AGING, 2.0),  # clock skew: never below its level
    ],
)
def test_effective_priority(prio: Priority, waited: float, aging: float, expected: float) -> None:
    assert effective_priority(prio, NOW - waited, NOW, aging) == pytest.approx(expected)


def qjob(job_id: int, created: float, priority: Priority = Priority.NORMAL) -> Job:
    return Job(id=job_id, state=JobState.QUEUED, source=ep("a"), destination=ep("b"), created_at=created,
               options=JobOptions(priority=priority))


@pytest.mark.parametrize(
    ("low_waited", "expected"),
    [(0.0, [2, 1]), (2 * AGING - 1, [2, 1]), (2 * AGING + 1, [1, 2]), (10 * AGING, [1, 2])],
    ids=["fresh", "just-before-aging", "just-after-aging", "long-wait"],
)
def test_low_job_overtakes_fresh_high_after_aging(low_waited: float, expected: list[int]) -> None:
    low, high = qjob(1, NOW - low_waited, Priority.LOW), qjob(2, NOW, Priority.HIGH)
    got = order_queue([low, high], AGING)
    assert [j.id for j in got] == expected


@pytest.mark.parametrize(
    ("levels", "waited", "expected"),
    [
        # (priority of jobs 1, 2, 3), (seconds each has waited), start order
        ((Priority.LOW, Priority.NORMAL, Priority.HIGH), (0.0, 0.0, 0.0), [3, 2, 1]),
        ((Priority.HIGH, Priority.HIGH, Priority.HIGH), (10.0, 30.0, 20.0), [2, 3, 1]),  # FIFO within a level
        ((Priority.NORMAL, Priority.HIGH, Priority.LOW), (AGING + 1, 0.0, 0.0), [1, 2, 3]),  # aged past high
        ((Priority.NORMAL, Priority.HIGH, Priority.LOW), (AGING - 1, 0.0, 0.0), [2, 1, 3]),
        ((Priority.LOW, Priority.NORMAL, Priority.HIGH), (AGING + 1, AGING + 1, 0.0), [2, 3, 1]),
        ((Priority.LOW, Priority.HIGH, Priority.NORMAL), (3 * AGING, AGING, 0.0), [1, 2, 3]),  # tie: older
    ],
)
def test_order_queue_by_job_priority(levels: tuple[Priority, ...], waited: tuple[float, ...],
                                     expected: list[int]) -> None:
    jobs = [qjob(i + 1, NOW - w, p) for i, (p, w) in enumerate(zip(levels, waited, strict=True))]
    assert [j.id for j in order_queue(jobs, AGING)] == expected


def test_order_queue_defaults_to_normal_and_fifo_within_a_level() -> None:
    jobs = [qjob(3, 30.0), qjob(1, 10.0), qjob(2, 10.0), qjob(4, 40.0, Priority.HIGH)]
    assert [j.id for j in order_queue(jobs, AGING)] == [4, 1, 2, 3]


def test_order_queue_without_aging_is_by_level_then_age() -> None:
    jobs = [qjob(1, 0.0, Priority.LOW), qjob(2, NOW)]
    assert [j.id for j in order_queue(jobs, 0.0)] == [2, 1]


def test_order_queue_matches_effective_priority_at_any_time() -> None:
    rng = random.Random(5)
    jobs = [qjob(i, rng.uniform(0, 5000), rng.choice(list(Priority))) for i in range(200)]
    got = order_queue(jobs, AGING)
    for now in (5000.0, 9000.0, 1e6):
        eff = [effective_priority(j.options.priority, j.created_at, now, AGING) for j in got]
        assert all(x >= y - 1e-9 for x, y in itertools.pairwise(eff)), now
