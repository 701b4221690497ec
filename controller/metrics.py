"""The controller's Prometheus metrics: one registry per daemon.

Two sources. What the controller already holds (jobs per state, waiting reasons, agents and their heartbeats,
links, watch rules) is read at scrape time by a custom collector, on the event loop's thread, so a scrape
sees one consistent state and nothing is kept twice. What only happens as events (attempts, failures, bytes
moved, durations) is counted by the engine's :class:`~zcrepl.controller.observe.Observer` calls.

Labels are hosts, links (source, destination), rule ids and a few fixed words; never paths or job ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from zcrepl.controller.engine import Engine
from zcrepl.controller.observe import Observer
from zcrepl.controller.runs import stream_usage
from zcrepl.controller.store import Store
from zcrepl.core.errorkind import ERROR_KINDS, WAIT_KINDS, error_kind, wait_kind
from zcrepl.core.schedtypes import ScheduleState
from zcrepl.core.types import Job, JobState, TransferStats
from zcrepl.core.watchtypes import WatchState

# Whole-tree jobs run from seconds to a day.
JOB_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600)
PASS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
STORE_CALLS = ("create_job", "save_job", "start_attempt", "end_attempt", "save_skipped", "get_job", "list_jobs",
               "add_decision", "decisions", "upsert_agent", "touch_agent", "touch_agents", "remove_agent", "job_counts",
               "set_group")
SCRAPE_TIMEOUT = 5.0
FAILED_STATES = (JobState.FAILED.value, JobState.CANCELLED.value)


class ControllerMetrics(Observer):
    def __init__(self, engine: Engine, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.attempts = Counter("zcrepl_controller_attempts", "Job attempts ordered, per link",
                                ["source", "destination"], registry=r)
        self.failures = Counter("zcrepl_controller_attempt_failures", "Job attempts that failed, per cause",
                                ["cause"], registry=r)
        for cause in ERROR_KINDS:
            self.failures.labels(cause)
        self.moved_bytes = Counter("zcrepl_controller_link_transferred_bytes",
                                   "File bytes moved by ended job attempts, per link", ["source", "destination"],
                                   registry=r)
        self.moved_files = Counter("zcrepl_controller_link_transferred_files",
                                   "Files moved by ended job attempts, per link", ["source", "destination"],
                                   registry=r)
        self.job_seconds = Histogram("zcrepl_controller_job_duration_seconds",
                                     "Time from submission to the final state, per final state", ["state"],
                                     buckets=JOB_BUCKETS, registry=r)
        self.pass_seconds = Histogram("zcrepl_controller_scheduling_pass_seconds",
                                      "Duration of one scheduling pass", buckets=PASS_BUCKETS, registry=r)
        self.store_seconds = Histogram("zcrepl_controller_store_call_seconds", "Latency of job store calls",
                                       ["call"], buckets=STORE_BUCKETS, registry=r)
        # Whether this controller's lease connection reaches the database (daemon.py sets it on PostgreSQL).
        self.store_reachable: Callable[[], bool] = lambda: True
        r.register(_StateCollector(engine, loop, lambda: self.store_reachable()))
        instrument_store(store, self.store_seconds)

    # -- Observer -----------------------------------------------------------------------------------
    def attempt_started(self, source: str, destination: str) -> None:
        self.attempts.labels(source, destination).inc()

    def attempt_ended(self, source: str, destination: str, stats: TransferStats, error: str) -> None:
        self.moved_bytes.labels(source, destination).inc(max(0, stats.bytes_done))
        self.moved_files.labels(source, destination).inc(max(0, stats.files_done))
        if error:
            self.failures.labels(error_kind(error)).inc()

    def job_settled(self, job: Job) -> None:
        if job.state.final and job.finished_at and job.created_at:
            self.job_seconds.labels(job.state.value).observe(max(0.0, job.finished_at - job.created_at))

    def scheduling_pass(self, tick: Callable[[], None]) -> None:
        with self.pass_seconds.time():
            tick()


def instrument_store(store: Store, histogram: Histogram) -> None:
    """Time every statement the store's thread runs (the engine's own calls only queue them)."""
    for name in STORE_CALLS:
        histogram.labels(name)  # every call a series from the start, at zero
    store.timer = lambda name, seconds: histogram.labels(name).observe(seconds)


class _StateCollector(Collector):
    """Reads the engine's state at scrape time, on the loop's thread (the engine has no locks)."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop, reachable: Callable[[], bool]) -> None:
        self.engine = engine
        self.loop = loop
        self.reachable = reachable

    def describe(self) -> Iterable[Metric]:
        return []  # no fixed names to check against the registry's: the families below are read live

    def collect(self) -> Iterable[Metric]:
        if self.loop.is_closed() or not self.loop.is_running():
            return []
        try:
            return asyncio.run_coroutine_threadsafe(self._families(), self.loop).result(SCRAPE_TIMEOUT)
        except (TimeoutError, RuntimeError, asyncio.CancelledError):
            return []  # the loop is stopping or stuck; the scrape shows the event counters only

    async def _families(self) -> list[Metric]:
        e = self.engine
        now = e.clock()
        lead = GaugeMetricFamily("zcrepl_controller_leader",
                                 "1 while this controller leads (holds the lease; always with SQLite), 0 as a follower")
        lead.add_metric([], 1 if e.leading else 0)
        epoch = GaugeMetricFamily("zcrepl_controller_leader_epoch",
                                  "The epoch this controller last led under (grows with each new leader)")
        epoch.add_metric([], e.epoch)
        reach = GaugeMetricFamily("zcrepl_controller_store_reachable",
                                  "1 while this controller's lease connection reaches the database (always 1 with "
                                  "SQLite)")
        reach.add_metric([], 1 if self.reachable() else 0)
        if not e.leading:
            # A follower's engine holds nothing (the leader's does): its job, agent, link and rule gauges would
            # read as an empty fleet, or count the store's jobs once per controller in a sum.
            return [lead, epoch, reach]
        jobs = GaugeMetricFamily("zcrepl_controller_jobs", "Jobs in the store, per state", labels=["state"])
        counts = await e.store.call(e.store.sql.job_counts)
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state, 0))
        waiting = GaugeMetricFamily("zcrepl_controller_waiting_jobs",
                                    "Queued jobs waiting, per kind of the first reason the scheduler gives",
                                    labels=["reason"])
        kinds = dict.fromkeys(WAIT_KINDS, 0)
        for job in e.jobs.values():
            if job.state is JobState.QUEUED and job.wait_reason:
                kinds[wait_kind(job.wait_reason)] += 1
        for kind, n in kinds.items():
            waiting.add_metric([kind], n)
        return [jobs, waiting, lead, epoch, reach, *self._agents(now), *self._links(), *self._rules(now),
                *await self._schedules()]

    def _agents(self, now: float) -> list[Metric]:
        reg = self.engine.registry
        agents = GaugeMetricFamily("zcrepl_controller_agents", "Known agents, online or offline", labels=["state"])
        up = GaugeMetricFamily("zcrepl_controller_agent_up", "1 while the agent is connected and heartbeating",
                               labels=["host"])
        age = GaugeMetricFamily("zcrepl_controller_agent_heartbeat_age_seconds",
                                "Seconds since the agent's last heartbeat (or since it was last seen)",
                                labels=["host"])
        online = 0
        for name, rec in sorted(reg.agents.items()):
            is_up = reg.online(name, now)
            online += is_up
            up.add_metric([name], 1 if is_up else 0)
            age.add_metric([name], max(0.0, now - rec.last_seen))
        agents.add_metric(["online"], online)
        agents.add_metric(["offline"], len(reg.agents) - online)
        return [agents, up, age]

    def _links(self) -> list[Metric]:
        e = self.engine
        streams = GaugeMetricFamily("zcrepl_controller_link_streams", "Data streams of running jobs, per link",
                                    labels=["source", "destination"])
        for (src, dst), n in sorted(stream_usage(e.runs, e.jobs).links.items()):
            streams.add_metric([src, dst], n)
        target = GaugeMetricFamily("zcrepl_controller_link_stream_target",
                                   "The link's adaptive target of concurrent streams (from measured throughput)",
                                   labels=["source", "destination"])
        for (src, dst), state in sorted(e.links.states.items()):
            target.add_metric([src, dst], state.streams)
        return [streams, target]

    def _rules(self, now: float) -> list[Metric]:
        labels = ["rule", "source"]
        lag = GaugeMetricFamily("zcrepl_controller_watch_rule_lag_seconds",
                                "Age of the oldest change of the rule not yet at every destination", labels=labels)
        pending = GaugeMetricFamily("zcrepl_controller_watch_rule_pending_changes",
                                    "Changes seen at the source, not yet at every destination", labels=labels)
        active = GaugeMetricFamily("zcrepl_controller_watch_rule_active", "1 for an active rule, 0 when paused",
                                   labels=labels)
        shipped = CounterMetricFamily("zcrepl_controller_watch_rule_transferred_bytes",
                                      "File bytes the rule shipped over its life", labels=labels)
        errors = CounterMetricFamily("zcrepl_controller_watch_rule_errors", "Failed sessions of the rule",
                                     labels=labels)
        for rule in self.engine.watch_rules.list_rules(now):
            key = [str(rule.id), rule.source.host]
            lag.add_metric(key, rule.lag)
            pending.add_metric(key, rule.pending)
            active.add_metric(key, 1 if rule.state is WatchState.ACTIVE else 0)
            shipped.add_metric(key, rule.counters.bytes)
            errors.add_metric(key, rule.counters.errors)
        return [lag, pending, active, shipped, errors]

    async def _schedules(self) -> list[Metric]:
        labels = ["schedule", "destination"]
        active = GaugeMetricFamily("zcrepl_controller_schedule_active", "1 for an active schedule, 0 when paused",
                                   labels=labels)
        runs = CounterMetricFamily("zcrepl_controller_schedule_runs", "Jobs the schedule queued", labels=labels)
        skipped = CounterMetricFamily("zcrepl_controller_schedule_skipped_runs",
                                      "Due runs not started because the schedule's previous run was still going",
                                      labels=labels)
        due = GaugeMetricFamily("zcrepl_controller_schedule_next_due_timestamp_seconds",
                                "When the schedule's next run is due (no sample while it is paused)", labels=labels)
        failed = GaugeMetricFamily("zcrepl_controller_schedule_last_run_failed",
                                   "1 when the schedule's last run failed, was cancelled or could not be queued",
                                   labels=labels)
        for s in await self.engine.schedules.listed():
            key = [str(s.id), s.destination.host]
            active.add_metric(key, 1 if s.state is ScheduleState.ACTIVE else 0)
            runs.add_metric(key, s.runs)
            skipped.add_metric(key, s.skips)
            if s.next_due:
                due.add_metric(key, s.next_due)
            not_queued = bool(s.last_error) and s.last_error_at >= s.last_run_at
            failed.add_metric(key, 1 if not_queued or s.last_state in FAILED_STATES else 0)
        return [active, runs, skipped, due, failed]
