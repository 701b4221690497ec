"""Tests for zcrepl.controller.scheduler: plan() decisions and the overlaps() table."""

from __future__ import annotations

import pytest

from zcrepl.controller.scheduler import Decision, HostView, Policy, overlaps, plan
from zcrepl.core.config import HostLimit
from zcrepl.core.types import Endpoint, Job, JobOptions, JobState, Priority

NOW = 1_000.0


def ep(spec: str) -> Endpoint:
    host, _, path = spec.partition(":")
    return Endpoint(host, path.encode())


def job(job_id: int, src: str = "a:/src", dst: str = "b:/dst", state: JobState = JobState.QUEUED,
        **kw: object) -> Job:
    return Job(id=job_id, state=state, source=ep(src), destination=ep(dst), **kw)  # type: ignore[arg-type]


def hosts(*online: str, offline: tuple[str, ...] = (), running: dict[str, int] | None = None,
          streams: dict[str, int] | None = None) -> dict[str, HostView]:
    running, streams = running or {}, streams or {}
    out = {n: HostView(n, True, running.get(n, 0), streams=streams.get(n, 0)) for n in online}
    out.update({n: HostView(n, False, running.get(n, 0)) for n in offline})
    return out


def by_id(decisions: list[Decision]) -> dict[int, Decision]:
    return {d.job_id: d for d in decisions}


# -- liveness ---------------------------------------------------------------------------------------


def test_starts_when_both_ends_online() -> None:
    j = job(1)
    assert plan([j], hosts("a", "b"), [], Policy(), NOW) == [Decision(1, True, "", j.source)]


@pytest.mark.parametrize(
    ("view", "role", "host"),
    [
        (hosts("b", offline=("a",)), "source", "a"),
        (hosts("a", offline=("b",)), "destination", "b"),
        (hosts("b"), "source", "a"),  # never registered counts as offline
        (hosts("a"), "destination", "b"),
    ],
    ids=["source-offline", "dest-offline", "source-unknown", "dest-unknown"],
)
def test_waits_naming_offline_host_and_role(view: dict[str, HostView], role: str, host: str) -> None:
    (d,) = plan([job(1)], view, [], Policy(), NOW)
    assert not d.start
    assert f"{role} host {host} is offline" in d.reason


def test_offline_host_does_not_consume_capacity() -> None:
    view = hosts("a", offline=("b",))
    out = by_id(plan([job(1, "a:/x", "b:/y"), job(2, "a:/x", "a:/z")], view, [], Policy(max_jobs_per_host=1), NOW))
    assert not out[1].start
    assert out[2].start


# -- retry backoff ----------------------------------------------------------------------------------


def test_respects_next_attempt_at_with_jobs_wait_reason() -> None:
    j = job(1, next_attempt_at=NOW + 5, wait_reason="retry 2 of 5 in 5.0s after: boom")
    assert plan([j], hosts("a", "b"), [], Policy(), NOW) == [Decision(1, False, "retry 2 of 5 in 5.0s after: boom")]


def test_next_attempt_at_without_reason_gets_a_generic_one() -> None:
    (d,) = plan([job(1, next_attempt_at=NOW + 2.5)], hosts("a", "b"), [], Policy(), NOW)
    assert not d.start
    assert "retry in 2.5s" in d.reason


@pytest.mark.parametrize("delta", [0.0, -1.0], ids=["due-now", "overdue"])
def test_due_retry_starts(delta: float) -> None:
    (d,) = plan([job(1, next_attempt_at=NOW + delta, wait_reason="old")], hosts("a", "b"), [], Policy(), NOW)
    assert d.start


def test_backoff_outranks_offline() -> None:
    (d,) = plan([job(1, next_attempt_at=NOW + 1, wait_reason="backing off")], hosts(), [], Policy(), NOW)
    assert d.reason == "backing off"


# -- per-host capacity ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("running", "limit", "start"),
    [
        ({"a": 0, "b": 0}, 1, True),
        ({"a": 1}, 1, False),
        ({"b": 1}, 1, False),
        ({"a": 3, "b": 3}, 4, True),
        ({"a": 4}, 4, False),
        ({"b": 5}, 4, False),
    ],
)
def test_per_host_limit(running: dict[str, int], limit: int, start: bool) -> None:
    (d,) = plan([job(1)], hosts("a", "b", running=running), [], Policy(max_jobs_per_host=limit), NOW)
    assert d.start is start
    if not start:
        busy = next(h for h, n in running.items() if n >= limit)
        assert f"{busy} already runs {running[busy]} jobs (limit {limit})" in d.reason


def test_starts_within_one_pass_consume_capacity() -> None:
    queued = [job(1, "a:/s1", "b:/d1"), job(2, "a:/s2", "c:/d2"), job(3, "c:/s3", "d:/d3")]
    out = by_id(plan(queued, hosts("a", "b", "c", "d"), [], Policy(max_jobs_per_host=1), NOW))
    assert out[1].start
    assert not out[2].start
    assert "a already runs 1 jobs (limit 1)" in out[2].reason
    assert out[3].start  # job 2 did not start, so it took nothing from c


def test_same_host_job_counts_once_for_that_host() -> None:
    queued = [job(1, "a:/s1", "a:/d1"), job(2, "a:/s2", "b:/d2")]
    out = by_id(plan(queued, hosts("a", "b"), [], Policy(max_jobs_per_host=2), NOW))
    assert out[1].start
    assert out[2].start, out[2].reason


def test_same_host_job_fills_the_last_slot() -> None:
    queued = [job(1, "a:/s1", "a:/d1"), job(2, "a:/s2", "a:/d2")]
    out = by_id(plan(queued, hosts("a", running={"a": 1}), [], Policy(max_jobs_per_host=2), NOW))
    assert out[1].start
    assert not out[2].start


# -- overlapping destinations -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("running_dst", "queued_dst", "blocked"),
    [
        ("b:/dst", "b:/dst", True),
        ("b:/dst", "b:/dst/sub", True),
        ("b:/dst/sub", "b:/dst", True),
        ("b:/dst", "b:/dst2", False),
        ("c:/dst", "b:/dst", False),
        ("b:/", "b:/anything", True),
    ],
)
def test_overlap_with_running_job_waits_naming_it(running_dst: str, queued_dst: str, blocked: bool) -> None:
    running = [job(7, "x:/s", running_dst, state=JobState.RUNNING)]
    (d,) = plan([job(9, "a:/s", queued_dst)], hosts("a", "b", "c", "x"), running, Policy(), NOW)
    assert d.start is not blocked
    if blocked:
        assert d.reason == f"waiting: job 7 is writing to {running_dst}"


def test_overlap_with_job_started_in_same_pass() -> None:
    queued = [job(2, "a:/s", "b:/dst/inner"), job(1, "a:/s", "b:/dst")]
    out = by_id(plan(queued, hosts("a", "b"), [], Policy(), NOW))
    assert out[1].start
    assert not out[2].start
    assert "job 1 is writing to b:/dst" in out[2].reason


def test_overlap_reason_escapes_odd_path_bytes() -> None:
    running = [Job(5, JobState.RUNNING, ep("a:/s"), Endpoint("b", b"/d\xff\n"))]
    (d,) = plan([Job(6, JobState.QUEUED, ep("a:/s"), Endpoint("b", b"/d\xff\n/x"))], hosts("a", "b"), running,
                Policy(), NOW)
    assert d.reason == "waiting: job 5 is writing to b:/d\\xff\\n"


def test_sources_may_overlap() -> None:
    queued = [job(1, "a:/src", "b:/d1"), job(2, "a:/src", "b:/d2")]
    assert all(d.start for d in plan(queued, hosts("a", "b"), [], Policy(), NOW))


# -- ordering ---------------------------------------------------------------------------------------


def test_one_decision_per_job_oldest_first() -> None:
    queued = [job(5, dst="b:/5"), job(2, dst="b:/2"), job(9, dst="b:/9")]
    assert [d.job_id for d in plan(queued, hosts("a", "b"), [], Policy(), NOW)] == [2, 5, 9]


def test_lowest_id_gets_the_slot() -> None:
    queued = [job(5, dst="b:/5"), job(3, dst="b:/3")]
    out = by_id(plan(queued, hosts("a", "b"), [], Policy(max_jobs_per_host=1), NOW))
    assert out[3].start
    assert not out[5].start


def test_empty_queue() -> None:
    assert plan([], hosts("a"), [], Policy(), NOW) == []


def test_plan_does_not_mutate_host_views() -> None:
    view = hosts("a", "b")
    plan([job(1)], view, [], Policy(), NOW)
    assert view == hosts("a", "b")


# -- overlaps() -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("h:/a/b", "h:/a/b", True),
        ("h:/a", "h:/a/b", True),
        ("h:/a/b", "h:/a", True),
        ("h:/a/b/c/d", "h:/a", True),
        ("h:/a/b", "h:/a/bc", False),
        ("h:/a/bc", "h:/a/b", False),
        ("h:/a/b", "h:/a/c", False),
        ("h:/a/b", "g:/a/b", False),
        ("h:/", "h:/x", True),
        ("h:/x", "h:/", True),
        ("h:/", "h:/", True),
        ("h:/", "g:/", False),
    ],
)
def test_overlaps(a: str, b: str, expected: bool) -> None:
    assert overlaps(ep(a), ep(b)) is expected


# -- fan-out --------------------------------------------------------------------------------------


def test_fanout_sends_one_copy_per_host_at_a_time_and_prefers_finished_replicas() -> None:
    # Group 1: a:/src to b, c, d. Round 1: only one copy leaves a.
    jobs = [job(i, "a:/src", f"{h}:/dst", group_id=1) for i, h in ((1, "b"), (2, "c"), (3, "d"))]
    view = hosts("a", "b", "c", "d")
    r1 = by_id(plan(jobs, view, [], Policy(), NOW))
    assert r1[1].start and r1[1].source == ep("a:/src")
    assert not r1[2].start and "a is already sending a copy for this fan-out" in r1[2].reason
    # Round 2: b is done; c reads from b (a finished replica comes first), d from a: two copies at once.
    sources = {2: [ep("b:/dst"), ep("a:/src")], 3: [ep("b:/dst"), ep("a:/src")]}
    r2 = by_id(plan(jobs[1:], view, [], Policy(), NOW, sources=sources))
    assert (r2[2].start, r2[2].source) == (True, ep("b:/dst"))
    assert (r2[3].start, r2[3].source) == (True, ep("a:/src"))


def test_fanout_skips_an_offline_replica() -> None:
    j = job(5, "a:/src", "c:/dst", group_id=4)
    d = plan([j], hosts("a", "c", offline=("b",)), [], Policy(), NOW, sources={5: [ep("b:/dst"), ep("a:/src")]})
    assert (d[0].start, d[0].source) == (True, ep("a:/src"))


def test_fanout_waits_when_every_replica_is_busy() -> None:
    j = job(6, "a:/src", "c:/dst", group_id=4)
    d = plan([j], hosts("a", "b", "c"), [], Policy(), NOW, sources={6: [ep("b:/dst"), ep("a:/src")]},
             group_sending=[(4, "a"), (4, "b")])
    assert not d[0].start and "b is already sending" in d[0].reason


# -- priorities -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("levels", "ages", "started"),
    [
        ((Priority.LOW, Priority.NORMAL, Priority.HIGH), (30.0, 20.0, 10.0), 3),  # the high one, though newest
        ((Priority.NORMAL, Priority.NORMAL, Priority.NORMAL), (30.0, 20.0, 10.0), 1),  # oldest first
        ((Priority.LOW, Priority.HIGH, Priority.NORMAL), (1300.0, 10.0, 0.0), 1),  # low, aged over 2 levels
        ((Priority.LOW, Priority.HIGH, Priority.NORMAL), (1100.0, 10.0, 0.0), 2),  # not yet
    ],
)
def test_the_one_free_slot_goes_to_the_highest_effective_priority(levels: tuple[Priority, ...],
                                                                   ages: tuple[float, ...], started: int) -> None:
    jobs = [job(i + 1, "a:/src", f"b:/dst{i}", created_at=NOW - age, options=JobOptions(priority=p))
            for i, (p, age) in enumerate(zip(levels, ages, strict=True))]
    out = by_id(plan(jobs, hosts("a", "b"), [], Policy(max_jobs_per_host=1, aging=600.0), NOW))
    assert [i for i, d in out.items() if d.start] == [started]
    assert all("already runs 1 jobs" in d.reason for i, d in out.items() if i != started)


# -- declared per-host and per-link limits ----------------------------------------------------------


def limited(**kw: object) -> Policy:
    return Policy(max_jobs_per_host=4, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "view", "link_streams", "started", "reason"),
    [
        # a host's own job limit replaces max_jobs_per_host, both ways
        (limited(host_limits={"b": HostLimit(jobs=1)}), hosts("a", "b", "c"), {}, [1, 3],
         "b already runs 1 jobs (limit 1)"),
        (limited(host_limits={"a": HostLimit(jobs=6)}), hosts("a", "b", "c", running={"a": 4}), {}, [1, 2],
         "a already runs 6 jobs (limit 6)"),
        (limited(), hosts("a", "b", "c", running={"a": 4}), {}, [], "a already runs 4 jobs (limit 4)"),
        # a host's streams (all its jobs together): a new job needs at least one
        (limited(host_limits={"b": HostLimit(streams=8)}), hosts("a", "b", "c", streams={"b": 8}), {}, [3],
         "b already uses 8 data streams (limit 8)"),
        (limited(host_limits={"b": HostLimit(streams=8)}), hosts("a", "b", "c", streams={"b": 7}), {}, [1, 3],
         "b already uses 8 data streams (limit 8)"),  # job 1 takes the last one
        # a link's streams: only jobs on that link wait
        (limited(link_streams={("a", "b"): 2}), hosts("a", "b", "c"), {("a", "b"): 2}, [3],
         "the link a→b already carries 2 streams (limit 2)"),
        (limited(link_streams={("a", "b"): 2}), hosts("a", "b", "c"), {("b", "a"): 9, ("a", "b"): 1}, [1, 3],
         "the link a→b already carries 2 streams (limit 2)"),
        (limited(link_streams={("b", "a"): 1}), hosts("a", "b", "c"), {("b", "a"): 1}, [1, 2, 3], ""),
    ],
    ids=["host-jobs-lower", "host-jobs-higher", "default-jobs", "host-streams-full", "host-streams-last",
         "link-full", "link-last", "other-direction"],
)
def test_declared_limits(policy: Policy, view: dict[str, HostView], link_streams: dict[tuple[str, str], int],
                         started: list[int], reason: str) -> None:
    jobs = [job(1, "a:/s", "b:/d1"), job(2, "a:/s", "b:/d2"), job(3, "a:/s", "c:/d3")]
    out = plan(jobs, view, [], policy, NOW, link_streams=link_streams)
    assert [d.job_id for d in out if d.start] == started
    waiting = [d.reason for d in out if not d.start]
    assert all(r == f"waiting: {reason}" for r in waiting), waiting
    assert bool(waiting) == bool(reason)
