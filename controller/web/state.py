"""The web view's one JSON document: a summary of the whole fleet and a bounded page of it.

Built from the controller's in-memory state (registry, engine jobs and runs, watch rules) on the event loop's
thread, like ListAgents and ListJobs; the store is read only for job counts and the latest finished jobs.
A follower (controller/follower.py) holds no such state: its document comes from the store, as its gRPC reads
do (stored agents, online when the leader saw them lately, without health; the latest running and waiting
jobs as last saved; the watch rules without live lag), and ``role`` names the leader, whose view is live.
Sizes and rates come as numbers and as text formatted by ``core.units`` (``*_text`` keys), the one rule of zc-ctl
and the controller's messages: the page shows the text and does no unit arithmetic of its own.
The document's size does not grow with the fleet: hosts come in pages (those needing attention first), job
and rule lists are capped and say how many there are in all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zcrepl.controller import follower
from zcrepl.controller.engine import Engine
from zcrepl.controller.registry import AgentRecord
from zcrepl.controller.web import schedview
from zcrepl.core.errorkind import WAIT_KINDS, wait_kind
from zcrepl.core.paths import show
from zcrepl.core.types import Endpoint, HostHealth, Job, JobState
from zcrepl.core.units import rate as rate_text
from zcrepl.core.units import size
from zcrepl.core.watchtypes import WatchRule, WatchState

HOSTS_PER_PAGE = 25  # a glance: the jobs below stay in view
JOBS_SHOWN = 50  # running and waiting jobs listed (the counts cover all)
FINISHED_SHOWN = 10  # failed, and done or cancelled, jobs listed: the latest ones
RULES_SHOWN = 50
SPARK_SAMPLES = 60  # a minute of history at one heartbeat a second
TEXT_MAX = 400  # characters of one error or reason: a lying agent's novel must not fill the page
DISK_FULL_PERCENT = 90.0
RATE_MIN_SPAN = 0.5  # seconds between two progress samples before a rate is worth showing


@dataclass
class _Sample:
    at: float
    done: int
    rate: float = 0.0


def _text(s: str) -> str:
    return s if len(s) <= TEXT_MAX else s[: TEXT_MAX - 1] + "…"


def _ep(e: Endpoint) -> str:
    return _text(str(e))


class StateBuilder:
    """Builds the document; keeps the last progress sample per running job to compute its rate."""

    def __init__(self, engine: Engine, leader: Callable[[], str] = lambda: "", me: Callable[[], str] = lambda: ""
                 ) -> None:
        self.engine = engine
        self.leader = leader  # the leader's address as this controller last read it (as ControllerService)
        self.me = me
        self._samples: dict[int, _Sample] = {}

    async def build(self, page: int = 0) -> dict[str, Any]:
        e = self.engine
        sql = e.store.sql  # read on the store's thread, behind every write queued before
        now = e.clock()
        counts = {s.value: n for s, n in (await e.store.call(sql.job_counts)).items()}
        if e.leading:
            hosts = self._hosts(now)
            running = [j for j in e.jobs.values() if j.state is JobState.RUNNING]
            queued = [j for j in e.jobs.values() if j.state is JobState.QUEUED]
            rules = e.watch_rules.list_rules(now)
            totals = (len(running), len(queued))
        else:
            hosts, running, queued, rules = await self._stored(now)
            totals = (counts.get(JobState.RUNNING.value, 0), counts.get(JobState.QUEUED.value, 0))
        running.sort(key=lambda j: j.id)
        queued.sort(key=lambda j: (-int(j.options.priority), j.id))
        pages = max(1, -(-len(hosts) // HOSTS_PER_PAGE))
        page = min(max(0, page), pages - 1)
        shown = hosts[page * HOSTS_PER_PAGE:(page + 1) * HOSTS_PER_PAGE]
        self._forget_samples({j.id for j in running})
        failed = await e.store.call(sql.list_jobs, (JobState.FAILED,), FINISHED_SHOWN)
        finished = await e.store.call(sql.list_jobs, (JobState.DONE, JobState.CANCELLED), FINISHED_SHOWN)
        waits = dict.fromkeys(WAIT_KINDS, 0)
        for j in queued:
            if j.wait_reason:
                waits[wait_kind(j.wait_reason)] += 1
        online = sum(1 for _, _, up in hosts if up)
        schedules = await schedview.section(e, _text, _ep)
        return {
            "generated_at": now,
            "role": {"leading": e.leading, "leader": self.leader(), "me": self.me()},
            "summary": {
                "agents": {"total": len(hosts), "online": online, "offline": len(hosts) - online,
                           "attention": sum(1 for _, reasons, _ in hosts if reasons)},
                "jobs": {s.value: counts.get(s.value, 0) for s in JobState},
                "waiting": {k: n for k, n in waits.items() if n},
                "rules": {"total": len(rules), "paused": sum(r.state is WatchState.PAUSED for r in rules),
                          "max_lag": max((r.lag for r in rules), default=0.0)},
                "schedules": {"total": schedules["total"], "paused": schedules["paused"]},
            },
            "hosts": {"page": page, "pages": pages, "per_page": HOSTS_PER_PAGE, "total": len(hosts),
                      "items": [self._host(rec, reasons, up, now) for rec, reasons, up in shown]},
            "running": {"total": totals[0], "items": [self._running(j, now) for j in running[:JOBS_SHOWN]]},
            "waiting": {"total": totals[1], "items": [self._waiting(j, now) for j in queued[:JOBS_SHOWN]]},
            "failed": {"total": counts.get(JobState.FAILED.value, 0),
                       "items": [self._finished(j) for j in failed]},
            "finished": {"items": [self._finished(j) for j in finished]},
            "rules": {"total": len(rules), "items": [{
                "id": r.id, "source": _ep(r.source), "destinations": [_ep(d) for d in r.destinations[:8]],
                "state": r.state.value, "status": _text(r.status), "lag": r.lag, "pending": r.pending,
                "bytes": r.counters.bytes, "bytes_text": size(r.counters.bytes), "errors": r.counters.errors,
                "last_error": _text(r.last_error),
                "last_shipped_at": r.last_shipped_at,
            } for r in sorted(rules, key=lambda r: -r.lag)[:RULES_SHOWN]]},
            "schedules": schedules,
        }

    async def _stored(self, now: float) -> tuple[list[tuple[AgentRecord, list[str], bool]], list[Job], list[Job],
                                                 list[WatchRule]]:
        """A follower's hosts, running and waiting jobs (the latest of each) and watch rules, from the store."""
        e = self.engine
        agents = await follower.agents(e.store, [], now, e.config.offline_after)
        hosts = [(AgentRecord(a.info, a.last_seen), [] if a.online else ["offline"], a.online) for a in agents]
        hosts.sort(key=lambda t: (0 if not t[2] else 1, t[0].info.name))
        running = await e.store.call(e.store.sql.list_jobs, (JobState.RUNNING,), JOBS_SHOWN)
        queued = await e.store.call(e.store.sql.list_jobs, (JobState.QUEUED,), JOBS_SHOWN)
        return hosts, running, queued, await follower.rules(e.store)

    # -- hosts --------------------------------------------------------------------------------------
    def _hosts(self, now: float) -> list[tuple[AgentRecord, list[str], bool]]:
        """Every agent with what needs attention, those with most first, then by name."""
        reg = self.engine.registry
        out = []
        for name, rec in reg.agents.items():
            up = reg.online(name, now)
            out.append((rec, self._attention(rec, up, now), up))
        out.sort(key=lambda t: (0 if not t[2] else 1 if t[1] else 2, -len(t[1]), t[0].info.name))
        return out

    def _attention(self, rec: AgentRecord, up: bool, now: float) -> list[str]:
        if not up:
            return ["offline"]
        h = rec.health
        th = self.engine.policy.thresholds
        if h is None:
            return ["no health reported yet"]
        out = []
        if th is not None and now - h.sampled_at > th.max_health_age:
            out.append(f"health is {now - h.sampled_at:.0f}s old")
        if th is not None and h.cpu_percent > th.max_cpu_percent:
            out.append(f"CPU {h.cpu_percent:.0f}%")
        if th is not None and h.cpu_count and h.load1 / h.cpu_count > th.max_load_per_core:
            out.append(f"load {h.load1 / h.cpu_count:.1f} per core")
        out += [f"{show(x.path)} {x.percent:.0f}% full" for x in h.exports if x.percent >= DISK_FULL_PERCENT][:3]
        return out

    def _host(self, rec: AgentRecord, reasons: list[str], up: bool, now: float) -> dict[str, Any]:
        h = rec.health
        hist = rec.history
        doc: dict[str, Any] = {
            "name": rec.info.name, "online": up, "attention": [_text(r) for r in reasons],
            "seen_ago": round(max(0.0, now - rec.last_seen), 1), "site": rec.info.site, "version": rec.info.version,
            "exports": len(rec.info.exports), "health": None,
            "history": {"cpu": [round(v, 1) for v in hist.series("cpu_percent", SPARK_SAMPLES)] if hist else [],
                        "transfer_bps": [round(v) for v in hist.series("transfer_bps", SPARK_SAMPLES)] if hist else []},
        }
        if h is not None:
            doc["health"] = _health(h)
        return doc

    # -- jobs ---------------------------------------------------------------------------------------
    def _running(self, j: Job, now: float) -> dict[str, Any]:
        run = self.engine.runs.get(j.id)
        p = j.progress
        prev = self._samples.get(j.id)
        rate = prev.rate if prev else 0.0
        if prev is None or p.bytes_done < prev.done:
            self._samples[j.id] = _Sample(now, p.bytes_done)
        elif now - prev.at >= RATE_MIN_SPAN:
            rate = (p.bytes_done - prev.done) / (now - prev.at)
            self._samples[j.id] = _Sample(now, p.bytes_done, rate)
        bwlimit = run.bwlimit if run and run.bwlimit else j.options.bwlimit
        return {
            **_job(j), "attempt": j.attempts, "max_attempts": j.max_attempts, "started_at": j.started_at,
            "bytes_done": p.bytes_done, "bytes_total": p.bytes_total, "bytes_total_text": size(p.bytes_total),
            "files_done": p.files_done, "files_total": p.files_total, "scan_done": p.scan_done, "rate_bps": rate,
            "rate_text": rate_text(rate), "streams": run.streams if run else 0, "bwlimit": bwlimit,
            "bwlimit_text": rate_text(bwlimit) if bwlimit else "",
            "paused": bool(run and run.paused), "phase": _phase(run is not None and run.sending,
                                                                run is not None and run.receiver_ready),
        }

    def _waiting(self, j: Job, now: float) -> dict[str, Any]:
        return {**_job(j), "reason": _text(j.wait_reason or "waiting for the next scheduling pass"),
                "kind": wait_kind(j.wait_reason) if j.wait_reason else "other", "attempts": j.attempts,
                "waited": max(0.0, now - j.created_at),
                "retry_in": max(0.0, j.next_attempt_at - now) if j.next_attempt_at else 0.0}

    @staticmethod
    def _finished(j: Job) -> dict[str, Any]:
        return {**_job(j), "state": j.state.value, "error": _text(j.error), "attempts": j.attempts,
                "finished_at": j.finished_at, "bytes_done": j.progress.bytes_done,
                "bytes_done_text": size(j.progress.bytes_done),
                "files_done": j.progress.files_done, "skipped": j.progress.entries_skipped}

    def _forget_samples(self, running: set[int]) -> None:
        for job_id in [i for i in self._samples if i not in running]:
            del self._samples[job_id]


def _job(j: Job) -> dict[str, Any]:
    return {"id": j.id, "source": _ep(j.source), "destination": _ep(j.destination),
            "priority": j.options.priority.name.lower()}


def _phase(sending: bool, ready: bool) -> str:
    return "sending" if sending else "preparing" if ready else "starting"


def _health(h: HostHealth) -> dict[str, Any]:
    fullest = max(h.exports, key=lambda x: x.percent, default=None)
    return {
        "cpu_percent": h.cpu_percent, "cpu_count": h.cpu_count, "load1": h.load1,
        "mem_total": h.mem_total, "mem_available": h.mem_available, "mem_available_text": size(h.mem_available),
        "disk_read_bps": h.disk_read_bps, "disk_write_bps": h.disk_write_bps,
        "net_recv_bps": h.net_recv_bps, "net_sent_bps": h.net_sent_bps,
        "active_transfers": h.active_transfers, "transfer_bps": h.transfer_bps,
        "transfer_rate_text": rate_text(h.transfer_bps),
        "fullest_export": None if fullest is None else {"path": _text(show(fullest.path)), "percent": fullest.percent,
                                                       "free": fullest.free, "free_text": size(fullest.free)},
        "sampled_at": h.sampled_at,
    }

