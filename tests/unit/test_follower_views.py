"""What a follower shows. Its metrics (controller/metrics.py): that it follows and whether it reaches the
database, and no job, agent, link or rule gauges (its engine holds nothing; the leader's says it all); once it
leads, all of them. Its web view (controller/web/state.py): the store's agents and jobs, and the leader's
address."""

from __future__ import annotations

import asyncio
from pathlib import Path

from enginehelpers import Harness
from prometheus_client import generate_latest

from zcrepl.controller.engine import Engine
from zcrepl.controller.metrics import ControllerMetrics
from zcrepl.controller.store import open_store
from zcrepl.controller.web.state import StateBuilder
from zcrepl.core.config import ControllerConfig
from zcrepl.core.types import Endpoint, JobOptions, JobState, Priority


def test_a_follower_says_it_follows_and_exports_no_fleet_gauges(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        h.agent("hostA")
        h.agent("hostB")
        h.submit("hostA:/srv/a", "hostB:/srv/b")
    finally:
        h.close()
    store = open_store("", str(tmp_path))
    e = Engine(ControllerConfig(state_dir=str(tmp_path)), store, clock=lambda: 2000.0, lead=False)
    reachable = [False]

    async def scrape() -> tuple[str, str]:
        m = ControllerMetrics(e, store, asyncio.get_running_loop())
        m.store_reachable = lambda: reachable[0]
        following = (await asyncio.to_thread(generate_latest, m.registry)).decode()
        reachable[0] = True
        await e.lead(7, "S")
        return following, (await asyncio.to_thread(generate_latest, m.registry)).decode()

    try:
        following, leading = asyncio.run(scrape())
    finally:
        store.close()
    assert "zcrepl_controller_leader 0.0" in following
    assert "zcrepl_controller_store_reachable 0.0" in following
    for family in ("zcrepl_controller_jobs{", "zcrepl_controller_waiting_jobs{", "zcrepl_controller_agents{",
                   "zcrepl_controller_watch_rule"):
        assert family not in following, family
    assert "zcrepl_controller_leader 1.0" in leading and "zcrepl_controller_leader_epoch 7.0" in leading
    assert "zcrepl_controller_store_reachable 1.0" in leading
    assert 'zcrepl_controller_jobs{state="queued"} 1.0' in leading


def test_a_followers_web_view_shows_the_stored_fleet_and_names_the_leader(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        h.agent("hostA")
        h.agent("hostB")
        h.agent("hostC")
        started = h.submit("hostA:/srv/a", "hostB:/srv/b")
        h.start(started)
        h.submit("hostA:/srv/c", "hostC:/srv/c")
        h.submit("hostB:/srv/d", "hostC:/srv/d", priority=Priority.HIGH)
    finally:
        h.close()
    store = open_store("", str(tmp_path))
    e = Engine(ControllerConfig(state_dir=str(tmp_path)), store, clock=lambda: h.now + 1, lead=False)
    try:
        doc = asyncio.run(StateBuilder(e, lambda: "c1:7420", lambda: "c2:7420").build())
        stored = {s: n for s, n in store.job_counts().items()}
    finally:
        store.close()
    assert doc["role"] == {"leading": False, "leader": "c1:7420", "me": "c2:7420"}
    assert [(x["name"], x["online"], x["health"]) for x in doc["hosts"]["items"]] == [
        ("hostA", True, None), ("hostB", True, None), ("hostC", True, None)]
    assert doc["summary"]["agents"] == {"total": 3, "online": 3, "offline": 0, "attention": 0}
    running = [j["id"] for j in doc["running"]["items"]]
    waiting = [j["id"] for j in doc["waiting"]["items"]]
    assert started.id in running
    assert doc["running"]["total"] == stored.get(JobState.RUNNING, 0) == len(running)
    assert doc["waiting"]["total"] == stored.get(JobState.QUEUED, 0) == len(waiting)
    assert waiting and sorted(running + waiting) == [1, 2, 3]


def test_a_followers_web_view_lists_the_stored_schedules_with_their_last_runs(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        h.agent("hostA")
        h.agent("hostB")
        s = h.engine.schedules.add(Endpoint("hostA", b"/srv/a"), Endpoint("hostB", b"/srv/b"), JobOptions(), every=60)
        h.now += 60
        h.beat("hostA")
        h.beat("hostB")
        h.engine.schedules.step()
        job = h.engine.jobs[h.engine.schedules.get(s.id).last_job_id]
        h.start(job)
        h.finish(job)
    finally:
        h.close()
    store = open_store("", str(tmp_path))
    e = Engine(ControllerConfig(state_dir=str(tmp_path)), store, clock=lambda: h.now + 1, lead=False)
    try:
        doc = asyncio.run(StateBuilder(e).build())
    finally:
        store.close()
    [item] = doc["schedules"]["items"]
    assert (item["id"], item["when"], item["runs"], item["last_job_id"], item["last_state"]) == (
        s.id, "every 1m", 1, job.id, "done")
    assert item["next_due"] == 1000.0 + 120
