"""Load policy: pure decisions from measured host health and per-link history, each with a reason in words.

No I/O, no clocks (``now`` is a parameter): the scheduler and engine own the state and call in for admission
(:func:`host_blockers`), streams per job (:func:`choose_streams`), per-link adaptive concurrency
(:func:`aimd_step`), source choice (:func:`rank_sources`), queue order (:func:`order_queue`) and the explain
history (:class:`DecisionRecord`); throttling running transfers is in :mod:`zcrepl.controller.throttle`.
Ideas taken from FTS3's optimizer (``cern-fts/fts3:src/optimizer/services/OptimizerConnections.cpp``) say
so; FTS decides once a minute over 5-30 minute windows with no host-load signal, we decide per sample
(every ~2 s) and add live CPU, load, disk and NIC figures.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from zcrepl.core.config import Thresholds
from zcrepl.core.paths import relative_to, show
from zcrepl.core.types import DiskIO, DiskUsage, Endpoint, HostHealth, Job, NetIO, Priority, Role
from zcrepl.core.units import rate, size

DEFAULTS = Thresholds()
MAX_STREAMS = 16  # FTS3 OptimizerMaxStreams; also the hard ceiling of choose_streams and aimd_step


# -- small readings ----------------------------------------------------------------------------------
def load_per_core(h: HostHealth) -> float:
    return h.load1 / max(1, h.cpu_count)  # cpu_count 0 = unknown: judge as one core, the strict reading


def busiest_disk(h: HostHealth) -> DiskIO | None:
    return max(h.disks, key=lambda d: d.busy_percent, default=None)


def disk_for(h: HostHealth, path: bytes | None) -> DiskIO | None:
    """The block device behind the export holding ``path``, as the agent mapped it; otherwise (no path,
    path outside the exports, device unknown, e.g. on tmpfs or NFS) the busiest disk, the conservative
    stand-in: a job must not start on a busy disk just because we could not tell which one it uses."""
    e = export_for(h, path) if path is not None else None
    if e is not None and e.device:
        for d in h.disks:
            if d.device == e.device:
                return d
    return busiest_disk(h)


def nic_for(h: HostHealth, role: Role) -> tuple[NetIO, float] | None:
    """(nic, utilisation %) of the NIC transfers use, in the direction this role loads: senders transmit,
    receivers receive.

    That NIC is the one holding the agent's data address (``h.data_nic``) when the agent could tell and its
    speed is known; otherwise the busiest NIC stands in, as for disks. NICs without a known speed are
    skipped (lo reports 0).
    """
    best: tuple[NetIO, float] | None = None
    for nic in h.nics:
        if nic.speed_mbps <= 0:
            continue
        bps = nic.sent_bps if role is Role.SENDER else nic.recv_bps
        util = bps * 8 / (nic.speed_mbps * 1e6) * 100
        if nic.interface == h.data_nic:
            return (nic, util)
        if best is None or util > best[1]:
            best = (nic, util)
    return best


def export_for(h: HostHealth, path: bytes | None) -> DiskUsage | None:
    """The export holding ``path`` (longest root wins), or the tightest export when ``path`` is None."""
    if path is None:
        return min(h.exports, key=lambda e: e.free, default=None)
    inside = [e for e in h.exports if relative_to(path, e.path) is not None]
    return max(inside, key=lambda e: len(e.path), default=None)


def stale(name: str, health: HostHealth | None, now: float, max_age: float) -> str:
    """Why ``health`` cannot be trusted, or "" when it is fresh."""
    if health is None:
        return f"{name} has reported no health yet; its load is unknown"
    age = now - health.sampled_at
    if age > max_age:
        return f"{name} health is {age:.0f}s old (limit {max_age:.0f}s); its load is unknown"
    return ""


def over(name: str, h: HostHealth, t: Thresholds, role: Role, *, high: bool, path: bytes | None = None) -> list[str]:
    """Each figure of ``h`` above the start set (``high=False``) or the high-water set, in words; the disk
    judged is the one behind ``path`` (:func:`disk_for`)."""
    cpu, lpc, disk_lim, net_lim = t.limits(high)
    out: list[str] = []
    if h.cpu_percent > cpu:
        out.append(f"{name} CPU {h.cpu_percent:.0f}% busy (limit {cpu:.0f}%)")
    if load_per_core(h) > lpc:
        out.append(f"{name} load {load_per_core(h):.1f} per core (limit {lpc:.1f})")
    disk = disk_for(h, path)
    if disk is not None and disk.busy_percent > disk_lim:
        out.append(f"{name} disk {disk.busy_percent:.0f}% busy ({disk.device}, limit {disk_lim:.0f}%)")
    nic = nic_for(h, role)
    if nic is not None and nic[1] > net_lim:
        way = "sending" if role is Role.SENDER else "receiving"
        out.append(f"{name} network {nic[1]:.0f}% used {way} ({nic[0].interface} {nic[0].speed_mbps} Mb/s, "
                   f"limit {net_lim:.0f}%)")
    return out


def pressure(h: HostHealth, t: Thresholds, role: Role, path: bytes | None = None) -> float:
    """Largest ratio of a figure to its start threshold: 0 idle, 1 at the threshold, above 1 blocked."""
    nic = nic_for(h, role)
    disk = disk_for(h, path)
    return max(h.cpu_percent / t.max_cpu_percent, load_per_core(h) / t.max_load_per_core,
               (disk.busy_percent if disk else 0.0) / t.max_disk_busy_percent,
               (nic[1] if nic else 0.0) / t.max_net_percent)


def free_margin(e: DiskUsage, t: Thresholds) -> int:
    return int(min(e.total * t.free_margin_fraction, t.free_margin_bytes))


# -- admission ----------------------------------------------------------------------------------
def host_blockers(name: str, health: HostHealth | None, thresholds: Thresholds, *, role: Role,
                  bytes_to_move: int = 0, path: bytes | None = None, now: float,
                  max_age: float | None = None) -> list[str]:
    """Why a job may not start on host ``name`` in this role; [] means go.

    Stale or missing health blocks alone (the other figures would be guesses). ``path`` is the job's path on
    this host: its disk is the one judged, and for receivers ``bytes_to_move`` is checked against the export
    holding it; before the first scan that is unknown (pass 0) and only the margin is enforced.
    ``max_age`` overrides ``thresholds.max_health_age``.
    """
    why = stale(name, health, now, thresholds.max_health_age if max_age is None else max_age)
    if why or health is None:
        return [why]
    out = over(name, health, thresholds, role, high=False, path=path)
    if role is Role.RECEIVER:
        e = export_for(health, path)
        if e is not None:
            need = max(0, bytes_to_move) + free_margin(e, thresholds)
            if e.free <= need:
                out.append(f"{name} has {size(e.free)} free on {show(e.path)}, needs {size(need)} "
                           f"({size(bytes_to_move)} to move + {size(need - bytes_to_move)} margin)")
    return out


def wait_reason(blockers: Iterable[str]) -> str:
    """``"waiting: hostB disk 93% busy; ..."``, or "" when nothing blocks."""
    return ("waiting: " + "; ".join(b)) if (b := list(blockers)) else ""


# -- streams per job ----------------------------------------------------------------------------
def free_cores(h: HostHealth) -> float:
    """Idle cores by CPU time and by run queue, whichever is fewer; at least 1 so a busy host can trickle."""
    cores = max(1, h.cpu_count)
    return max(1.0, min(cores * (1 - h.cpu_percent / 100), cores - h.load1))


def choose_streams(src_health: HostHealth | None, dst_health: HostHealth | None, requested: int,
                   caps: Mapping[str, int]) -> tuple[int, str]:
    """(streams, reason): one stream per free core of the tighter end, within 1..MAX_STREAMS.

    ``requested`` (the job's ``streams``; 0 = auto) and every positive value in ``caps`` (labelled ceilings:
    declared per-host and per-link caps, and the link's adaptive target from :func:`aimd_step`) are
    ceilings only: they can lower the choice, never raise it above what the free cores allow.
    """
    known = [(role, h) for role, h in (("source", src_health), ("destination", dst_health)) if h is not None]
    if not known:
        n, why = 1, "no health from either end, so 1 stream"
    else:
        role, h = min(known, key=lambda rh: free_cores(rh[1]))
        n = math.floor(free_cores(h))
        why = f"{n} free cores on the {role} ({h.cpu_percent:.0f}% CPU, load {h.load1:.1f} on {h.cpu_count})"
    ceilings = {"the job's --streams": requested, f"the maximum of {MAX_STREAMS}": MAX_STREAMS, **caps}
    for label, cap in ceilings.items():
        if 0 < cap < n:
            n, why = cap, f"{why}, capped at {cap} by {label}"
    return max(1, n), why


# -- per-link adaptive concurrency --------------------------------------------------------------
@dataclass(frozen=True)
class AimdParams:
    """Tuning of :func:`aimd_step`; FTS3's defaults noted where they differ."""

    alpha: float = 0.5  # EMA weight of a new sample; FTS uses 0.1 per 60 s run, we sample every ~2 s
    increase: int = 1  # additive step (FTS OptimizerIncreaseStep)
    decrease: float = 0.5  # multiplicative cut on failure or congestion (FTS steps down by 1)
    min_success: float = 0.97  # FTS "LOW" success rate: below it, throughput no longer matters
    drop: float = 0.4  # a sample below (1 - drop) x EMA is a real throughput drop
    min_streams: int = 1


@dataclass(frozen=True)
class LinkSample:
    """What the agents reported for one (source, destination) link over one window of ``seconds``."""

    at: float
    seconds: float
    bytes: int  # payload bytes moved on the link in the window
    files: int = 0  # files completed in the window (the average file size comes from bytes / files)
    failed: int = 0  # files or attempts that failed in the window


@dataclass(frozen=True)
class LinkState:
    """Per-link memory of :func:`aimd_step`; ``streams`` is the link's target of active streams."""

    source: str
    destination: str
    streams: int = 1
    ema_bps: float = 0.0  # 0 = nothing measured yet
    success: float = 1.0  # EMA of the per-window success ratio
    avg_file_size: float = 0.0  # of the last window that completed files; 0 = unknown
    updated_at: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.source}→{self.destination}"


def _magnitude(n: float) -> int:
    return round(math.log10(n)) if n > 0 else 0


def aimd_step(state: LinkState, sample: LinkSample, params: AimdParams = AimdParams(), *,
              cap: int = MAX_STREAMS) -> tuple[LinkState, str]:
    """Fold one sample into the link; return the new state and the reason for its ``streams``.

    Order of rules (FTS3's optimizer gives priority to success rate, then throughput):
    1. an idle window (no bytes, no outcome) holds: an emptying queue is not congestion (FTS-1039);
    2. failures in the window with the success EMA under ``min_success`` cut multiplicatively;
    3. a throughput drop with an order-of-magnitude smaller average file size is not congestion: the EMA is
       re-based to the new file sizes and streams still rise (FTS raises too: small files want more streams);
    4. any other real drop (sample below (1 - drop) x EMA) cuts multiplicatively;
    5. success still recovering holds; otherwise streams rise by ``increase`` up to ``cap``.
    ``cap`` (min of declared per-host and per-link caps, and MAX_STREAMS) is a ceiling, never a target.
    """
    cap = max(params.min_streams, min(cap, MAX_STREAMS))
    streams = min(state.streams, cap)
    if sample.seconds <= 0 or (sample.bytes <= 0 and sample.files + sample.failed == 0):
        return replace(state, streams=streams), f"{state.name}: idle window, holding {streams} streams"
    bps = sample.bytes / sample.seconds
    outcomes = sample.files + sample.failed
    success = (1 - params.alpha) * state.success + params.alpha * sample.files / outcomes if outcomes else state.success
    avg = sample.bytes / sample.files if sample.files else state.avg_file_size
    ema = bps if state.ema_bps <= 0 else (1 - params.alpha) * state.ema_bps + params.alpha * bps
    new = replace(state, success=success, avg_file_size=avg, ema_bps=ema, updated_at=sample.at)
    cut = max(params.min_streams, math.floor(streams * params.decrease))
    dropped = state.ema_bps > 0 and bps < (1 - params.drop) * state.ema_bps
    smaller = (state.avg_file_size > 0 and sample.files > 0
               and _magnitude(avg) < _magnitude(state.avg_file_size))
    if sample.failed and success < params.min_success:
        return (replace(new, streams=cut),
                f"{state.name}: {sample.failed} failed, success {success:.0%} < {params.min_success:.0%}, "
                f"streams {streams} → {cut}")
    if dropped and not smaller:
        return (replace(new, streams=cut), f"{state.name}: throughput fell {rate(state.ema_bps)} → {rate(bps)}, "
                f"streams {streams} → {cut}")
    if dropped:
        new = replace(new, ema_bps=bps)
        why = (f"{state.name}: throughput {rate(state.ema_bps)} → {rate(bps)} with average file size "
               f"{size(state.avg_file_size)} → {size(avg)}: smaller files, not congestion")
    else:
        why = f"{state.name}: throughput {rate(ema)}, success {success:.0%}"
    if success < params.min_success:
        return replace(new, streams=streams), f"{why}; success recovering, holding {streams} streams"
    up = min(cap, streams + params.increase)
    if up == streams:
        return replace(new, streams=streams), f"{why}; at the cap of {cap} streams"
    return replace(new, streams=up), f"{why}; streams {streams} → {up}"


# -- source choice ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RankedSource:
    source: Endpoint
    score: float  # expected useful bytes/s; only comparable within one ranking
    blocked: bool  # the host may not send now (stale health or over a start threshold)
    reason: str


def rank_sources(candidates: Sequence[Endpoint], dst: Endpoint, link_states: Mapping[tuple[str, str], LinkState],
                 healths: Mapping[str, HostHealth | None], recent_failures: Mapping[str, Sequence[float]],
                 now: float, *, thresholds: Thresholds = DEFAULTS,
                 failure_window: float = 3600.0) -> list[RankedSource]:
    """Replicas best first: unblocked before blocked, then by score, then host name.

    score = link throughput x load headroom x reliability, where throughput is the link's EMA to ``dst``
    (an unmeasured link is assumed as fast as the best measured one, so new replicas get tried: fan-out
    needs them), headroom = 1 - pressure (floor 0.05), and reliability = link success / (1 + failures of
    that source host within ``failure_window``; Rucio's FailureRate ranker uses the last hour).
    ``recent_failures`` maps a host to the times its transfers failed.
    """
    known = [s.ema_bps for (a, b), s in link_states.items() if b == dst.host and s.ema_bps > 0]
    assumed = max(known, default=1.0)
    out: list[RankedSource] = []
    for c in candidates:
        link = link_states.get((c.host, dst.host))
        measured = link is not None and link.ema_bps > 0
        bps = link.ema_bps if link is not None and measured else assumed
        fails = sum(1 for t in recent_failures.get(c.host, ()) if now - t <= failure_window)
        reliability = (link.success if link else 1.0) / (1 + fails)
        h = healths.get(c.host)
        blockers = host_blockers(c.host, h, thresholds, role=Role.SENDER, path=c.path, now=now)
        fresh = not stale(c.host, h, now, thresholds.max_health_age)
        p = pressure(h, thresholds, Role.SENDER, c.path) if h is not None and fresh else 1.0  # unknown: none left
        score = bps * max(0.05, 1 - p) * reliability
        parts = [f"{rate(bps)} {'measured' if measured else 'assumed (not measured yet)'} to {dst.host}",
                 f"load at {p:.0%} of its start thresholds", f"{fails} failures in the last {failure_window:.0f}s"]
        if blockers:
            parts.append("blocked: " + "; ".join(blockers))
        out.append(RankedSource(c, score, bool(blockers), f"{c.host}: " + ", ".join(parts)))
    return sorted(out, key=lambda r: (r.blocked, -r.score, r.source.host))


# -- priorities with aging ----------------------------------------------------------------------
def effective_priority(priority: Priority, queued_since: float, now: float, aging: float) -> float:
    """The job's level plus one level per ``aging`` seconds waited (``aging`` <= 0 disables aging).

    So a low job that has waited longer than 2 x ``aging`` outranks a fresh high one: nothing waits forever.
    """
    return priority + (max(0.0, now - queued_since) / aging if aging > 0 else 0.0)


def order_queue(jobs: Iterable[Job], aging: float) -> list[Job]:
    """Jobs in start order: highest :func:`effective_priority` first, older first on ties, then id.

    The level is each job's ``options.priority``. Comparing ``level + (now - t) / aging`` between two jobs
    does not depend on ``now``, so the order is a FIFO on the virtual arrival time
    ``created_at - level x aging`` (no clock needed, stable between ticks): a job can be overtaken only by
    jobs that arrived less than 2 x ``aging`` after it. With aging disabled the order is by level, then age.
    """

    def key(j: Job) -> tuple[float, float, int]:
        level = j.options.priority
        if aging > 0:
            return (j.created_at - level * aging, j.created_at, j.id)
        return (-float(level), j.created_at, j.id)

    return sorted(jobs, key=key)


# -- decision history ---------------------------------------------------------------------------
class DecisionKind(enum.Enum):
    WAIT = "wait"
    START = "start"
    SLOW = "slow"
    PAUSE = "pause"
    RESUME = "resume"
    SWITCH_SOURCE = "switch_source"
    STREAMS = "streams"  # the link's adaptive stream target moved (applies to the next job on the link)
    FAIL = "fail"  # an attempt failed (and whether it will be retried)
    DONE = "done"
    CANCEL = "cancel"
    SCHEDULE = "schedule"  # queued by a schedule, or a schedule's next run skipped while this job was still going


@dataclass(frozen=True)
class DecisionRecord:
    """One line of a job's "explain" history. ``details`` is JSON-safe (so the record is not hashable)."""

    job_id: int
    at: float
    kind: DecisionKind
    reason: str
    details: Mapping[str, str | int | float | bool] = field(default_factory=dict)

    def repeats(self, last: DecisionRecord | None) -> bool:
        """Same job, kind and reason as ``last`` up to the figures: store only real changes.

        The scheduler re-decides every tick, and "hostB disk 93% busy" becoming "94% busy" is the same
        decision; "hostB disk ..." becoming "hostB CPU ..." is not. Digits inside names (host1) count.
        """
        return last is not None and (last.job_id, last.kind, _FIGURES.sub("#", last.reason)) == (
            self.job_id, self.kind, _FIGURES.sub("#", self.reason))


_FIGURES = re.compile(r"\b\d+(?:\.\d+)?")  # a number standing alone: 93, 3.2, 12 (of 12s); not host1
