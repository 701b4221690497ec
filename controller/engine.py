"""The controller's state and its reactions: agents come and go, reports arrive, jobs move.

Runs entirely on one asyncio event loop, so no locks: gRPC handlers call in, the scheduler loop ticks.
Everything durable goes through ``Store``; decisions come from ``scheduler.plan`` and ``lifecycle``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import assert_never

from zcrepl.controller import effects, effects_pacing, effects_submit, lifecycle
from zcrepl.controller.compression import CompressPolicy
from zcrepl.controller.dataplane import DataPlane
from zcrepl.controller.effects_pacing import THROTTLE_EVERY
from zcrepl.controller.effects_submit import unknown_host
from zcrepl.controller.faults import Faults
from zcrepl.controller.jobreads import JobReads
from zcrepl.controller.leading import Leading
from zcrepl.controller.links import LinkTracker
from zcrepl.controller.observe import Observer
from zcrepl.controller.pacing import Pacing
from zcrepl.controller.policy import (
    DecisionKind,
    DecisionRecord,
    Thresholds,
    rank_sources,
)
from zcrepl.controller.registry import Registry, Session
from zcrepl.controller.runs import Run, job_fields, stream_usage
from zcrepl.controller.schedule_store import ScheduleStore
from zcrepl.controller.scheduler import Decision, HostView, Policy, Usage, plan
from zcrepl.controller.schedules import Schedules
from zcrepl.controller.store import Store
from zcrepl.controller.watchrule_store import WatchRuleStore
from zcrepl.controller.watchrules import WatchRuleManager
from zcrepl.core.config import ControllerConfig, parse_host_limits, parse_link_limits
from zcrepl.core.errors import Conflict, UnknownHost
from zcrepl.core.logs import kv
from zcrepl.core.types import (
    AgentInfo,
    AgentStatus,
    Endpoint,
    HostHealth,
    Job,
    JobOptions,
    JobState,
    TransferReport,
    TransferStats,
)

log = logging.getLogger(__name__)


class Engine(Pacing, Faults, JobReads, Leading):
    def __init__(self, config: ControllerConfig, store: Store, clock: Callable[[], float] = time.time,
                 lead: bool = True) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.snapshot_clock = clock  # what snapshots are named after (tests move it across days and months)
        thresholds: Thresholds = config  # the load policy's settings are fields of the config (validated there)
        self.policy = Policy(max_jobs_per_host=config.max_jobs_per_host, thresholds=thresholds,
                             aging=config.priority_aging, host_limits=parse_host_limits(config.host_limits),
                             link_streams=parse_link_limits(config.link_limits))
        self.retry = lifecycle.RetryPolicy(config.max_attempts, config.retry_base, config.retry_max)
        self.deadlines = effects.Deadlines(config.ready_timeout, config.stall_timeout, config.attempt_grace)
        self.registry = Registry(config.offline_after)
        self.dataplane = DataPlane(config, self.registry)
        self.compression = CompressPolicy(config.compress, config.compress_links)
        self.jobs: dict[int, Job] = {}
        # Finished destinations of each fan-out with jobs still to run: sources for the others, kept here so
        # that a scheduling pass reads nothing from the store.
        self._replicas_done: dict[int, list[Endpoint]] = {}
        self.runs: dict[int, Run] = {}
        self._events: dict[int, asyncio.Event] = {}
        self._wake: asyncio.Event | None = None
        self.stopping = False
        self._last_decision: dict[int, DecisionRecord] = {}
        self.links = LinkTracker(window=THROTTLE_EVERY)
        self.schedules = Schedules(ScheduleStore(store), self)  # its loop is started by the daemon
        self._ranking: dict[int, dict[Endpoint, str]] = {}  # this tick's fan-out source rankings, per job
        self.observe = Observer()  # the daemon puts its metrics here
        # Leadership (controller/leadership.py): only a leader schedules, accepts agents and sends orders, each
        # stamped with its epoch. A follower's engine holds no jobs, runs or sessions.
        self.epoch = 0
        self.store_id = ""
        self._touched_at = 0.0
        self.watch_rules, self.leading = self._read_state(lead)

    def _watch_rule_manager(self) -> WatchRuleManager:
        """The watch rules as stored (read off the loop)."""
        return WatchRuleManager(WatchRuleStore(self.store), self.registry, self.policy.thresholds, self._health,
                                unknown_host, dataplane=self.dataplane)

    # -- agents -------------------------------------------------------------------------------------
    def connect(self, info: AgentInfo, active: list[tuple[int, int]], serial: int = 0, peer_host: str = "") -> Session:
        """A new stream for ``info.name``. A name whose current session is alive is refused (Conflict): a
        newcomer never unseats a live agent; one whose session went silent replaces it."""
        now = self.clock()
        if self.registry.online(info.name, now):
            raise Conflict(f"{info.name} is already connected and heartbeating; a second session for it is refused "
                           f"(if the agent restarted, it is accepted within {self.config.offline_after:g}s)")
        session = Session(info, now, now, serial=serial, peer_host=peer_host)
        old = self.registry.attach(session)
        if old is not None:
            log.warning("agent registered again; closing its previous, silent stream",
                        extra=kv(agent=info.name, host=info.name))
            old.close()
        self.store.upsert_agent(info, now)
        self._apply(effects.unknown_attempts(info.name, active, self.runs), now)
        self._rejoined(info.name, set(active))
        log.info("agent online", extra=kv(agent=info.name, host=info.name, grpc=info.grpc_address,
                                          data=info.data_address))
        self.wake()
        return session

    def disconnect(self, session: Session, why: str = "its stream closed") -> None:
        session.close()
        if self.stopping or not self.leading:
            # Our own shutdown closes every stream: running attempts stay "running" in the store and are
            # requeued, uncounted, by recover_interrupted() at the next start.
            self.registry.detach(session)
            return
        if self.registry.detach(session):
            name = session.info.name
            self.store.touch_agent(name, session.last_seen)
            log.warning("agent offline", extra=kv(agent=name, host=name, reason=why))
            self._host_lost(name, why)
            self.wake()

    def drop_revoked(self, revoked: frozenset[int]) -> None:
        """Close the streams of agents whose certificate was just revoked."""
        for rec in list(self.registry.agents.values()):
            if rec.session is not None and rec.session.serial and rec.session.serial in revoked:
                log.warning("agent certificate revoked; closing its stream",
                            extra=kv(agent=rec.info.name, host=rec.info.name))
                self.disconnect(rec.session, "its certificate was revoked")

    def close_sessions(self) -> None:
        self.watch_rules.flush(self.clock())
        for rec in self.registry.agents.values():
            if rec.session is not None:
                rec.session.close()

    def heartbeat(self, session: Session, health: HostHealth) -> None:
        self.registry.heartbeat(session, health, self.clock())

    def report(self, session: Session, r: TransferReport) -> None:
        job = self.jobs.get(r.job_id)
        online = job is not None and self.registry.session(job.destination.host) is not None
        now = self.clock()
        self._apply(effects.reported(self.runs.get(r.job_id), job, r, session.info.name, now, online), now)

    def agent_names(self, names: list[str] | None = None) -> list[str]:
        """``names`` checked (UnknownHost for a stranger), or every known agent, sorted."""
        wanted = names or sorted(self.registry.agents)
        for n in wanted:
            if not self.registry.known(n):
                raise UnknownHost(unknown_host(n))
        return wanted

    def statuses(self, names: list[str] | None = None, history: int = 0) -> list[AgentStatus]:
        now = self.clock()
        running = self._running_per_host()
        return [self.registry.status(n, now, running.get(n, 0), history) for n in self.agent_names(names)]

    def remove_agent(self, name: str) -> AgentStatus:
        """Forget an offline agent: its record, latest health and history (the operator's RemoveAgent)."""
        rec = self.registry.agents.get(name)
        if rec is None:
            raise UnknownHost(unknown_host(name))
        if rec.session is not None:
            raise Conflict(f"{name} is online: removing it is refused; stop its zc-agent first (an agent that "
                           f"connects again registers anew), then run zc-ctl agents remove {name}")
        jobs = sorted(j.id for j in self.jobs.values() if name in (j.source.host, j.destination.host))
        if jobs:
            raise Conflict(f"{name} is named by queued job(s) {', '.join(map(str, jobs))}; cancel them first "
                           "(zc-ctl cancel ID) or bring the agent back")
        rules = sorted(r.id for r in self.watch_rules.rules.values() if name in {r.source.host,
                                                                           *(d.host for d in r.destinations)})
        if rules:
            raise Conflict(f"{name} is part of watch rule(s) {', '.join(map(str, rules))}; remove them first "
                           "(zc-ctl syncs remove ID)")
        schedules = self.schedules.naming(name)
        if schedules:
            raise Conflict(f"{name} is named by schedule(s) {', '.join(map(str, schedules))}; remove them first "
                           "(zc-ctl schedule remove ID)")
        status = self.statuses([name])[0]
        self.registry.forget(name)
        self.store.remove_agent(name)
        log.info("agent removed", extra=kv(agent=name, host=name))
        return status

    # -- operator -----------------------------------------------------------------------------------
    def submit_fanout(self, src: Endpoint, dsts: list[Endpoint], options: JobOptions) -> list[Job]:
        """One job per destination, grouped: finished destinations become sources for the others."""
        effects_submit.fanout_checked(dsts)
        jobs = [self.submit(src, dst, options) for dst in dsts]
        self._apply(effects_submit.grouped(jobs), self.clock())
        return [self.jobs[j.id] for j in jobs]  # new: no history yet

    def admit(self, src: Endpoint, dst: Endpoint, options: JobOptions) -> JobOptions:
        """The checks of a job from ``src`` to ``dst`` (also a schedule's, before it is stored): the options as the
        job would carry them, or UnknownHost / InvalidPath in one sentence."""
        return effects_submit.admitted(src, dst, options, self.registry.agents)

    def submit(self, src: Endpoint, dst: Endpoint, options: JobOptions) -> Job:
        new = effects_submit.submission(src, dst, options, self.registry.agents, self.jobs.values(),
                                        self.snapshot_clock() if options.snapshot else 0.0, self.config.max_attempts)
        now = self.clock()
        job = self.store.create_job(new.source, new.destination, new.options, new.max_attempts, now)
        self._apply(effects_submit.queued(job), now)
        return job

    def cancel(self, job_id: int) -> Job:
        self._cancel(self.jobs.get(job_id) or self.get(job_id))
        return self.get(job_id)

    async def cancel_async(self, job_id: int) -> Job:
        self._cancel(self.jobs.get(job_id) or await self.get_async(job_id))
        return await self.get_async(job_id)

    def _cancel(self, job: Job) -> None:
        now = self.clock()
        self._apply(effects.cancelled(job, self.runs.get(job.id), now), now)

    def _decide(self, job_id: int, kind: DecisionKind, reason: str, *, every: bool = False,
                **details: str | int | float | bool) -> None:
        """Record one step of the job's explain history (unchanged waits are not repeated, unless ``every``)."""
        self._record(DecisionRecord(job_id, self.clock(), kind, reason, details), every)

    def _record(self, rec: DecisionRecord, every: bool = False) -> None:
        if not every and rec.repeats(self._last_decision.get(rec.job_id)):
            return
        if rec.job_id in self.jobs:
            self._last_decision[rec.job_id] = rec
        else:  # the job has ended: nothing repeats after its last word
            self._last_decision.pop(rec.job_id, None)
        self.store.add_decision(rec.job_id, rec.at, rec.kind.value, rec.reason, json.dumps(dict(rec.details)))

    # -- scheduling ---------------------------------------------------------------------------------
    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def run_forever(self) -> None:
        self._wake = asyncio.Event()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.schedule_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            if not self.leading:
                continue
            try:
                self.observe.scheduling_pass(self.tick)
            except Exception:
                log.exception("scheduler tick failed")

    def tick(self) -> None:
        now = self.clock()
        for s in self.registry.silent(now):
            self.disconnect(s, f"no heartbeat for {self.config.offline_after:.0f}s")
        self._apply(effects.overdue(list(self.runs.values()), self.jobs, now, self.deadlines), now)
        self._throttle_running(now)
        self._sample_links(now)
        self._touch_online(now)
        self.watch_rules.tick(now)
        queued = [j for j in self.jobs.values() if j.state is JobState.QUEUED]
        if queued:
            self._apply(effects.scheduled(self._plan(queued, now), self.jobs, now), now)

    def _plan(self, queued: list[Job], now: float) -> list[Decision]:
        """The scheduler's decisions for the ``queued`` jobs, over the hosts, runs and fan-out copies as they are."""
        usage = self._stream_usage()
        hosts = {name: HostView(name, self.registry.online(name, now), streams=usage.hosts.get(name, 0),
                                health=self._health(name))
                 for name in self.registry.agents}
        for name, n in self._running_per_host().items():
            hosts[name] = replace(hosts[name], running=n)
        running = [self.jobs[i] for i in self.runs]
        self._ranking.clear()
        sources: dict[int, list[Endpoint]] = {}
        for j in queued:
            if j.group_id:
                try:
                    sources[j.id] = self._replicas(j)
                except Exception as err:  # this job reads from its own source this pass; the others go on
                    self._schedule_failed(j, err)
        sending = [(self.jobs[i].group_id, r.source.host) for i, r in self.runs.items() if self.jobs[i].group_id]
        return plan(queued, hosts, running, self.policy, now, sources=sources, group_sending=sending,
                    link_streams=usage.links)

    def _apply(self, todo: Sequence[effects.Effect], now: float) -> None:
        """Carry out what the pure core decided, in order, against the store and the agent sessions."""
        for e in todo:
            if isinstance(e, effects.AttemptEffect):
                self._attempt(e, now)
            elif isinstance(e, effects.ReportEffect):
                self._apply_report(e)
            elif isinstance(e, effects.RunEffect):
                self._run_effect(e, now)
            else:
                self._job_effect(e)

    def _job_effect(self, e: effects.JobEffect) -> None:
        match e:
            case effects.Persist(job):
                self.jobs[job.id] = job
                self.store.save_job(job)
            case effects.Notify(job_id):
                self._notify(job_id)
            case effects.Record(job_id, kind, reason, details, every):
                self._record(DecisionRecord(job_id, self.clock(), kind, reason, details), every)
            case effects.Settle(job):
                self._settle(job)
            case effects.Order(host, order):
                if (session := self.registry.session(host)) is not None:
                    session.outbox.put_nowait(order)
            case effects.Log(message, fields, warning):
                (log.warning if warning else log.info)(message, extra=kv(**fields))
            case effects.Track(job):
                self.jobs[job.id] = job
            case effects.Group(job_ids, group_id):
                self.store.set_group(list(job_ids), group_id)
                for i in job_ids:
                    self.jobs[i] = replace(self.jobs[i], group_id=group_id)
                self._replicas_done[group_id] = []
            case effects.Wake():
                self.wake()
            case _:
                assert_never(e)

    def _run_effect(self, e: effects.RunEffect, now: float) -> None:
        """The effects on an attempt in flight that only this controller keeps (faults, adoption, pacing)."""
        match e:
            case effects.Hold(job_id, host, until):
                self.runs[job_id].held(host, until)
            case effects.Regained(job_id, host):
                self.runs[job_id].regained(host)
            case effects.Adopt(run):
                self.runs[run.job_id] = run
                self.links.start((run.job_id, run.attempt), run.progress, run.streams, now)
            case effects.Drop(job_id):
                self.runs.pop(job_id, None)
            case effects.Paced(job_id, at, rate_bytes, bwlimit, paused):
                run = self.runs[job_id]
                run.rate_at, run.rate_bytes, run.bwlimit, run.paused = at, rate_bytes, bwlimit, paused
            case _:
                assert_never(e)

    def _attempt(self, e: effects.AttemptEffect, now: float) -> None:
        """The effects that start or end an attempt (``effects.scheduled``, ``overdue``, ``succeeded``, ...)."""
        match e:
            case effects.Start(job_id, source):
                queued = self.jobs[job_id]
                try:
                    self._start(queued, now, source)
                except Exception as err:  # the job stays queued as it was; the pass goes on with the others
                    self._schedule_failed(queued, err)
            case effects.FailAttempt(job_id, error, retryable, stats):
                self._fail_run(job_id, error, retryable, stats)
            case effects.EndAttempt(job_id, error, stats, link_failed):
                run, job = self.runs.pop(job_id), self.jobs[job_id]
                self._link_ended(job, run, stats, failed=link_failed)
                self.observe.attempt_ended(run.source.host, job.destination.host, stats, error)
                self.store.end_attempt(job_id, run.attempt, now, error, stats)
                self.store.save_skipped(job_id, run.attempt, run.skipped)
                if not error:
                    self.store.save_plan(job_id, run.attempt, run.plan)
            case effects.Withdraw(job_id, reason):
                run = self.runs.pop(job_id)
                self.links.forget((job_id, run.attempt))
                self.store.end_attempt(job_id, run.attempt, now, reason, run.progress)
            case effects.Sending(job_id, streams, compressed, at):
                run = self.runs[job_id]
                run.sending, run.rate_at, run.streams, run.compressed = True, at, streams, compressed
                self.links.start((job_id, run.attempt), run.progress, streams, at)
            case effects.Begin(run):
                job = self.jobs[run.job_id]
                self.store.start_attempt(job.id, run.attempt, now, run.source.host.encode() + b":" + run.source.path)
                self.runs[job.id] = run
                self.observe.attempt_started(run.source.host, job.destination.host)
            case effects.ReplicaDone(group_id, replica):
                self._replicas_done.setdefault(group_id, []).append(replica)
            case _:
                assert_never(e)

    def _apply_report(self, e: effects.ReportEffect) -> None:
        """The effects of an agent's report (``effects.reported``), on the attempt it is about."""
        match e:
            case effects.Heard(r, at):
                self.runs[r.job_id].heard(r, at)
            case effects.Misdirected(job_id, agent):
                log.warning("report from the wrong agent ignored",
                            extra=kv(**job_fields(self.jobs[job_id], self.runs[job_id]), agent=agent))
            case effects.Progress(job_id, stats):
                self.runs[job_id].progress = stats
                self.jobs[job_id] = replace(self.jobs[job_id], progress=stats)
            case effects.Send(job_id):
                self._on_ready(self.jobs[job_id], self.runs[job_id])
            case effects.AwaitVerdict(r, at):
                self.runs[r.job_id].sender_failed, self.runs[r.job_id].sender_failed_at = r, at
            case effects.Succeed(job_id):
                now = self.clock()
                self._apply(effects.succeeded(self.jobs[job_id], self.runs[job_id], now), now)
            case _:
                assert_never(e)

    def _replicas(self, job: Job) -> list[Endpoint]:
        """Where a fan-out job may read from: finished siblings best first (``policy.rank_sources``: the
        link's measured throughput to this destination, the sibling's load, its recent failures), then the
        original source, last so that it is spared once copies exist."""
        # A replica's agent may have been removed since.
        done = [d for d in self._replicas_done.get(job.group_id, ()) if self.registry.known(d.host)]
        if not done:
            return [job.source]
        ranked = rank_sources(done, job.destination, self.links.states, {ep.host: self._health(ep.host) for ep in done},
                              self.links.failures, self.clock(), thresholds=self.policy.thresholds or Thresholds(),
                              failure_window=self.links.failure_window)
        self._ranking[job.id] = {r.source: r.reason for r in ranked}
        return [*(r.source for r in ranked), job.source]

    def _stream_usage(self, but: int = 0) -> Usage:
        return stream_usage(self.runs, self.jobs, but)

    def _health(self, name: str) -> HostHealth | None:
        """Latest health stamped with when it arrived here: agents' clocks may be skewed."""
        rec = self.registry.agents[name]
        return replace(rec.health, sampled_at=rec.last_seen) if rec.health is not None else None

    def _running_per_host(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for job_id, run in self.runs.items():
            for h in {run.source.host, self.jobs[job_id].destination.host}:
                out[h] = out.get(h, 0) + 1
        return out

    def _start(self, job: Job, now: float, source: Endpoint) -> None:
        if self.registry.session(job.destination.host) is None:
            return  # gone since the scheduler saw it online: the job waits for the next pass
        crypt = self.dataplane.encrypt(source.host, job.destination.host, job.options.encrypt)
        self._apply(effects.started(job, source, now, ticket=secrets.token_bytes(32), crypt=crypt,
                                    ready_by=now + self.config.ready_timeout,
                                    addresses=self.dataplane.source_addresses(source.host),
                                    ranked=self._ranking.get(job.id, {}).get(source, "")), now)

    def _on_ready(self, job: Job, run: Run) -> None:
        """The destination is ready: the send as ``effects_pacing.ready`` decides it from what is known of both
        ends and their link now."""
        now = self.clock()
        src, dst = run.source.host, job.destination.host
        src_rec, dst_rec = self.registry.agents.get(src), self.registry.agents.get(dst)
        ends = None
        if self.registry.session(src) is not None and src_rec is not None and dst_rec is not None:
            ends = effects_pacing.Ends(dst_rec.info.data_address, (self._health(src), self._health(dst)),
                                       (src_rec.info.compress_bps, dst_rec.info.compress_bps),
                                       self.links.states.get((src, dst)), self._stream_usage(but=job.id))
        self._apply(effects_pacing.ready(job, run, now, ends, self.policy, self.compression), now)

    def _fail_run(self, job_id: int, error: str, retryable: bool, stats: TransferStats) -> None:
        run, job = self.runs.get(job_id), self.jobs.get(job_id)
        if run is not None and job is not None:
            now = self.clock()
            self._apply(effects.failed(job, run, error, retryable, stats, now, self.retry), now)

    def _settle(self, job: Job) -> None:
        self.store.save_job(job)
        self.observe.job_settled(job)
        if job.state.final:
            self.jobs.pop(job.id, None)
            self._last_decision.pop(job.id, None)
            if job.group_id and not any(j.group_id == job.group_id for j in self.jobs.values()):
                self._replicas_done.pop(job.group_id, None)  # the fan-out is over
        else:
            self.jobs[job.id] = job
        self._notify(job.id)
        self.wake()

    def _notify(self, job_id: int) -> None:
        ev = self._events.pop(job_id, None)
        if ev is not None:
            ev.set()

