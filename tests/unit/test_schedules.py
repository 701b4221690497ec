"""Schedules on a real Engine and Store (SQLite, and PostgreSQL where the store is what is tested), agents played by
the test, a fake clock driving both the pure step and the real asyncio loop."""

from __future__ import annotations

import asyncio
import math
from calendar import timegm
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from enginehelpers import Harness, ep
from hypothesis import given
from hypothesis import strategies as st

from zcrepl.controller import schedule_spec as spec
from zcrepl.controller.schedule_store import ScheduleStore
from zcrepl.controller.schedules import MAX_SLEEP, Schedules
from zcrepl.core.errors import Conflict, InvalidArgument, InvalidPath, UnknownHost, UnknownJob
from zcrepl.core.schedtypes import ScheduleState
from zcrepl.core.types import JobOptions, JobState, Priority

T0 = float(timegm((2026, 11, 30, 12, 0, 0)))  # a Monday, 12:00 UTC


def utc(*parts: int) -> float:
    return float(timegm((*parts, 0, 0, 0)[:6]))


# -- when a schedule is due (pure) -----------------------------------------------------------------------

@pytest.mark.parametrize(("cron", "tz", "after", "due"), [
    ("0 2 * * *", "", T0, utc(2026, 12, 1, 2)),
    ("0 2 * * *", "", utc(2026, 12, 1, 2), utc(2026, 12, 2, 2)),  # strictly after: not the same slot again
    ("0  2 * *  *", "", utc(2026, 12, 1, 1, 59, 59), utc(2026, 12, 1, 2)),
    ("*/15 * * * *", "", T0 + 1, T0 + 900),
    ("0 2 * * *", "Europe/Riga", T0, utc(2026, 12, 1, 0)),  # 02:00 in Riga (UTC+2 in winter)
    ("0 9 * * mon-fri", "", utc(2026, 12, 4, 10), utc(2026, 12, 7, 9)),  # Friday after 9 -> Monday
    ("@daily", "", T0, utc(2026, 12, 1, 0)),
    ("@hourly", "", T0, T0 + 3600),
    ("0 0 29 2 *", "", T0, utc(2028, 2, 29, 0)),
    ("30 3 29 3 *", "Europe/Riga", utc(2026, 3, 1), utc(2026, 3, 29, 1)),  # 03:30 skipped by DST: as Debian cron, 04:00
])
def test_cron_next_due(cron: str, tz: str, after: float, due: float) -> None:
    assert spec.next_due(cron, 0.0, tz, 0.0, after) == due


def test_intervals_keep_their_grid_and_skip_what_passed() -> None:
    assert spec.next_due("", 3600.0, "", T0, T0) == T0 + 3600
    assert spec.next_due("", 3600.0, "", T0, T0 + 3600) == T0 + 7200  # strictly after
    assert spec.next_due("", 3600.0, "", T0, T0 + 10 * 3600 + 5) == T0 + 11 * 3600
    assert spec.check("", 1.0, "", T0) == T0 + 1


@given(anchor=st.floats(0, 2e9), every=st.floats(1, 366 * 86400), ahead=st.floats(-1e7, 1e9))
def test_an_interval_is_due_on_its_grid_strictly_after_now(anchor: float, every: float, ahead: float) -> None:
    after = anchor + ahead
    due = spec.next_due("", every, "", anchor, after)
    assert after < due <= max(after, anchor) + every * 1.000001
    assert abs((due - anchor) / every - round((due - anchor) / every)) < 1e-6 and due > anchor


@pytest.mark.parametrize(("cron", "every", "tz", "words"), [
    ("0 0 30 2 *", 0.0, "", "cron expression '0 0 30 2 *' is refused (bad day-of-month: a value out of range, or a "
                            "day no month has, which never fires)"),
    ("0 0 31 4 *", 0.0, "", "bad day-of-month"),
    ("61 * * * *", 0.0, "", "bad minute"),
    ("0 2 * *", 0.0, "", "wrong number of fields"),
    ("@reboot", 0.0, "", "wrong number of fields"),
    ("* * */20 * 1L", 0.0, "", "never fires (no time matches it in the next 50 years)"),
    ("0 2 * * *\n", 0.0, "", "give five fields"),
    ("0 2 * * *", 0.0, "Mars/Olympus", "--tz 'Mars/Olympus' is not a time zone this controller knows"),
    ("", 0.5, "", "--every 0.5s is refused: give an interval from 1s to 366d"),
    ("", math.nan, "", "--every nans is refused"),
    ("", 3600.0, "Europe/Riga", "--tz applies to --cron only"),
    ("", 0.0, "", "exactly one of --cron EXPR and --every INTERVAL"),
    ("0 2 * * *", 60.0, "", "exactly one of --cron EXPR and --every INTERVAL"),
])
def test_timing_that_cannot_run_is_refused_in_one_sentence(cron: str, every: float, tz: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        spec.check(cron, every, tz, T0)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


# -- the engine's schedules (fake clock) ---------------------------------------------------------------------

@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    made = Harness(tmp_path / "state")
    made.now = T0
    made.agent("hostA")
    made.agent("hostB")
    yield made
    made.close()


def _add(h: Harness, **kw: Any) -> Any:
    kw.setdefault("every", 3600.0)
    return h.engine.schedules.add(ep("hostA:/srv/data"), ep("hostB:/srv/copy"), JobOptions(**kw.pop("options", {})),
                                  **kw)


def _at(h: Harness, t: float) -> None:
    """The fake clock moves to ``t``; the agents heartbeat then (else they would be offline by now)."""
    h.now = t
    for name in h.sessions:
        h.beat(name)


def _jobs(h: Harness) -> list[Any]:
    return sorted(h.engine.jobs.values(), key=lambda j: j.id)


def test_a_due_schedule_queues_an_ordinary_job_that_names_it(h: Harness) -> None:
    sched = h.engine.schedules
    s = _add(h, options={"delete": True, "priority": Priority.HIGH, "filters": ("- *.tmp",)})
    assert (s.id, s.next_due, s.state) == (1, T0 + 3600, ScheduleState.ACTIVE)
    assert sched.step() == T0 + 3600 and not h.engine.jobs  # nothing due yet
    _at(h, T0 + 3600)
    assert sched.step() == T0 + 7200
    (job,) = _jobs(h)
    assert (job.schedule_id, job.source, job.destination) == (s.id, ep("hostA:/srv/data"), ep("hostB:/srv/copy"))
    assert job.options == JobOptions(delete=True, priority=Priority.HIGH, filters=("- *.tmp",))
    h.engine.tick()  # the ordinary path: the scheduler starts it
    assert h.engine.jobs[job.id].state is JobState.RUNNING
    stored = h.store.get_job(job.id)
    assert stored is not None and stored.schedule_id == s.id
    (now,) = asyncio.run(sched.listed())
    assert (now.runs, now.last_job_id, now.last_run_at, now.last_state) == (1, job.id, T0 + 3600, "running")


def test_a_run_still_going_is_not_started_twice_and_the_skip_is_recorded(h: Harness) -> None:
    sched = h.engine.schedules
    s = _add(h)
    _at(h, T0 + 3600)
    sched.step()
    (first,) = _jobs(h)
    h.start(first)
    _at(h, T0 + 7200)
    sched.step()
    assert _jobs(h) == [h.engine.jobs[first.id]]  # no second job
    s = sched.get(s.id)
    assert (s.runs, s.skips, s.last_skip_at, s.next_due) == (1, 1, T0 + 7200, T0 + 3 * 3600)
    assert s.last_skip == (f"the run due at 2026-11-30 14:00:00 UTC was skipped: job {first.id} (the previous run) "
                           "was still running")
    _at(h, T0 + 3 * 3600 - 1)
    h.engine.schedules.schedules[s.id] = replace(s, next_due=T0 + 3 * 3600 - 1)  # a second skip, same job
    sched.step()
    assert sched.get(s.id).skips == 2
    assert [r for k, r in h.explain(first) if k == "schedule"] == [  # the job's explain: one line for both skips
        f"queued by schedule {s.id} (every 1h) for the run due at 2026-11-30 13:00:00 UTC",
        f"schedule {s.id}: the run due at 2026-11-30 14:00:00 UTC was skipped: job {first.id} (the previous run) "
        "was still running"]
    h.finish(first)
    _at(h, T0 + 3 * 3600)
    sched.step()
    (second,) = _jobs(h)
    assert second.id != first.id and second.schedule_id == s.id
    (listed,) = asyncio.run(sched.listed())
    assert (listed.runs, listed.skips, listed.last_job_id, listed.last_state) == (2, 2, second.id, "queued")


def test_missed_runs_run_once_at_start_up_then_the_grid_goes_on(h: Harness, tmp_path: Path) -> None:
    s = _add(h)
    h.store.run(lambda: None)  # what was queued is committed
    h.close()
    later = Harness(tmp_path / "state")  # the controller was down for ten slots and a bit
    try:
        later.now = T0 + 10 * 3600 + 120
        later.agent("hostA")
        later.agent("hostB")
        sched = later.engine.schedules
        assert sched.get(s.id).next_due == T0 + 3600
        assert sched.step() == T0 + 11 * 3600
        (job,) = _jobs(later)
        assert job.schedule_id == s.id
        assert sched.step() == T0 + 11 * 3600 and len(later.engine.jobs) == 1  # once, not once per missed slot
    finally:
        later.close()


def test_pause_resume_remove(h: Harness) -> None:
    sched = h.engine.schedules
    s = _add(h, cron="0 2 * * *", every=0.0)
    assert sched.pause(s.id).next_due == 0.0
    _at(h, utc(2026, 12, 3, 5))
    assert sched.step() == math.inf and not h.engine.jobs  # paused: nothing fires, nothing is made up later
    resumed = sched.resume(s.id)
    assert (resumed.state, resumed.next_due) == (ScheduleState.ACTIVE, utc(2026, 12, 4, 2))
    assert sched.step() == utc(2026, 12, 4, 2) and not h.engine.jobs
    h.engine.disconnect(h.sessions["hostB"])
    with pytest.raises(Conflict, match=r"hostB is named by schedule\(s\) 1; remove them first"):
        h.engine.remove_agent("hostB")
    assert sched.remove(s.id).id == s.id
    with pytest.raises(UnknownJob, match="no schedule 1; run 'zc-ctl schedules' to list them"):
        sched.pause(s.id)
    h.store.run(lambda: None)
    assert ScheduleStore(h.store).all() == []


def test_bad_input_stores_nothing(h: Harness) -> None:
    sched = h.engine.schedules
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"cron": "0 0 30 2 *", "every": 0.0}, InvalidArgument, "bad day-of-month"),
        ({"every": 0.2}, InvalidArgument, "--every 0.2s is refused"),
    ]
    for kw, err, words in cases:
        with pytest.raises(err, match=words):
            _add(h, **kw)
    with pytest.raises(UnknownHost, match="unknown host 'hostZ'"):
        sched.add(ep("hostZ:/srv/x"), ep("hostB:/srv/y"), JobOptions(), every=60.0)
    with pytest.raises(InvalidPath, match="overlap"):
        sched.add(ep("hostA:/srv/x"), ep("hostA:/srv/x/in"), JobOptions(), every=60.0)
    with pytest.raises(InvalidPath, match="--backup-dir"):
        sched.add(ep("hostA:/srv/x"), ep("hostB:/srv/y"), JobOptions(backup_dir=b"/elsewhere"), every=60.0)
    h.store.run(lambda: None)
    assert sched.schedules == {} and ScheduleStore(h.store).all() == []
    assert _add(h).id == 1  # no id was spent on a refusal


def test_a_run_that_cannot_be_queued_says_why_and_the_next_one_tries_again(h: Harness) -> None:
    sched = h.engine.schedules
    s = _add(h)
    h.engine.registry.forget("hostB")  # gone behind the schedule's back (remove_agent refuses it)
    _at(h, T0 + 3600)
    sched.step()
    s = sched.get(s.id)
    assert not h.engine.jobs and s.runs == 0 and s.next_due == T0 + 7200
    assert s.last_error.startswith("the run due at 2026-11-30 13:00:00 UTC could not be queued: unknown host 'hostB'")


def test_a_schedule_that_cannot_fire_does_not_stop_the_others(h: Harness) -> None:
    sched = h.engine.schedules
    bad = _add(h, cron="0 * * * *", every=0.0)
    sched.schedules[bad.id] = replace(bad, tz="Gone/Zone")  # as if the zone vanished from the system since
    good = _add(h)
    _at(h, T0 + 3600)
    assert sched.step() == T0 + 3600 + MAX_SLEEP
    assert [j.schedule_id for j in _jobs(h)] == [good.id]
    failed = sched.get(bad.id)
    assert (failed.runs, failed.next_due) == (0, T0 + 3600 + MAX_SLEEP)
    assert failed.last_error.startswith("could not fire: --tz 'Gone/Zone' is not a time zone this controller knows")


def test_metrics_show_each_schedule_and_a_failed_last_run(h: Harness) -> None:
    from zcrepl.controller.metrics import _StateCollector

    sched = h.engine.schedules
    _add(h)  # schedule 1: its run is cancelled
    paused = _add(h, cron="@daily", every=0.0)
    sched.pause(paused.id)
    _at(h, T0 + 3600)
    sched.step()
    (job,) = _jobs(h)
    h.engine.cancel(job.id)

    async def scrape() -> dict[tuple[str, str], float]:
        families = await _StateCollector(h.engine, asyncio.get_running_loop(), lambda: True)._schedules()
        return {(x.name, x.labels["schedule"]): x.value for f in families for x in f.samples}

    got = asyncio.run(scrape())
    assert got == {
        ("zcrepl_controller_schedule_active", "1"): 1, ("zcrepl_controller_schedule_active", "2"): 0,
        ("zcrepl_controller_schedule_runs_total", "1"): 1, ("zcrepl_controller_schedule_runs_total", "2"): 0,
        ("zcrepl_controller_schedule_skipped_runs_total", "1"): 0,
        ("zcrepl_controller_schedule_skipped_runs_total", "2"): 0,
        ("zcrepl_controller_schedule_next_due_timestamp_seconds", "1"): T0 + 7200,  # none for the paused one
        ("zcrepl_controller_schedule_last_run_failed", "1"): 1, ("zcrepl_controller_schedule_last_run_failed", "2"): 0,
    }


def test_the_loop_sleeps_until_due_and_is_driven_by_the_clock(h: Harness) -> None:
    async def settle(pred: Any) -> None:
        for _ in range(50):  # loop iterations, not time: the loop runs as soon as the test yields
            if pred():
                return
            await asyncio.sleep(0)
        raise AssertionError("the schedule loop did not get there")

    async def scenario() -> None:
        sched = h.engine.schedules
        sched.start()
        sched.start()  # idempotent
        await settle(lambda: sched.running)
        s = _add(h, every=3600.0)  # a wake: the loop recomputes when it next looks
        await settle(lambda: sched.sleeping_until == T0 + 3600)
        assert not h.engine.jobs
        _at(h, T0 + 3600)  # the fake clock reaches the due time; the wake stands in for the timer
        sched.wake()
        await settle(lambda: h.engine.jobs)
        (job,) = _jobs(h)
        assert job.schedule_id == s.id
        await settle(lambda: sched.sleeping_until == T0 + 7200)
        sched.stop()
        await settle(lambda: not sched.running)
        _at(h, T0 + 7200)
        sched.wake()  # stopped (not the leader): nothing fires
        await asyncio.sleep(0)
        now = sched.get(s.id)
        assert len(h.engine.jobs) == 1 and (now.next_due, now.skips) == (T0 + 7200, 0)  # untouched

    asyncio.run(scenario())


def test_schedules_survive_a_restart_on_either_store(tmp_path: Path, store_spec: str) -> None:
    h = Harness(tmp_path / "a", store_spec)
    try:
        h.now = T0
        h.agent("hostA")
        h.agent("hostB")
        s = h.engine.schedules.add(ep("hostA:/srv/d"), ep("hostB:/srv/c"),
                                   JobOptions(checksum=True, priority=Priority.LOW, link_dest=(b"/srv/prev",)),
                                   cron="0 2 * * mon", tz="America/New_York")
        _at(h, s.next_due)
        h.engine.schedules.step()
        h.engine.schedules.pause(s.id)
        h.store.run(lambda: None)
        (again,) = Schedules(ScheduleStore(h.store), h.engine).schedules.values()
        assert again == h.engine.schedules.get(s.id)
        assert (again.tz, again.runs, again.state, again.options.priority) == (
            "America/New_York", 1, ScheduleState.PAUSED, Priority.LOW)
        assert h.store.get_job(again.last_job_id).schedule_id == s.id  # type: ignore[union-attr]
    finally:
        h.close()


def test_a_store_of_the_version_before_schedules_migrates_and_keeps_its_jobs(tmp_path: Path, store_spec: str) -> None:
    """SQLite step 8 and PostgreSQL step 3 on a database written by the controller before them."""
    from zcrepl.controller.store import open_db, open_store
    from zcrepl.controller.store_migrations import STEPS
    from zcrepl.controller.store_sql import JobsSql
    from zcrepl.core.schedtypes import Schedule
    from zcrepl.core.types import Job

    db = open_db(store_spec, str(tmp_path))
    step = {"sqlite": 8, "postgres": 3}[db.dialect]
    old = Job(1, JobState.DONE, ep("hostA:/srv/d"), ep("hostB:/srv/c"), JobOptions(delete=True), created_at=5.0,
              updated_at=6.0, max_attempts=3)
    try:
        with db.transaction():
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            for number in sorted(n for n in STEPS[db.dialect] if n < step):
                for statement in STEPS[db.dialect][number].split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(step - 1),))
            JobsSql(db).create_job(old)
    finally:
        db.close()
    s = open_store(store_spec, str(tmp_path))
    try:
        job = s.get_job(1)
        assert job is not None and (job.state, job.options.delete, job.schedule_id) == (JobState.DONE, True, 0)
        store = ScheduleStore(s)
        sid = store.new_id()
        store.save(Schedule(sid, old.source, old.destination, JobOptions(xattrs=True), cron="@daily", created_at=7.0,
                            next_due=8.0))
        new = s.create_job(old.source, old.destination, JobOptions(), 3, 9.0)
        store.mark_job(new.id, sid)
    finally:
        s.close()
    s = open_store(store_spec, str(tmp_path))
    try:
        (kept,) = ScheduleStore(s).all()
        assert (kept.id, kept.cron, kept.options.xattrs, kept.next_due) == (sid, "@daily", True, 8.0)
        assert s.get_job(new.id).schedule_id == sid  # type: ignore[union-attr]
        assert s.get_job(1).schedule_id == 0  # type: ignore[union-attr]
    finally:
        s.close()


def test_only_the_leader_fires_and_a_new_leader_reads_the_schedules_again(h: Harness) -> None:
    from zcrepl.controller.engine import Engine
    from zcrepl.core.config import ControllerConfig

    follower = Engine(ControllerConfig(state_dir=str(h.store.path)), h.store, clock=lambda: h.now, lead=False)
    s = _add(h)  # written by the leader after the follower started
    h.store.run(lambda: None)

    async def scenario() -> None:
        assert not follower.schedules.running and s.id not in follower.schedules.schedules
        assert [x.id for x in await follower.schedules.listed()] == [s.id]  # a follower lists from the store
        await follower.lead(5, "S")
        assert follower.schedules.running and follower.schedules.get(s.id) == s
        assert follower.schedules.store.new_id() == s.id + 1  # no id handed out twice
        follower.step_down()
        assert not follower.schedules.running

    asyncio.run(scenario())
