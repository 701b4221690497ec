"""Which queued jobs start now: a pure function of (queued jobs, hosts, running jobs, policy, now).

Checks, in order: retry backoff, both ends online, per-host job limits, declared per-host and per-link
stream limits, no two jobs writing overlapping destination trees, and the measured load of both ends
(``policy.host_blockers``: CPU, load per core, disk busy, network utilisation, free space at the
destination, fresh health). A job that may not start gets the reason in words.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from zcrepl.controller.policy import Thresholds, host_blockers, order_queue, wait_reason
from zcrepl.core.config import ControllerConfig, HostLimit
from zcrepl.core.logs import kv
from zcrepl.core.paths import relative_to
from zcrepl.core.settings import default_of
from zcrepl.core.types import Endpoint, HostHealth, Job, Role

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostView:
    name: str
    online: bool
    running: int = 0
    # Latest health with ``sampled_at`` on the controller's clock (when it arrived), or None.
    health: HostHealth | None = None
    streams: int = 0  # data streams of its running jobs (a job not sending yet counts as 1)


@dataclass(frozen=True)
class Policy:
    # The engine builds it from ControllerConfig; built without one (table tests) it holds the config's defaults.
    max_jobs_per_host: int = default_of(ControllerConfig, "max_jobs_per_host")
    # None turns the load checks off (table tests of the other rules); the controller always sets it.
    thresholds: Thresholds | None = None
    aging: float = default_of(ControllerConfig, "priority_aging")  # seconds a waiting job gains one priority level
    # Declared ceilings: per host (jobs replaces max_jobs_per_host; streams of all its jobs together) and
    # per (source, destination) link (streams of all jobs on it together).
    host_limits: Mapping[str, HostLimit] = field(default_factory=dict)
    link_streams: Mapping[tuple[str, str], int] = field(default_factory=dict)

    def max_jobs(self, host: str) -> int:
        limit = self.host_limits.get(host)
        return limit.jobs if limit is not None and limit.jobs else self.max_jobs_per_host


@dataclass(frozen=True)
class Decision:
    job_id: int
    start: bool
    reason: str = ""
    # The endpoint to read from: the job's own source, or for a fan-out a finished replica.
    source: Endpoint | None = None


def overlaps(a: Endpoint, b: Endpoint) -> bool:
    """Same host and one path inside (or equal to) the other."""
    return a.host == b.host and (relative_to(a.path, b.path) is not None or relative_to(b.path, a.path) is not None)


def plan(
    queued: Sequence[Job],
    hosts: Mapping[str, HostView],
    running: Iterable[Job],
    policy: Policy,
    now: float,
    *,
    sources: Mapping[int, Sequence[Endpoint]] | None = None,
    group_sending: Iterable[tuple[int, str]] = (),
    link_streams: Mapping[tuple[str, str], int] | None = None,
) -> list[Decision]:
    """One decision per queued job, in priority order; starts consume capacity for later jobs in the pass.

    ``sources`` lists, per fan-out job, the endpoints it may read from in order of preference (finished
    replicas first, so the busy original is spared); the first one that passes every check is chosen.
    Within one fan-out each host sends one copy at a time (``group_sending``: (group, host) already
    sending), which spreads a distribution to N hosts over about log2(N) rounds instead of N.
    ``link_streams`` counts the streams in use per (source, destination) link, like ``HostView.streams``;
    a job started in this pass counts as one stream (its least) until the engine chooses its number.
    """
    load = {name: h.running for name, h in hosts.items()}
    streams = Usage({name: h.streams for name, h in hosts.items()}, dict(link_streams or {}))
    writing = [(j.id, j.destination) for j in running]
    sending = set(group_sending)
    out: list[Decision] = []
    for job in order_queue(queued, policy.aging):
        reason, chosen = "", None
        try:
            for src in (sources or {}).get(job.id) or (job.source,):
                if job.group_id and (job.group_id, src.host) in sending:
                    why = f"waiting: {src.host} is already sending a copy for this fan-out"
                else:
                    why = _blocker(job, src, hosts, load, streams, writing, policy, now)
                if not why:
                    chosen = src
                    break
                reason = reason or why
        except Exception as err:  # one job's bad data must not stop the others from being scheduled
            log.exception("scheduling a job failed", extra=kv(job=job.id, attempt=job.attempts,
                                                              host=job.destination.host, source=job.source.host))
            out.append(Decision(job.id, False, f"waiting: scheduling this job failed ({err!r}); it is tried "
                                "again on the next pass (see the controller log)"))
            continue
        if chosen is None:
            out.append(Decision(job.id, False, reason))
            continue
        out.append(Decision(job.id, True, source=chosen))
        for host in {chosen.host, job.destination.host}:
            load[host] = load.get(host, 0) + 1
        streams.add(chosen.host, job.destination.host, 1)
        writing.append((job.id, job.destination))
        if job.group_id:
            sending.add((job.group_id, chosen.host))
    return out


@dataclass
class Usage:
    """Data streams in use per host and per (source, destination) link."""

    hosts: dict[str, int]
    links: dict[tuple[str, str], int]

    def add(self, src: str, dst: str, n: int) -> None:
        for host in {src, dst}:
            self.hosts[host] = self.hosts.get(host, 0) + n
        self.links[(src, dst)] = self.links.get((src, dst), 0) + n


def stream_blocker(src: str, dst: str, usage: Usage, policy: Policy) -> str:
    """Why one more stream may not run between ``src`` and ``dst`` under the declared limits, or ""."""
    for host in (src, dst) if src != dst else (src,):
        limit = policy.host_limits.get(host)
        if limit is not None and limit.streams and usage.hosts.get(host, 0) >= limit.streams:
            return f"waiting: {host} already uses {usage.hosts.get(host, 0)} data streams (limit {limit.streams})"
    cap = policy.link_streams.get((src, dst), 0)
    if cap and usage.links.get((src, dst), 0) >= cap:
        return f"waiting: the link {src}→{dst} already carries {usage.links.get((src, dst), 0)} streams (limit {cap})"
    return ""


def _blocker(job: Job, source: Endpoint, hosts: Mapping[str, HostView], load: Mapping[str, int], streams: Usage,
             writing: Sequence[tuple[int, Endpoint]], policy: Policy, now: float) -> str:
    if job.next_attempt_at > now:
        return job.wait_reason or f"waiting: retry in {job.next_attempt_at - now:.1f}s"
    for role, host in (("source", source.host), ("destination", job.destination.host)):
        h = hosts.get(host)
        if h is None or not h.online:
            return f"waiting: {role} host {host} is offline (its zc-agent is not connected)"
    for host in {source.host, job.destination.host}:
        if load.get(host, 0) >= (limit := policy.max_jobs(host)):
            return f"waiting: {host} already runs {load.get(host, 0)} jobs (limit {limit})"
    if policy.host_limits or policy.link_streams:
        why = stream_blocker(source.host, job.destination.host, streams, policy)
        if why:
            return why
    for other_id, dst in writing:
        if overlaps(dst, job.destination):
            return f"waiting: job {other_id} is writing to {dst}"
    if policy.thresholds is not None:
        src_view, dst_view = hosts[source.host], hosts[job.destination.host]
        left = max(0, job.progress.bytes_total - job.progress.bytes_done) if job.progress.scan_done else 0
        blockers = host_blockers(dst_view.name, dst_view.health, policy.thresholds, role=Role.RECEIVER,
                                 bytes_to_move=left, path=job.destination.path, now=now)
        if src_view.name != dst_view.name:
            blockers = host_blockers(src_view.name, src_view.health, policy.thresholds, role=Role.SENDER,
                                     path=source.path, now=now) + blockers
        return wait_reason(blockers)
    return ""
