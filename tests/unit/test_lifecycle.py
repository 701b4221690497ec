"""Tests for zcrepl.controller.lifecycle: job state transitions as pure functions with an injected clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from zcrepl.controller.lifecycle import (
    RetryPolicy,
    cancelled,
    failed_attempt,
    started,
    succeeded,
)
from zcrepl.core.errors import Conflict
from zcrepl.core.types import Endpoint, Job, JobState, TransferStats

T0 = 100.0
NOW = 200.0
POLICY = RetryPolicy(max_attempts=5, base=2.0, cap=60.0)
STATS = TransferStats(entries=3, files_total=2, files_done=2, bytes_total=10, bytes_done=10, scan_done=True)


def make(state: JobState = JobState.QUEUED, **kw: object) -> Job:
    base = Job(id=1, state=state, source=Endpoint("a", b"/s"), destination=Endpoint("b", b"/d"),
               created_at=T0, updated_at=T0, max_attempts=5)
    return replace(base, **kw)  # type: ignore[arg-type]


def running(**kw: object) -> Job:
    return make(JobState.RUNNING, **{"attempts": 1, "started_at": T0, **kw})


# -- started ----------------------------------------------------------------------------------------


def test_started_from_queued() -> None:
    job = make(wait_reason="waiting: b offline", progress=STATS, attempts=2)
    out = started(job, NOW)
    assert out.state is JobState.RUNNING
    assert out.attempts == 3
    assert out.wait_reason == ""
    assert out.progress == TransferStats()
    assert out.updated_at == NOW


@pytest.mark.parametrize(("first", "expected"), [(0.0, NOW), (T0, T0)], ids=["first-start", "restart"])
def test_started_keeps_first_start_time(first: float, expected: float) -> None:
    assert started(make(started_at=first), NOW).started_at == expected


@pytest.mark.parametrize("state", [s for s in JobState if s is not JobState.QUEUED])
def test_started_only_from_queued(state: JobState) -> None:
    with pytest.raises(Conflict, match=state.value):
        started(make(state), NOW)


def test_started_does_not_mutate_input() -> None:
    job = make()
    started(job, NOW)
    assert job.state is JobState.QUEUED
    assert job.attempts == 0


# -- succeeded --------------------------------------------------------------------------------------


def test_succeeded() -> None:
    out = succeeded(running(error="old", wait_reason="x", next_attempt_at=5.0), STATS, NOW)
    assert out.state is JobState.DONE
    assert out.progress == STATS
    assert (out.updated_at, out.finished_at) == (NOW, NOW)
    assert (out.error, out.wait_reason, out.next_attempt_at) == ("", "", 0.0)
    assert out.state.final


# -- failed_attempt ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures_before", "rand", "expected_delay"),
    [
        (0, lambda: 0.0, 1.0),  # first failure: d = 2, lower bound d/2
        (0, lambda: 1.0, 2.0),  # upper bound d
        (1, lambda: 0.5, 3.0),  # second failure: d = 4, midpoint
        (3, lambda: 1.0, 16.0),  # fourth failure: d = 16
    ],
    ids=["first-low", "first-high", "second-mid", "fourth-high"],
)
def test_retryable_with_budget_goes_back_to_queue(failures_before: int, rand: Callable[[], float],
                                                  expected_delay: float) -> None:
    job = running(failures=failures_before, attempts=failures_before + 1)
    out = failed_attempt(job, "disk full on b", True, NOW, POLICY, rand)
    assert out.state is JobState.QUEUED
    assert out.failures == failures_before + 1
    assert out.next_attempt_at == pytest.approx(NOW + expected_delay)
    assert out.error == "disk full on b"
    assert "disk full on b" in out.wait_reason
    assert out.updated_at == NOW
    assert out.finished_at == 0.0


def test_backoff_is_capped_by_policy() -> None:
    job = running(failures=8, max_attempts=20)
    out = failed_attempt(job, "e", True, NOW, RetryPolicy(base=2.0, cap=10.0), lambda: 1.0)
    assert out.next_attempt_at == pytest.approx(NOW + 10.0)


def test_default_rand_stays_within_half_jitter_bounds() -> None:
    for _ in range(50):
        out = failed_attempt(running(failures=1), "e", True, NOW, POLICY)
        assert NOW + 2.0 <= out.next_attempt_at <= NOW + 4.0


def test_wait_reason_names_next_try_and_budget() -> None:
    out = failed_attempt(running(failures=1), "boom", True, NOW, POLICY, lambda: 1.0)
    assert out.wait_reason == "retry 3 of 5 in 4.0s after: boom"


def test_not_retryable_fails_for_good() -> None:
    out = failed_attempt(running(), "unsafe path", False, NOW, POLICY, lambda: 0.0)
    assert out.state is JobState.FAILED
    assert out.failures == 1
    assert out.error == "unsafe path"
    assert (out.finished_at, out.next_attempt_at, out.wait_reason) == (NOW, 0.0, "")


@pytest.mark.parametrize(("max_attempts", "failures_before", "state"), [
    (5, 3, JobState.QUEUED),
    (5, 4, JobState.FAILED),
    (1, 0, JobState.FAILED),
    (2, 0, JobState.QUEUED),
])
def test_retry_budget(max_attempts: int, failures_before: int, state: JobState) -> None:
    job = running(failures=failures_before, max_attempts=max_attempts)
    out = failed_attempt(job, "e", True, NOW, POLICY, lambda: 0.0)
    assert out.state is state
    assert out.failures == failures_before + 1


def test_budget_is_the_jobs_not_the_policys() -> None:
    out = failed_attempt(running(failures=2, max_attempts=3), "e", True, NOW, RetryPolicy(max_attempts=50),
                         lambda: 0.0)
    assert out.state is JobState.FAILED


# -- cancelled --------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [JobState.QUEUED, JobState.RUNNING])
def test_cancel_live_job(state: JobState) -> None:
    out = cancelled(make(state, wait_reason="waiting"), NOW)
    assert out.state is JobState.CANCELLED
    assert (out.updated_at, out.finished_at) == (NOW, NOW)
    assert out.wait_reason == ""
    assert out.error == "cancelled by the operator"


def test_cancel_keeps_earlier_error() -> None:
    assert cancelled(make(error="disk full"), NOW).error == "disk full"


@pytest.mark.parametrize("state", [JobState.DONE, JobState.FAILED, JobState.CANCELLED])
def test_cancel_final_job_conflicts(state: JobState) -> None:
    with pytest.raises(Conflict, match=f"already {state.value}"):
        cancelled(make(state), NOW)


@pytest.mark.parametrize(("state", "final"), [
    (JobState.QUEUED, False), (JobState.RUNNING, False),
    (JobState.DONE, True), (JobState.FAILED, True), (JobState.CANCELLED, True),
])
def test_final_states(state: JobState, final: bool) -> None:
    assert state.final is final
