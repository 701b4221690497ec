"""Conversion between wire messages and the domain types of ``zcrepl.core.types``.

Generated protobuf types stop at the gRPC adapters; everything behind them takes domain dataclasses.
"""

from __future__ import annotations

from dataclasses import fields

from zcrepl.core import types as t
from zcrepl.core.errors import InvalidArgument
from zcrepl.proto import types_pb2 as pb

_STATE_TO_PB = {
    t.JobState.QUEUED: pb.JOB_STATE_QUEUED,
    t.JobState.RUNNING: pb.JOB_STATE_RUNNING,
    t.JobState.DONE: pb.JOB_STATE_DONE,
    t.JobState.FAILED: pb.JOB_STATE_FAILED,
    t.JobState.CANCELLED: pb.JOB_STATE_CANCELLED,
}
_STATE_FROM_PB: dict[int, t.JobState] = {v: k for k, v in _STATE_TO_PB.items()}


def state_to_pb(s: t.JobState) -> pb.JobState:
    return _STATE_TO_PB[s]


def state_from_pb(v: int) -> t.JobState:
    return _STATE_FROM_PB[v]


def states_from_request(values: object) -> tuple[t.JobState, ...]:
    """Job states a client asked for; one this controller does not know is refused, not guessed."""
    out = []
    for v in values:  # type: ignore[attr-defined]
        if v not in _STATE_FROM_PB:
            raise InvalidArgument(f"job state {v} is unknown; use queued, running, done, failed or cancelled")
        out.append(_STATE_FROM_PB[v])
    return tuple(out)


def stats_to_pb(s: t.TransferStats) -> pb.TransferStats:
    return pb.TransferStats(**{f.name: getattr(s, f.name) for f in fields(s)})


def stats_from_pb(m: pb.TransferStats) -> t.TransferStats:
    return t.TransferStats(**{f.name: getattr(m, f.name) for f in fields(t.TransferStats)})


_DURABILITY = {t.Durability.JOB: pb.DURABILITY_JOB, t.Durability.FILE: pb.DURABILITY_FILE,
               t.Durability.NONE: pb.DURABILITY_NONE}
_DURABILITY_FROM = {**{v: k for k, v in _DURABILITY.items()}, pb.DURABILITY_UNSPECIFIED: t.Durability.JOB}


_PRIORITY = {t.Priority.LOW: pb.PRIORITY_LOW, t.Priority.NORMAL: pb.PRIORITY_NORMAL,
             t.Priority.HIGH: pb.PRIORITY_HIGH}
_PRIORITY_FROM = {v: k for k, v in _PRIORITY.items()}
_COMPRESS = frozenset(int(c) for c in t.Compress)


def options_to_pb(o: t.JobOptions) -> pb.JobOptions:
    return pb.JobOptions(delete=o.delete, checksum=o.checksum, bwlimit=o.bwlimit, max_attempts=o.max_attempts,
                         streams=o.streams, durability=_DURABILITY[o.durability], xattrs=o.xattrs,
                         priority=_PRIORITY[o.priority], encrypt=o.encrypt, filters=list(o.filters),
                         delete_excluded=o.delete_excluded, dry_run=o.dry_run, backup_dir=o.backup_dir,
                         link_dest=list(o.link_dest), compress=int(o.compress), compress_level=o.compress_level,
                         snapshot=o.snapshot, snapshot_name=o.snapshot_name, keep_daily=o.keep_daily,
                         keep_weekly=o.keep_weekly, keep_monthly=o.keep_monthly)


def options_from_pb(m: pb.JobOptions) -> t.JobOptions:
    return t.JobOptions(delete=m.delete, checksum=m.checksum, bwlimit=m.bwlimit, max_attempts=m.max_attempts,
                        streams=m.streams, durability=_DURABILITY_FROM.get(m.durability, t.Durability.JOB),
                        xattrs=m.xattrs,
                        # Unspecified (an older client) and values from a newer one read as normal.
                        priority=_PRIORITY_FROM.get(m.priority, t.Priority.NORMAL), encrypt=m.encrypt,
                        filters=tuple(m.filters), delete_excluded=m.delete_excluded, dry_run=m.dry_run,
                        backup_dir=bytes(m.backup_dir), link_dest=tuple(bytes(x) for x in m.link_dest),
                        # A value from a newer peer reads as auto: the controller decides.
                        compress=t.Compress(m.compress) if m.compress in _COMPRESS else t.Compress.AUTO,
                        compress_level=m.compress_level, snapshot=m.snapshot, snapshot_name=m.snapshot_name,
                        keep_daily=m.keep_daily, keep_weekly=m.keep_weekly, keep_monthly=m.keep_monthly)


def options_from_request(m: pb.JobOptions) -> t.JobOptions:
    """``options_from_pb`` for a client's request: an enum value this controller does not know (a newer
    client's, or garbage) is refused instead of read as the default."""
    if m.durability not in _DURABILITY_FROM:
        raise InvalidArgument(f"durability {m.durability} is unknown; use job, file or none")
    if m.priority != pb.PRIORITY_UNSPECIFIED and m.priority not in _PRIORITY_FROM:
        raise InvalidArgument(f"priority {m.priority} is unknown; use high, normal or low")
    if m.compress not in _COMPRESS:
        raise InvalidArgument(f"compress {m.compress} is unknown; use 0 (auto), 1 (on) or 2 (off)")
    if m.compress_level > t.MAX_COMPRESS_LEVEL:
        raise InvalidArgument(f"compress level {m.compress_level} is out of range; choose 1 to {t.MAX_COMPRESS_LEVEL}")
    return options_from_pb(m)


def skipped_to_pb(items: tuple[t.Skipped, ...]) -> list[pb.SkippedEntry]:
    return [pb.SkippedEntry(path=x.path, reason=x.reason, error=x.error) for x in items]


def skipped_from_pb(items: object) -> tuple[t.Skipped, ...]:
    return tuple(t.Skipped(bytes(x.path), x.reason, x.error) for x in items)  # type: ignore[attr-defined]


def plan_to_pb(items: tuple[t.PlanItem, ...]) -> list[pb.PlanItem]:
    return [pb.PlanItem(path=x.path, change=x.change, kind=x.kind, why=list(x.why), size=x.size, target=x.target)
            for x in items]


def plan_from_pb(items: object) -> tuple[t.PlanItem, ...]:
    return tuple(t.PlanItem(bytes(x.path), x.change, x.kind, tuple(x.why), x.size, bytes(x.target))
                 for x in items)  # type: ignore[attr-defined]


def endpoint_to_pb(e: t.Endpoint) -> pb.Endpoint:
    return pb.Endpoint(host=e.host, path=e.path)


def endpoint_from_pb(m: pb.Endpoint) -> t.Endpoint:
    return t.Endpoint(host=m.host, path=bytes(m.path))


def health_to_pb(h: t.HostHealth) -> pb.HostHealth:
    m = pb.HostHealth(
        sampled_at=h.sampled_at, cpu_percent=h.cpu_percent, cpu_per_core=list(h.cpu_per_core),
        cpu_count=h.cpu_count, load1=h.load1, load5=h.load5, load15=h.load15, mem_total=h.mem_total,
        mem_available=h.mem_available, swap_in_bps=h.swap_in_bps, swap_out_bps=h.swap_out_bps,
        disk_read_bps=h.disk_read_bps, disk_write_bps=h.disk_write_bps, net_recv_bps=h.net_recv_bps,
        net_sent_bps=h.net_sent_bps, open_fds=h.open_fds, agent_cpu_percent=h.agent_cpu_percent,
        agent_rss=h.agent_rss, active_transfers=h.active_transfers, transfer_bps=h.transfer_bps,
        inotify_watches_used=h.inotify_watches_used, inotify_watches_max=h.inotify_watches_max,
        data_nic=h.data_nic,
    )
    m.exports.extend(pb.DiskUsage(path=d.path, total=d.total, used=d.used, free=d.free, percent=d.percent,
                                  device=d.device) for d in h.exports)
    m.disks.extend(pb.DiskIO(device=d.device, read_bps=d.read_bps, write_bps=d.write_bps,
                             busy_percent=d.busy_percent) for d in h.disks)
    m.nics.extend(pb.NetIO(interface=n.interface, recv_bps=n.recv_bps, sent_bps=n.sent_bps,
                           speed_mbps=n.speed_mbps) for n in h.nics)
    return m


def health_from_pb(m: pb.HostHealth) -> t.HostHealth:
    return t.HostHealth(
        sampled_at=m.sampled_at, cpu_percent=m.cpu_percent, cpu_per_core=tuple(m.cpu_per_core),
        cpu_count=m.cpu_count, load1=m.load1, load5=m.load5, load15=m.load15, mem_total=m.mem_total,
        mem_available=m.mem_available, swap_in_bps=m.swap_in_bps, swap_out_bps=m.swap_out_bps,
        exports=tuple(t.DiskUsage(bytes(d.path), d.total, d.used, d.free, d.percent, d.device) for d in m.exports),
        disk_read_bps=m.disk_read_bps, disk_write_bps=m.disk_write_bps,
        disks=tuple(t.DiskIO(d.device, d.read_bps, d.write_bps, d.busy_percent) for d in m.disks),
        net_recv_bps=m.net_recv_bps, net_sent_bps=m.net_sent_bps,
        nics=tuple(t.NetIO(n.interface, n.recv_bps, n.sent_bps, n.speed_mbps) for n in m.nics),
        open_fds=m.open_fds, agent_cpu_percent=m.agent_cpu_percent, agent_rss=m.agent_rss,
        active_transfers=m.active_transfers, transfer_bps=m.transfer_bps,
        inotify_watches_used=m.inotify_watches_used, inotify_watches_max=m.inotify_watches_max,
        data_nic=m.data_nic,
    )


def agent_info_to_pb(a: t.AgentInfo) -> pb.AgentInfo:
    return pb.AgentInfo(name=a.name, grpc_address=a.grpc_address, data_address=a.data_address,
                        exports=list(a.exports), version=a.version, pid=a.pid, hostname=a.hostname, site=a.site,
                        source_addresses=list(a.source_addresses), compress_bps=a.compress_bps)


def agent_info_from_pb(m: pb.AgentInfo) -> t.AgentInfo:
    return t.AgentInfo(name=m.name, grpc_address=m.grpc_address, data_address=m.data_address,
                       exports=tuple(bytes(e) for e in m.exports), version=m.version, pid=m.pid,
                       hostname=m.hostname, site=m.site, source_addresses=tuple(m.source_addresses),
                       compress_bps=m.compress_bps)


def job_to_pb(j: t.Job) -> pb.Job:
    m = pb.Job(
        id=j.id, state=state_to_pb(j.state), source=endpoint_to_pb(j.source),
        destination=endpoint_to_pb(j.destination), options=options_to_pb(j.options),
        created_at=j.created_at, updated_at=j.updated_at, started_at=j.started_at,
        finished_at=j.finished_at, attempts=j.attempts, max_attempts=j.max_attempts, error=j.error,
        wait_reason=j.wait_reason, progress=stats_to_pb(j.progress), next_attempt_at=j.next_attempt_at,
        group_id=j.group_id, skipped=skipped_to_pb(j.skipped), plan=plan_to_pb(j.plan),
        schedule_id=j.schedule_id,
    )
    m.history.extend(pb.Attempt(number=a.number, started_at=a.started_at, ended_at=a.ended_at,
                                error=a.error, stats=stats_to_pb(a.stats), source=a.source) for a in j.history)
    return m


def job_from_pb(m: pb.Job) -> t.Job:
    return t.Job(
        id=m.id, state=state_from_pb(m.state), source=endpoint_from_pb(m.source),
        destination=endpoint_from_pb(m.destination), options=options_from_pb(m.options),
        created_at=m.created_at, updated_at=m.updated_at, started_at=m.started_at,
        finished_at=m.finished_at, attempts=m.attempts, max_attempts=m.max_attempts, error=m.error,
        wait_reason=m.wait_reason, progress=stats_from_pb(m.progress),
        history=tuple(t.Attempt(a.number, a.started_at, a.ended_at, a.error, stats_from_pb(a.stats),
                                bytes(a.source)) for a in m.history),
        next_attempt_at=m.next_attempt_at, group_id=m.group_id, skipped=skipped_from_pb(m.skipped),
        plan=plan_from_pb(m.plan), schedule_id=m.schedule_id,
    )


def agent_status_to_pb(s: t.AgentStatus) -> object:
    from zcrepl.proto import controller_pb2 as cpb

    m = cpb.AgentStatus(info=agent_info_to_pb(s.info), online=s.online, last_seen=s.last_seen,
                        connected_at=s.connected_at, running_jobs=s.running_jobs)
    if s.health is not None:
        m.health.CopyFrom(health_to_pb(s.health))
    m.history.extend(health_to_pb(h) for h in s.history)
    return m


def agent_status_from_pb(m: object) -> t.AgentStatus:
    return t.AgentStatus(
        info=agent_info_from_pb(m.info),  # type: ignore[attr-defined]
        online=m.online,  # type: ignore[attr-defined]
        last_seen=m.last_seen,  # type: ignore[attr-defined]
        connected_at=m.connected_at,  # type: ignore[attr-defined]
        health=health_from_pb(m.health) if m.HasField("health") else None,  # type: ignore[attr-defined]
        running_jobs=m.running_jobs,  # type: ignore[attr-defined]
        history=tuple(health_from_pb(h) for h in m.history),  # type: ignore[attr-defined]
    )


_ROLE = {t.Role.SENDER: 1, t.Role.RECEIVER: 2}
_PHASE = {t.Phase.READY: 1, t.Phase.PROGRESS: 2, t.Phase.DONE: 3, t.Phase.FAILED: 4}


def report_to_pb(r: t.TransferReport) -> object:
    from zcrepl.proto import controller_pb2 as cpb

    return cpb.TransferReport(job_id=r.job_id, attempt=r.attempt, role=cpb.Role.Value("ROLE_" + r.role.name),
                              phase=cpb.Phase.Value("PHASE_" + r.phase.name),
                              stats=stats_to_pb(r.stats), error=r.error, retryable=r.retryable,
                              skipped=skipped_to_pb(r.skipped), plan=plan_to_pb(r.plan))


def report_from_pb(m: object) -> t.TransferReport:
    role = {v: k for k, v in _ROLE.items()}[m.role]  # type: ignore[attr-defined]
    phase = {v: k for k, v in _PHASE.items()}[m.phase]  # type: ignore[attr-defined]
    return t.TransferReport(
        job_id=m.job_id, attempt=m.attempt, role=role, phase=phase,  # type: ignore[attr-defined]
        stats=stats_from_pb(m.stats), error=m.error, retryable=m.retryable,  # type: ignore[attr-defined]
        skipped=skipped_from_pb(m.skipped),  # type: ignore[attr-defined]
        plan=plan_from_pb(m.plan),  # type: ignore[attr-defined]
    )
