"""Which queued jobs start now: a pure function of (queued jobs, hosts, running jobs, policy, now).

Checks, in order: retry backoff, both ends online, per-host job limits, no two jobs writing overlapping
destination trees, and the measured load of both ends (``policy.host_blockers``: CPU, load per core,
disk busy, network utilisation, free space at the destination, fresh health). A job that may not start
gets the reason in words.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from zcrepl.controller.policy import Thresholds, host_blockers, order_queue, wait_reason
from zcrepl.core.paths import relative_to, show
from zcrepl.core.types import Endpoint, HostHealth, Job, Role


@dataclass(frozen=True)
class HostView:
    name: str
    online: bool
    running: int = 0
    # Latest health with ``sampled_at`` on the controller's clock (when it arrived), or None.
    health: HostHealth | None = None


@dataclass(frozen=True)
class Policy:
    max_jobs_per_host: int = 4
    # None turns the load checks off (table tests of the other rules); the controller always sets it.
    thresholds: Thresholds | None = None
    aging: float = 600.0  # seconds a waiting job gains one priority level


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
    for job in order_queue(queued, policy.aging):
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
    if policy.thresholds is not None:
        src, dst = hosts[job.source.host], hosts[job.destination.host]
        left = max(0, job.progress.bytes_total - job.progress.bytes_done) if job.progress.scan_done else 0
        blockers = host_blockers(dst.name, dst.health, policy.thresholds, role=Role.RECEIVER,
                                 bytes_to_move=left, path=job.destination.path, now=now)
        if src.name != dst.name:
            blockers = host_blockers(src.name, src.health, policy.thresholds, role=Role.SENDER, now=now) + blockers
        return wait_reason(blockers)
    return ""
