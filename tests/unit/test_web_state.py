"""The web view's JSON at 1,000 agents: the real engine, registry and store, fed fake agents and jobs. The
document stays bounded (a page of hosts, capped job lists) while its summary counts everything, and the hosts
that need attention come first."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from importlib import resources
from pathlib import Path

import pytest
from enginehelpers import Harness

from zcrepl.controller.engine import Engine
from zcrepl.controller.registry import HealthHistory
from zcrepl.controller.store import open_store
from zcrepl.controller.web.state import (
    FINISHED_SHOWN,
    HOSTS_PER_PAGE,
    JOBS_SHOWN,
    RULES_SHOWN,
    SPARK_SAMPLES,
    TEXT_MAX,
    StateBuilder,
    _health,
)
from zcrepl.core.config import ControllerConfig
from zcrepl.core.types import AgentInfo, DiskUsage, Endpoint, HostHealth, Job, JobOptions, JobState, TransferStats
from zcrepl.core.units import rate, size

AGENTS = 1000
SAMPLES = 120
QUEUED = 300
MAX_DOCUMENT = 100 << 10  # bytes of JSON for any page, whatever the fleet's size


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, Clock]]:
    """1,000 agents with two minutes of heartbeats; agent 0007 and 0500 offline, 0042 busy, 0777 nearly full,
    and 300 queued jobs. Shared: the tests below go in order (the last one cancels jobs)."""
    clock = Clock()
    tmp_path = tmp_path_factory.mktemp("fleet")
    store = open_store("", str(tmp_path))
    engine = Engine(ControllerConfig(state_dir=str(tmp_path), insecure=True), store, clock)
    sessions = {}
    for i in range(AGENTS):
        name = f"host{i:04d}"
        sessions[name] = engine.connect(AgentInfo(name, exports=(b"/srv/data",)), [])
    for k in range(SAMPLES):
        clock.now += 1
        for i, (name, s) in enumerate(sessions.items()):
            full = 97.0 if name == "host0777" else 40.0
            engine.heartbeat(s, HostHealth(
                sampled_at=clock.now, cpu_percent=99.0 if name == "host0042" else float((i + k) % 50),
                cpu_count=8, load1=1.0, mem_total=1 << 34, mem_available=1 << 33, transfer_bps=float(k << 20),
                exports=(DiskUsage(b"/srv/data", 1 << 40, int((1 << 40) * full / 100), 0, full),)))
    for name in ("host0007", "host0500"):
        engine.disconnect(sessions[name])
    for i in range(QUEUED):
        engine.submit(Endpoint(f"host{i % AGENTS:04d}", b"/srv/data/a"),
                      Endpoint(f"host{(i + 1) % AGENTS:04d}", b"/srv/data/b"), JobOptions())
    try:
        yield engine, clock
    finally:
        store.close()


def test_a_thousand_agents_make_a_bounded_document(fleet: tuple[Engine, Clock]) -> None:
    engine, _ = fleet
    builder = StateBuilder(engine)
    docs = [asyncio.run(builder.build(p)) for p in range(AGENTS // HOSTS_PER_PAGE)]
    first = docs[0]
    sizes = [len(json.dumps(d)) for d in docs]
    assert first["hosts"]["pages"] == AGENTS // HOSTS_PER_PAGE
    assert max(sizes) < MAX_DOCUMENT, f"largest page {max(sizes)} bytes"

    summary = first["summary"]
    assert summary["agents"] == {"total": AGENTS, "online": AGENTS - 2, "offline": 2, "attention": 4}
    assert summary["jobs"]["queued"] == QUEUED
    hosts = first["hosts"]
    assert hosts["total"] == AGENTS and len(hosts["items"]) == HOSTS_PER_PAGE
    # Offline first, then the others that need attention, then everyone else by name.
    top = [(h["name"], h["attention"]) for h in hosts["items"][:5]]
    assert top[:2] == [("host0007", ["offline"]), ("host0500", ["offline"])]
    assert top[2] == ("host0042", ["CPU 99%"]) and top[3] == ("host0777", ["/srv/data 97% full"])
    assert top[4] == ("host0000", [])
    assert len(hosts["items"][4]["history"]["cpu"]) == SPARK_SAMPLES  # bounded, though each host keeps 120

    assert first["waiting"]["total"] == QUEUED and len(first["waiting"]["items"]) == JOBS_SHOWN
    assert first["running"] == {"total": 0, "items": []}

    # Every agent appears on exactly one page.
    names = [h["name"] for d in docs for h in d["hosts"]["items"]]
    assert sorted(names) == [f"host{i:04d}" for i in range(AGENTS)]


def test_finished_jobs_watch_rules_and_long_texts_are_capped(fleet: tuple[Engine, Clock]) -> None:
    engine, clock = fleet
    for job in list(engine.jobs.values())[:40]:
        engine.cancel(job.id)
    rules = [engine.watch_rules.create(Endpoint("host0001", b"/srv/data/w%d" % i),
                                 [Endpoint(f"host{d:04d}", b"/srv/data/w%d" % i) for d in range(2, 12)],
                                 JobOptions(), 1.0, 0.5, clock.now) for i in range(60)]
    doc = asyncio.run(StateBuilder(engine).build())
    assert doc["summary"]["rules"]["total"] == len(rules) and doc["rules"]["total"] == len(rules)
    assert len(doc["rules"]["items"]) == RULES_SHOWN
    assert all(len(r["destinations"]) == 8 and r["status"] for r in doc["rules"]["items"])
    assert doc["summary"]["jobs"]["cancelled"] == 40
    assert len(doc["finished"]["items"]) == FINISHED_SHOWN
    assert {j["state"] for j in doc["finished"]["items"]} == {JobState.CANCELLED.value}
    assert doc["waiting"]["total"] == QUEUED - 40

    # A job whose reason runs long (a lying agent's words end up in reasons and errors) is cut.
    job = next(j for j in engine.jobs.values() if j.state is JobState.QUEUED)
    engine.jobs[job.id] = replace(job, wait_reason="waiting: " + "x" * 5000)
    waiting = asyncio.run(StateBuilder(engine).build())["waiting"]["items"]
    assert max(len(j["reason"]) for j in waiting) == TEXT_MAX


def test_sparkline_series_follow_the_ring_as_it_wraps() -> None:
    ring = HealthHistory(maxlen=10)
    for i in range(25):
        ring.append(HostHealth(sampled_at=float(i), cpu_percent=float(i), transfer_bps=float(i * 10)))
    assert ring.series("cpu_percent", 4) == [21.0, 22.0, 23.0, 24.0]
    assert ring.series("transfer_bps", 50) == [h.transfer_bps for h in ring.last(50)]
    assert len(ring.series("cpu_percent", 50)) == 10


def test_schedules_show_their_timing_next_run_last_result_and_skips(tmp_path: Path) -> None:
    """The leader's schedules from memory, their last runs' jobs live or (once finished) from the store."""
    h = Harness(tmp_path)
    try:
        h.agent("hostA")
        h.agent("hostB")
        hourly = h.engine.schedules.add(Endpoint("hostA", b"/srv/a"), Endpoint("hostB", b"/srv/a"), JobOptions(),
                                        every=3600)
        nightly = h.engine.schedules.add(Endpoint("hostA", b"/srv/n"), Endpoint("hostB", b"/srv/n"), JobOptions(),
                                         cron="0 2 * * *", tz="Europe/Paris")
        h.engine.schedules.pause(nightly.id)
        h.now += 3600
        h.engine.schedules.step()  # the first run is queued
        h.now += 3600
        h.engine.schedules.step()  # still queued: this run is skipped
        doc = asyncio.run(StateBuilder(h.engine).build())
        job_id = h.engine.schedules.get(hourly.id).last_job_id
        h.engine.cancel(job_id)
        after = asyncio.run(StateBuilder(h.engine).build())["schedules"]["items"][0]
    finally:
        h.close()
    assert doc["summary"]["schedules"] == {"total": 2, "paused": 1}
    first, second = doc["schedules"]["items"]
    assert first["when"] == "every 1h" and first["every_text"] == "1h" and not first["paused"]
    assert (first["source"], first["destination"]) == ("hostA:/srv/a", "hostB:/srv/a")
    assert first["next_due"] == 1000.0 + 3 * 3600
    assert first["next_due_text"] == time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(first["next_due"]))
    assert (first["runs"], first["skips"], first["last_job_id"], first["last_state"]) == (1, 1, job_id, "queued")
    assert "still queued" in first["last_skip"]
    assert second["when"] == "cron 0 2 * * * (Europe/Paris)" and second["tz"] == "Europe/Paris"
    assert second["paused"] and second["next_due"] is None and second["last_state"] is None
    assert (after["last_state"], after["last_job_id"]) == ("cancelled", job_id)


@pytest.mark.parametrize("n", [0, 1, 512, 1023, 1024, 1536, 1048575, 10 << 20, 5 << 30, 3 << 40, 1 << 50])
def test_sizes_and_rates_are_the_text_of_core_units(n: int) -> None:
    """One rule for the page and zc-ctl: every size or rate the page shows is core/units' text, sent by the
    server (the page's script does no unit arithmetic: checked below)."""
    health = _health(HostHealth(mem_available=n, transfer_bps=float(n),
                                exports=(DiskUsage(b"/srv", 1 << 60, 0, n, 1.0),)))
    assert health["mem_available_text"] == size(n)
    assert health["transfer_rate_text"] == rate(n)
    assert health["fullest_export"]["free_text"] == size(n)
    job = Job(1, JobState.DONE, Endpoint("a", b"/x"), Endpoint("b", b"/y"), JobOptions(),
              progress=TransferStats(bytes_done=n))
    assert StateBuilder._finished(job)["bytes_done_text"] == size(n)


def test_the_page_formats_no_sizes_of_its_own() -> None:
    script = (resources.files("zcrepl.controller.web") / "static" / "app.js").read_text()
    assert not re.search(r"KiB|MiB|GiB|1024|toFixed\(1\)\} \$\{", script)
    assert "_text" in script
