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

from zcrepl.controller import effects, fence, lifecycle, snapshot, validate
from zcrepl.controller.compression import CompressPolicy
from zcrepl.controller.dataplane import DataPlane
from zcrepl.controller.faults import Faults
from zcrepl.controller.jobreads import JobReads
from zcrepl.controller.leading import Leading
from zcrepl.controller.links import LinkTracker
from zcrepl.controller.observe import Observer
from zcrepl.controller.pacing import THROTTLE_EVERY, Pacing
from zcrepl.controller.policy import (
    DecisionKind,
    DecisionRecord,
    Thresholds,
    choose_streams,
    rank_sources,
)
from zcrepl.controller.registry import Registry, Session
from zcrepl.controller.runs import Run, job_fields, skip_note, stream_caps, stream_usage
from zcrepl.controller.scheduler import HostView, Policy, Usage, overlaps, plan
from zcrepl.controller.store import Store
from zcrepl.controller.sync_store import SyncStore
from zcrepl.controller.syncs import SyncManager
from zcrepl.core.config import ControllerConfig, parse_host_limits, parse_link_limits
from zcrepl.core.errors import Conflict, InvalidPath, UnknownHost
from zcrepl.core.logs import kv
from zcrepl.core.types import (
    AgentInfo,
    AgentStatus,
    CancelOrder,
    Compress,
    Endpoint,
    HostHealth,
    Job,
    JobOptions,
    JobState,
    Phase,
    ReceiveOrder,
    Role,
    SendOrder,
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
        self._ranking: dict[int, dict[Endpoint, str]] = {}  # this tick's fan-out source rankings, per job
        self.observe = Observer()  # the daemon puts its metrics here
        # Leadership (controller/leadership.py): only a leader schedules, accepts agents and sends orders, each
        # stamped with its epoch. A follower's engine holds no jobs, runs or sessions.
        self.epoch = 0
        self.store_id = ""
        self._touched_at = 0.0
        self.syncs, self.leading = self._read_state(lead)

    def _sync_manager(self) -> SyncManager:
        """The watch rules as stored (read off the loop)."""
        return SyncManager(SyncStore(self.store), self.registry, self.policy.thresholds, self._health, _unknown_host,
                           dataplane=self.dataplane)

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
        for job_id, attempt in active:
            run = self.runs.get(job_id)
            if run is None or run.attempt != attempt:
                session.outbox.put_nowait(CancelOrder(job_id, attempt, "attempt unknown to the controller"))
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
        self.syncs.flush(self.clock())
        for rec in self.registry.agents.values():
            if rec.session is not None:
                rec.session.close()

    def heartbeat(self, session: Session, health: HostHealth) -> None:
        self.registry.heartbeat(session, health, self.clock())

    def report(self, session: Session, r: TransferReport) -> None:
        run = self.runs.get(r.job_id)
        job = self.jobs.get(r.job_id)
        if run is None or job is None or run.attempt != r.attempt:
            return  # a late report of an attempt already settled
        expected = run.source.host if r.role is Role.SENDER else job.destination.host
        if session.info.name != expected:
            log.warning("report from the wrong agent ignored", extra=kv(**job_fields(job, run),
                                                                         agent=session.info.name))
            return
        run.last_report = self.clock()
        run.add_skipped(r)
        run.add_plan(r)
        if r.phase is Phase.READY and r.role is Role.RECEIVER:
            self._on_ready(job, run)
        elif r.phase is Phase.PROGRESS:
            run.progress = r.stats
            self.jobs[job.id] = replace(job, progress=r.stats)
            self._notify(job.id)
        elif r.phase is Phase.DONE:
            if r.role is Role.SENDER:
                run.sender_done = r.stats
            else:
                run.receiver_done = r.stats
            if run.sender_done is not None and run.receiver_done is not None:
                self._succeed(job, run)
        elif r.phase is Phase.FAILED:
            if fence.await_destination(run, job, r, self.clock(), self.registry.session(job.destination.host)):
                return  # the destination's own report, due any moment, says why (and whether to retry)
            self._fail_run(job.id, r.error or f"{session.info.name} reported a failure", r.retryable, r.stats)

    def agent_names(self, names: list[str] | None = None) -> list[str]:
        """``names`` checked (UnknownHost for a stranger), or every known agent, sorted."""
        wanted = names or sorted(self.registry.agents)
        for n in wanted:
            if not self.registry.known(n):
                raise UnknownHost(_unknown_host(n))
        return wanted

    def statuses(self, names: list[str] | None = None, history: int = 0) -> list[AgentStatus]:
        now = self.clock()
        running = self._running_per_host()
        return [self.registry.status(n, now, running.get(n, 0), history) for n in self.agent_names(names)]

    def remove_agent(self, name: str) -> AgentStatus:
        """Forget an offline agent: its record, latest health and history (the operator's RemoveAgent)."""
        rec = self.registry.agents.get(name)
        if rec is None:
            raise UnknownHost(_unknown_host(name))
        if rec.session is not None:
            raise Conflict(f"{name} is online: removing it is refused; stop its zc-agent first (an agent that "
                           f"connects again registers anew), then run zc-ctl agents remove {name}")
        jobs = sorted(j.id for j in self.jobs.values() if name in (j.source.host, j.destination.host))
        if jobs:
            raise Conflict(f"{name} is named by queued job(s) {', '.join(map(str, jobs))}; cancel them first "
                           "(zc-ctl cancel ID) or bring the agent back")
        rules = sorted(r.id for r in self.syncs.rules.values() if name in {r.source.host,
                                                                           *(d.host for d in r.destinations)})
        if rules:
            raise Conflict(f"{name} is part of watch rule(s) {', '.join(map(str, rules))}; remove them first "
                           "(zc-ctl syncs remove ID)")
        status = self.statuses([name])[0]
        self.registry.forget(name)
        self.store.remove_agent(name)
        log.info("agent removed", extra=kv(agent=name, host=name))
        return status

    # -- operator -----------------------------------------------------------------------------------
    def submit_fanout(self, src: Endpoint, dsts: list[Endpoint], options: JobOptions) -> list[Job]:
        """One job per destination, grouped: finished destinations become sources for the others."""
        if len(dsts) < 2:
            raise InvalidPath("a fan-out needs at least two destinations; use SubmitJob for one")
        if len({(d.host, d.path) for d in dsts}) != len(dsts):
            raise InvalidPath("the same destination appears twice")
        for i, a in enumerate(dsts):
            for b in dsts[i + 1:]:
                if overlaps(a, b):
                    raise InvalidPath(f"destinations {a} and {b} overlap")
        jobs = [self.submit(src, dst, options) for dst in dsts]
        group = jobs[0].id
        self.store.set_group([j.id for j in jobs], group)
        for j in jobs:
            self.jobs[j.id] = replace(self.jobs[j.id], group_id=group)
        self._replicas_done[group] = []
        return [self.jobs[j.id] for j in jobs]  # new: no history yet

    def submit(self, src: Endpoint, dst: Endpoint, options: JobOptions) -> Job:
        for ep in (src, dst):
            if not self.registry.known(ep.host):
                raise UnknownHost(_unknown_host(ep.host))
        if overlaps(src, dst):
            raise InvalidPath(f"{src} and {dst} overlap; "
                              "the destination must not be inside the source or the other way round")
        if options.bwlimit < 0 or options.max_attempts < 0:
            raise InvalidPath("bwlimit and max_attempts must not be negative")
        if options.backup_dir or options.link_dest:
            options = validate.job_dirs(src, dst, options, self.registry.agents[dst.host].info.exports)
        if options.snapshot:
            options = snapshot.name_job(dst, options, self.registry.agents[dst.host].info.exports,
                                        self.snapshot_clock(), self.jobs.values())
        job = self.store.create_job(src, dst, options, options.max_attempts or self.config.max_attempts,
                                    self.clock())
        self.jobs[job.id] = job
        log.info("job queued", extra=kv(**job_fields(job), src=str(src),
                                        dst=str(dst), priority=options.priority.name.lower()))
        self.wake()
        return job

    def cancel(self, job_id: int) -> Job:
        self._cancel(self.jobs.get(job_id) or self.get(job_id))
        return self.get(job_id)

    async def cancel_async(self, job_id: int) -> Job:
        self._cancel(self.jobs.get(job_id) or await self.get_async(job_id))
        return await self.get_async(job_id)

    def _cancel(self, job: Job) -> None:
        job_id = job.id
        now = self.clock()
        job = lifecycle.cancelled(job, now)
        run = self.runs.pop(job_id, None)
        if run is not None:
            self.links.forget((job_id, run.attempt))
            self._cancel_sides(job, run, "cancelled by the operator", discard=True)
            self.store.end_attempt(job_id, run.attempt, now, "cancelled by the operator", run.progress)
        self._settle(job)
        self._decide(job_id, DecisionKind.CANCEL, "cancelled by the operator")
        log.info("job cancelled", extra=kv(**job_fields(job, run)))

    def _decide(self, job_id: int, kind: DecisionKind, reason: str, *, every: bool = False,
                **details: str | int | float | bool) -> None:
        """Record one step of the job's explain history (unchanged waits are not repeated, unless ``every``)."""
        rec = DecisionRecord(job_id, self.clock(), kind, reason, details)
        if not every and rec.repeats(self._last_decision.get(job_id)):
            return
        if job_id in self.jobs:
            self._last_decision[job_id] = rec
        else:  # the job has ended: nothing repeats after its last word
            self._last_decision.pop(job_id, None)
        self.store.add_decision(job_id, rec.at, kind.value, reason, json.dumps(details))

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
        self.syncs.tick(now)
        queued = [j for j in self.jobs.values() if j.state is JobState.QUEUED]
        if not queued:
            return
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
        decisions = plan(queued, hosts, running, self.policy, now, sources=sources, group_sending=sending,
                         link_streams=usage.links)
        self._apply(effects.scheduled(decisions, self.jobs, now), now)

    def _apply(self, todo: Sequence[effects.Effect], now: float) -> None:
        """Carry out what the pure core decided, in order, against the store and the agent sessions."""
        for e in todo:
            match e:
                case effects.Persist(job):
                    self.jobs[job.id] = job
                    self.store.save_job(job)
                case effects.Notify(job_id):
                    self._notify(job_id)
                case effects.Record(job_id, kind, reason):
                    self._decide(job_id, kind, reason)
                case effects.FailAttempt(job_id, error, retryable, stats):
                    self._fail_run(job_id, error, retryable, stats)
                case effects.Start(job_id, source):
                    queued = self.jobs[job_id]
                    try:
                        self._start(queued, now, source)
                    except Exception as err:  # the job stays queued as it was; the pass goes on with the others
                        self._schedule_failed(queued, err)

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
        dst = self.registry.session(job.destination.host)
        if dst is None:
            return
        job = lifecycle.started(job, now)
        self.jobs[job.id] = job
        self.store.save_job(job)
        self.store.start_attempt(job.id, job.attempts, now, source.host.encode() + b":" + source.path)
        run = Run(job.id, job.attempts, secrets.token_bytes(32), now + self.config.ready_timeout, source)
        crypt = self.dataplane.encrypt(source.host, job.destination.host, job.options.encrypt)
        run.encrypt = crypt.encrypt
        self.runs[job.id] = run
        self.observe.attempt_started(source.host, job.destination.host)
        log.info("attempt started", extra=kv(**job_fields(job, run)))
        via = "" if source == job.source else f" from the finished replica {source}"
        ranked = self._ranking.get(job.id, {}).get(source)
        why = f"; copies ranked by link throughput, load and failures: {ranked}" if ranked else ""
        self._decide(job.id, DecisionKind.START if not via else DecisionKind.SWITCH_SOURCE,
                     f"attempt {run.attempt} started{via}: {source.host} and {job.destination.host} are online "
                     f"and under their load thresholds{why}; {crypt.why}", attempt=run.attempt, source=source.host)
        dst.outbox.put_nowait(ReceiveOrder(job.id, run.attempt, run.ticket, job.destination.path,
                                           replace(job.options, encrypt=run.encrypt), source.host,
                                           self.dataplane.source_addresses(source.host)))
        self._notify(job.id)

    def _on_ready(self, job: Job, run: Run) -> None:
        run.receiver_ready = True
        src = self.registry.session(run.source.host)
        dst_rec = self.registry.agents.get(job.destination.host)
        if src is None or dst_rec is None:
            self._fail_run(job.id, f"{run.source.host} went offline before the transfer started", True,
                           run.progress)
            return
        link = (run.source.host, job.destination.host)
        caps = stream_caps(self.policy, self._stream_usage(but=job.id), *link, self.links.target(link))
        streams, why = choose_streams(self._health(run.source.host), self._health(job.destination.host),
                                      job.options.streams, caps)
        comp = self._compress_choice(job, run, streams)
        options = replace(job.options, streams=streams, encrypt=run.encrypt,
                          compress=Compress.ON if comp.on else Compress.OFF)
        log.info("streams chosen", extra=kv(**job_fields(job, run), streams=streams,
                                            why=why, compress=comp.on))
        self._decide(job.id, DecisionKind.START, f"sending with {streams} streams: {why}", streams=streams)
        self._decide(job.id, DecisionKind.START, comp.why, compress=comp.on)
        src.outbox.put_nowait(SendOrder(job.id, run.attempt, run.ticket, run.source.path, options,
                                        job.destination.host, dst_rec.info.data_address, job.destination.path))
        run.sending, run.rate_at, run.streams = True, self.clock(), streams
        self.links.start((job.id, run.attempt), run.progress, streams, run.rate_at)

    def _succeed(self, job: Job, run: Run) -> None:
        now = self.clock()
        stats = run.with_receiver_counts(replace(run.sender_done or run.progress,
                                                 entries_skipped=run.entries_skipped()))
        self.runs.pop(job.id, None)
        self._link_ended(job, run, stats, failed=False)
        self.observe.attempt_ended(run.source.host, job.destination.host, stats, "")
        self.store.end_attempt(job.id, run.attempt, now, "", stats)
        self.store.save_skipped(job.id, run.attempt, run.skipped)
        self.store.save_plan(job.id, run.attempt, run.plan)
        if job.group_id:
            self._replicas_done.setdefault(job.group_id, []).append(job.destination)
        self._settle(lifecycle.succeeded(job, stats, now))
        self._decide(job.id, DecisionKind.DONE, f"attempt {run.attempt} done: {stats.files_done} files, "
                     f"{stats.bytes_done} bytes moved, {stats.files_skipped} up to date{skip_note(stats, run)}")
        log.info("job done", extra=kv(**job_fields(job, run), files=stats.files_done,
                                      bytes=stats.bytes_done, skipped=stats.files_skipped, deleted=stats.deleted,
                                      left_out=stats.entries_skipped, file_errors=stats.file_errors,
                                      seconds=round(now - job.updated_at, 3)))

    def _fail_run(self, job_id: int, error: str, retryable: bool, stats: TransferStats) -> None:
        run = self.runs.pop(job_id, None)
        job = self.jobs.get(job_id)
        if run is None or job is None:
            return
        now = self.clock()
        merged = stats if stats.entries or stats.bytes_done else run.progress
        self._link_ended(job, run, merged, failed=retryable)
        self.observe.attempt_ended(run.source.host, job.destination.host, merged, error)
        self.store.end_attempt(job_id, run.attempt, now, error, merged)
        self.store.save_skipped(job_id, run.attempt, run.skipped)
        job = lifecycle.failed_attempt(replace(job, progress=merged), error, retryable, now, self.retry)
        # A job given up keeps nothing for a resume that will never come.
        self._cancel_sides(job, run, error, discard=job.state is JobState.FAILED)
        log.warning("attempt failed", extra=kv(**job_fields(job, run), error=error,
                                               retryable=retryable, next=job.state.value))
        then = (f"retry in {job.next_attempt_at - now:.1f}s" if job.state is JobState.QUEUED
                else "no retry left" if retryable else "not retried: another attempt cannot help")
        self._decide(job_id, DecisionKind.FAIL, f"attempt {run.attempt} failed: {error}; {then}")
        self._settle(job)

    def _cancel_sides(self, job: Job, run: Run, reason: str, discard: bool = False) -> None:
        for host in {run.source.host, job.destination.host}:
            s = self.registry.session(host)
            if s is not None:
                s.outbox.put_nowait(CancelOrder(job.id, run.attempt, reason, discard))

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


def _unknown_host(name: str) -> str:
    return (f"unknown host {name!r}: no zc-agent named {name!r} has registered with this controller; "
            "run 'zc-ctl agents' to list hosts, or start zc-agent --name " + name + " on that server")
