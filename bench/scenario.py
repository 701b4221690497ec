"""The scheduling-pass scenario of bench/scale.py: queued jobs, hosts of mixed health and running jobs as
Engine.tick hands them to ``scheduler.plan()``, the controller's real Policy, and a cProfile of one pass."""

from __future__ import annotations

import cProfile
import pstats
import random
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from zcrepl.controller.engine import Engine
from zcrepl.controller.scheduler import Decision, HostView, Policy, plan
from zcrepl.controller.store import open_store
from zcrepl.core.config import ControllerConfig
from zcrepl.core.types import DiskIO, DiskUsage, Endpoint, HostHealth, Job, JobState, NetIO, TransferStats

GiB, TiB = 1 << 30, 1 << 40
HOST_KINDS = {"offline": 0.02, "stale": 0.02, "cpu": 0.05, "disk": 0.03, "load": 0.02, "full": 0.01}  # rest healthy


def host_health(kind: str, rng: random.Random, now: float) -> HostHealth:
    cores = rng.choice((8, 16, 32))
    cpu = rng.uniform(93, 99) if kind == "cpu" else rng.uniform(2, 60)
    load = cores * (rng.uniform(1.6, 3) if kind == "load" else cpu / 100)
    total = 20 * TiB
    free = rng.randint(10, 500) << 20 if kind == "full" else int(total * rng.uniform(0.1, 0.7))
    busy = rng.uniform(92, 100) if kind == "disk" else rng.uniform(0, 60)
    return HostHealth(
        sampled_at=now - (30.0 if kind == "stale" else rng.uniform(0, 1)),  # the controller's arrival stamp
        cpu_percent=cpu, cpu_per_core=tuple(rng.uniform(0, 100) for _ in range(cores)), cpu_count=cores,
        load1=load, load5=load, load15=load, mem_total=cores * 8 * GiB, mem_available=cores * 4 * GiB,
        exports=(DiskUsage(b"/srv/data", total, total - free, free, 100 * (total - free) / total),),
        disks=(DiskIO("nvme0n1", 1e8, 1e8, busy), DiskIO("sda", 1e7, 1e7, busy / 3)),
        nics=(NetIO("eth0", 2e8, 2e8, 10_000), NetIO("lo", 1e6, 1e6, 0)),
    )


@dataclass
class Scenario:
    """The arguments of one plan() call, as Engine.tick builds them."""

    queued: list[Job]
    hosts: dict[str, HostView]
    running: list[Job]
    sources: dict[int, list[Endpoint]]  # fan-out job -> endpoints it may read from, best first
    sending: list[tuple[int, str]]  # (fan-out group, host) already sending a copy

    def plan(self, policy: Policy, now: float) -> list[Decision]:
        return plan(self.queued, self.hosts, self.running, policy, now, sources=self.sources,
                    group_sending=self.sending)


def make_scenario(jobs: int, hosts: int, running: int, seed: int, now: float) -> Scenario:
    """``jobs`` queued jobs between random host pairs, ``running`` running ones, and hosts of mixed health:
    the HOST_KINDS fractions are offline, stale health, over the CPU / disk busy / load start thresholds, or
    with a full destination. 5% of jobs wait out a retry, 10% were requeued after a finished scan, and 10% belong
    to fan-outs of 4 destinations, each with 0-2 finished replicas to read from besides its source."""
    rng = random.Random(seed)
    names = [f"h{i:03d}" for i in range(hosts)]
    kinds = [k for k, f in HOST_KINDS.items() for _ in range(round(f * hosts))]
    kinds = (kinds + ["healthy"] * hosts)[:hosts]
    rng.shuffle(kinds)
    kind = dict(zip(names, kinds, strict=True))
    busy: Counter[str] = Counter()
    run_jobs: list[Job] = []
    while len(run_jobs) < running:
        src, dst = rng.sample([h for h in names if kind[h] != "offline"], 2)
        if busy[src] < 4 and busy[dst] < 4:
            busy.update((src, dst))
            run_jobs.append(Job(jobs + len(run_jobs) + 1, JobState.RUNNING, Endpoint(src, b"/srv/data/out"),
                                Endpoint(dst, b"/srv/data/run/%05d" % len(run_jobs)), started_at=now - 60))
    views = {h: HostView(h, kind[h] != "offline", busy[h], host_health(kind[h], rng, now)) for h in names}
    queued = [queued_job(i, names, rng, now) for i in range(jobs)]
    sources: dict[int, list[Endpoint]] = {}
    for first in range(0, jobs - 3, 40):  # 4 of every 40 jobs: 10%
        group = queued[first:first + 4]
        hosts_used = rng.sample(names, 6)  # 4 destinations, then up to 2 hosts holding a finished replica
        path = b"/srv/data/fan/%05d" % first
        replicas = [Endpoint(h, path) for h in hosts_used[4:4 + rng.randint(0, 2)]]
        for k, job in enumerate(group):
            queued[first + k] = replace(job, group_id=group[0].id, source=group[0].source,
                                        destination=Endpoint(hosts_used[k], path))
            sources[job.id] = [*replicas, group[0].source]
    return Scenario(queued, views, run_jobs, sources, [])


def queued_job(i: int, names: list[str], rng: random.Random, now: float) -> Job:
    src, dst = rng.sample(names, 2)
    job = Job(i + 1, JobState.QUEUED, Endpoint(src, b"/srv/data/set%05d" % i),
              Endpoint(dst, b"/srv/data/in/%s/set%05d" % (src.encode(), i)),
              created_at=now - rng.uniform(0, 3600), max_attempts=5)
    roll = rng.random()
    if roll < 0.05:
        return replace(job, attempts=1, failures=1, next_attempt_at=now + rng.uniform(1, 60))
    if roll < 0.15:
        total = rng.randint(1, 500) << 30
        done = TransferStats(bytes_total=total, bytes_done=total // 3, scan_done=True)
        return replace(job, attempts=1, progress=done)
    return job


def controller_policy(state_dir: Path) -> Policy:
    """The Policy a zc-controller with default settings builds (the Engine maps config to thresholds)."""
    store = open_store("", str(state_dir))
    try:
        return Engine(ControllerConfig(state_dir=str(state_dir)), store).policy
    finally:
        store.close()


def reason_kind(reason: str) -> str:
    for pattern, label in ((r"retry in", "retry backoff"), (r"offline", "host offline"),
                           (r"already runs", "per-host job limit"), (r"is writing", "destination overlap"),
                           (r"health|load is unknown", "stale health"), (r"CPU", "CPU"),
                           (r"load \d", "load per core"), (r"disk", "disk busy"), (r"free on", "free space"),
                           (r"sending a copy for this fan-out", "fan-out source busy")):
        if re.search(pattern, reason):
            return label
    return "other"


def profile_plan(sc: Scenario, policy: Policy, now: float, top: int = 15) -> list[dict[str, Any]]:
    """One pass under cProfile: the functions with the most own time (cProfile inflates small calls)."""
    prof = cProfile.Profile()
    prof.runcall(sc.plan, policy, now)
    st = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    rows = [{"function": f"{Path(f).name}:{line}({fn})", "calls": nc, "own_ms": tt * 1000, "cum_ms": ct * 1000}
            for (f, line, fn), (_cc, nc, tt, ct, _callers) in st.items()]
    return sorted(rows, key=lambda r: -r["own_ms"])[:top]
