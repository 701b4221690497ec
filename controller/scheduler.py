"""Which queued jobs start now: a pure function of (queued jobs, hosts, running jobs, policy, now).

This issue's policy is liveness and capacity only: both ends online, per-host job limits, never two
jobs writing overlapping destination trees, retry backoff honoured. Load thresholds come later and
slot in as further checks in ``_blocker``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from zcrepl.core.paths import relative_to, show
from zcrepl.core.types import Endpoint, Job


@dataclass(frozen=True)
class HostView:
    name: str
    online: bool
    running: int = 0


@dataclass(frozen=True)
class Policy:
    max_jobs_per_host: int = 4


@dataclass(frozen=True)
class Decision:
    job_id: int
    start: bool
    reason: str = ""


def overlaps(a: Endpoint, b: Endpoint) -> bool:
    """Same host and one path inside (or equal to) the other."""
    return a.host == b.host and (relative_to(a.path, b.path) is not None or relative_to(b.path, a.path) is not None)


def plan(
    queued: Sequence[Job],
    hosts: Mapping[str, HostView],
    running: Iterable[Job],
    policy: Policy,
    now: float,
) -> list[Decision]:
    """One decision per queued job, oldest first; starts consume capacity for later jobs in the pass."""
    load = {name: h.running for name, h in hosts.items()}
    writing = [(j.id, j.destination) for j in running]
    out: list[Decision] = []
    for job in sorted(queued, key=lambda j: j.id):
        reason = _blocker(job, hosts, load, writing, policy, now)
        if reason:
            out.append(Decision(job.id, False, reason))
            continue
        out.append(Decision(job.id, True))
        for host in {job.source.host, job.destination.host}:
            load[host] = load.get(host, 0) + 1
        writing.append((job.id, job.destination))
    return out


def _blocker(job: Job, hosts: Mapping[str, HostView], load: Mapping[str, int],
             writing: Sequence[tuple[int, Endpoint]], policy: Policy, now: float) -> str:
    if job.next_attempt_at > now:
        return job.wait_reason or f"waiting: retry in {job.next_attempt_at - now:.1f}s"
    for role, host in (("source", job.source.host), ("destination", job.destination.host)):
        h = hosts.get(host)
        if h is None or not h.online:
            return f"waiting: {role} host {host} is offline (its zc-agent is not connected)"
    for host in {job.source.host, job.destination.host}:
        if load.get(host, 0) >= policy.max_jobs_per_host:
            return f"waiting: {host} already runs {load.get(host, 0)} jobs (limit {policy.max_jobs_per_host})"
    for other_id, dst in writing:
        if overlaps(dst, job.destination):
            return f"waiting: job {other_id} is writing to {dst.host}:{show(dst.path)}"
    return ""
