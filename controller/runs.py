"""The attempt in flight for a job, and the stream arithmetic over the running attempts.

Pure helpers of the engine: which streams the runs use per host and link, what the declared limits and
the link's adaptive target leave for a new send, and whether a run's rate says anything about its link.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from zcrepl.controller.policy import MAX_STREAMS
from zcrepl.controller.scheduler import Policy, Usage
from zcrepl.core.paths import show
from zcrepl.core.types import (
    PLAN_LISTED,
    SKIPPED_LISTED,
    Endpoint,
    Job,
    Phase,
    PlanItem,
    Role,
    Skipped,
    TransferReport,
    TransferStats,
)


@dataclass
class Run:
    """The attempt in flight for one job."""

    job_id: int
    attempt: int
    ticket: bytes
    ready_deadline: float
    source: Endpoint  # what this attempt reads from: the job's source, or a finished fan-out replica
    receiver_ready: bool = False
    sender_done: TransferStats | None = None
    receiver_done: TransferStats | None = None
    progress: TransferStats = field(default_factory=TransferStats)
    last_report: float = 0.0
    sending: bool = False  # the SendOrder went out
    streams: int = 0  # data streams the SendOrder allowed (0 until then)
    bwlimit: int = 0  # the load policy's current cap (0 = none beyond the job's own)
    paused: bool = False
    rate_at: float = 0.0  # when the throttle last sampled this run...
    rate_bytes: int = 0  # ...and the bytes done then
    # Agents of this attempt the controller lost while it ran, and until when it is held for them (fence.py).
    lost_hosts: set[str] = field(default_factory=set)
    lost_until: float = 0.0
    # The source's failure report, held briefly for the destination's own (fence.await_destination), and when.
    sender_failed: TransferReport | None = None
    sender_failed_at: float = 0.0
    encrypt: bool = False  # TLS on its data connections (decided when it starts, for both orders)
    compressed: bool = False  # zstd on its data connections (decided with its streams, controller/compression.py)
    # Entries either side left out and files it could not copy (the first SKIPPED_LISTED of each kind).
    skipped: list[Skipped] = field(default_factory=list)
    skip_totals: dict[Role, int] = field(default_factory=dict)  # entries each side left out, all of them

    def heard(self, r: TransferReport, at: float) -> None:
        """Take what any report of this attempt carries (``effects.Heard``); a final one is that side's result."""
        self.last_report = at
        if r.phase is Phase.READY and r.role is Role.RECEIVER:
            self.receiver_ready = True  # the send it starts (``effects.Send``) decides on a ready run
        self.add_skipped(r)
        self.add_plan(r)
        if r.phase is Phase.DONE:
            if r.role is Role.SENDER:
                self.sender_done = r.stats
            else:
                self.receiver_done = r.stats

    def held(self, host: str, until: float) -> None:
        """``host`` went out of reach: the attempt is kept for it until ``until`` (``effects.Hold``, fence.py)."""
        self.lost_hosts.add(host)
        self.lost_until = until

    def regained(self, host: str) -> None:
        """``host`` came back still running the attempt (``effects.Regained``): held no longer once none is lost."""
        self.lost_hosts.discard(host)
        if not self.lost_hosts:
            self.lost_until = 0.0

    def add_skipped(self, r: TransferReport) -> None:
        """Take the skipped entries of a final report (each side sends its list once, with DONE or FAILED)."""
        if r.phase not in (Phase.DONE, Phase.FAILED) or r.role in self.skip_totals:
            return
        self.skip_totals[r.role] = max(r.stats.entries_skipped, sum(not x.error for x in r.skipped))
        for error in (False, True):
            room = SKIPPED_LISTED - sum(x.error is error for x in self.skipped)
            self.skipped.extend([x for x in r.skipped if x.error is error][:max(0, room)])

    plan: list[PlanItem] = field(default_factory=list)  # the receiver's dry-run plan (the first items)

    def add_plan(self, r: TransferReport) -> None:
        """Take a dry run's plan from the receiver's final report."""
        if r.phase is Phase.DONE and r.role is Role.RECEIVER and not self.plan:
            self.plan = list(r.plan[:PLAN_LISTED])

    def with_receiver_counts(self, stats: TransferStats) -> TransferStats:
        """The final stats with what only the destination knows: a dry run's totals, links, backups."""
        d = self.receiver_done
        if d is None:
            return stats
        return replace(stats, plan_created=d.plan_created, plan_updated=d.plan_updated, plan_deleted=d.plan_deleted,
                       plan_files=d.plan_files, plan_bytes=d.plan_bytes, linked=d.linked, backed_up=d.backed_up,
                       pruned=d.pruned)

    def entries_skipped(self) -> int:
        return sum(self.skip_totals.values())


def job_fields(job: Job, run: Run | None = None) -> dict[str, object]:
    """The log fields of a line about ``job``: its id, the attempt (``run``'s, else its latest; 0 before the
    first), ``host`` its destination (as zc-ctl names a job: "job 3 (hostB)") and ``source`` the host it reads
    from (the attempt's: a fan-out may read a finished replica)."""
    return {"job": job.id, "attempt": job.attempts if run is None else run.attempt, "host": job.destination.host,
            "source": job.source.host if run is None else run.source.host}


def rate_limited(job: Job, run: Run) -> bool:
    """Held back by a bandwidth cap or paused (its rate measures the cap, not the link), or a dry run (it sends no
    file content at all)."""
    return run.paused or run.bwlimit > 0 or job.options.bwlimit > 0 or job.options.dry_run


def link_cap(policy: Policy, link: tuple[str, str]) -> int:
    """The declared ceiling on a link's streams (per host and per link); MAX_STREAMS when none."""
    caps = [MAX_STREAMS, policy.link_streams.get(link, 0)]
    caps += [limit.streams for h in set(link) if (limit := policy.host_limits.get(h)) is not None]
    return min(c for c in caps if c > 0)


def stream_usage(runs: Mapping[int, Run], jobs: Mapping[int, Job], but: int = 0) -> Usage:
    """Streams in use per host and link by the runs (except job ``but``); one for a run not sending yet,
    since it will use at least one."""
    usage = Usage({}, {})
    for job_id, run in runs.items():
        if job_id != but:
            usage.add(run.source.host, jobs[job_id].destination.host, run.streams or 1)
    return usage


def stream_caps(policy: Policy, usage: Usage, src: str, dst: str, target: int) -> dict[str, int]:
    """Ceilings for a new send from ``src`` to ``dst``, labelled for its explain line: what the declared
    limits leave after ``usage`` (other runs), and the link's adaptive ``target`` (0 = none yet)."""
    caps: dict[str, int] = {}
    for host in (src, dst) if src != dst else (src,):
        limit = policy.host_limits.get(host)
        if limit is not None and limit.streams:
            used = usage.hosts.get(host, 0)
            caps[f"{host}'s stream limit of {limit.streams} ({used} in use by other jobs)"] = max(
                1, limit.streams - used)
    cap = policy.link_streams.get((src, dst), 0)
    if cap:
        used = usage.links.get((src, dst), 0)
        caps[f"the {src}→{dst} link's stream limit of {cap} ({used} in use by other jobs)"] = max(1, cap - used)
    if target:
        caps[f"the {src}→{dst} link's adaptive target (AIMD over its measured throughput)"] = target
    return caps


def skip_note(stats: TransferStats, run: Run) -> str:
    """``"; 3 entries skipped (first: a/fifo: FIFO: ...)"`` for a done decision (and as much for file errors),
    or "" when there were none."""
    note = ""
    for error, count, what in ((True, stats.file_errors, "files could not be copied"),
                               (False, stats.entries_skipped, "entries skipped")):
        if count:
            listed = [x for x in run.skipped if x.error is error]
            first = f" (first: {show(listed[0].path)}: {listed[0].reason})" if listed else ""
            note += f"; {count} {what}{first}"
    return f"{note}; zc-ctl job {run.job_id} lists them" if note else ""
