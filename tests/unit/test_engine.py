"""Engine-level tests: a real Engine and Store (SQLite and PostgreSQL: fixture ``store_spec``), agents as
in-memory sessions, an injected clock.

The engine's I/O is the agents' outboxes (orders) and reports/heartbeats in; here a test plays the agents,
so decisions that span several ticks (stream limits, AIMD, source choice) are checked without processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from enginehelpers import Harness, ep

from zcrepl.controller.engine import Engine
from zcrepl.controller.policy import LinkState
from zcrepl.core.config import ControllerConfig
from zcrepl.core.errors import Conflict, UnknownHost
from zcrepl.core.types import (
    SKIPPED_LISTED,
    JobOptions,
    JobState,
    Phase,
    Role,
    Skipped,
    TransferReport,
    TransferStats,
)


@pytest.fixture
def harness(tmp_path: Path, store_spec: str) -> Iterator[Any]:
    made: list[Harness] = []

    def make(**config: Any) -> Harness:
        assert not made or not store_spec, "one harness per test on PostgreSQL: it has one database"
        h = Harness(tmp_path / f"state{len(made)}", store_spec, **config)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


# -- declared stream limits -------------------------------------------------------------------------


def test_host_stream_limit_caps_streams_and_holds_back_the_next_job(harness: Any) -> None:
    h = harness(host_limits=("hostB:streams=5",))
    for name in ("hostA", "hostB", "hostC"):
        h.agent(name)
    j1 = h.submit("hostA:/srv/x", "hostB:/srv/1")
    send = h.start(j1)
    assert send.options.streams == 5  # 16 free cores, capped by hostB's limit
    assert any("capped at 5 by hostB's stream limit of 5 (0 in use by other jobs)" in r for _, r in h.explain(j1))

    j2 = h.submit("hostA:/srv/x", "hostB:/srv/2")
    j3 = h.submit("hostA:/srv/x", "hostC:/srv/3")
    h.engine.tick()
    assert h.engine.jobs[j2.id].wait_reason == "waiting: hostB already uses 5 data streams (limit 5)"
    assert j3.id in h.engine.runs  # other hosts are not held back


def test_streams_left_under_a_limit_go_to_the_next_job(harness: Any) -> None:
    h = harness(host_limits=("hostA:streams=6",), link_limits=("hostA>hostC:streams=3",))
    for name in ("hostA", "hostB", "hostC"):
        h.agent(name)
    j1 = h.submit("hostA:/srv/x", "hostB:/srv/1", streams=4)
    assert h.start(j1).options.streams == 4  # the job's own --streams
    j2 = h.submit("hostA:/srv/x", "hostC:/srv/2")
    send = h.start(j2)
    assert send.options.streams == 2  # hostA: 6 - 4 left, under the link's 3
    assert any("capped at 2 by hostA's stream limit of 6 (4 in use by other jobs)" in r for _, r in h.explain(j2))
    j3 = h.submit("hostA:/srv/x", "hostB:/srv/3")
    h.engine.tick()
    assert h.engine.jobs[j3.id].wait_reason == "waiting: hostA already uses 6 data streams (limit 6)"


# -- AIMD from live samples -------------------------------------------------------------------------

MiB = 1 << 20


def test_link_streams_follow_measured_throughput_and_cap_the_next_job(harness: Any) -> None:
    h = harness()
    for name in ("hostA", "hostB"):
        h.agent(name, cores=4)
    j1 = h.submit("hostA:/srv/x", "hostB:/srv/1")
    assert h.start(j1).options.streams == 4  # 4 free cores, nothing measured on the link yet
    moved = files = 0
    for mib, n in ((10, 1), (200, 10), (200, 10), (40, 2)):  # ramp-up, steady, steady, a real drop
        h.now += 2.0
        moved, files = moved + mib * MiB, files + n
        h.report("hostA", j1, Role.SENDER, Phase.PROGRESS, bytes_done=moved, files_done=files, bytes_total=1 << 40)
        for name in ("hostA", "hostB"):
            h.beat(name, cores=4)
        h.engine.tick()
    steps = [r for kind, r in h.explain(j1) if kind == "streams"]
    assert len(steps) == 3, steps
    assert steps[0] == ("hostA→hostB: throughput 100.0 MiB/s, success 100%; streams 4 → 5 "
                        "(the target for the next jobs on this link)")
    assert "streams 5 → 6" in steps[1]
    assert "throughput fell" in steps[2] and "streams 6 → 3" in steps[2]
    assert h.engine.links.target(("hostA", "hostB")) == 3

    for role, name in ((Role.SENDER, "hostA"), (Role.RECEIVER, "hostB")):
        h.report(name, j1, role, Phase.DONE, bytes_done=moved, files_done=files)
    assert j1.id not in h.engine.jobs  # done and settled; its last sliver of a window was not fed
    assert h.engine.links.target(("hostA", "hostB")) == 3

    j2 = h.submit("hostA:/srv/x", "hostB:/srv/2")
    assert h.start(j2).options.streams == 3
    assert any("capped at 3 by the hostA→hostB link's adaptive target" in r for _, r in h.explain(j2))


def test_a_rate_capped_transfer_does_not_teach_the_link(harness: Any) -> None:
    h = harness()
    for name in ("hostA", "hostB"):
        h.agent(name, cores=4)
    j1 = h.submit("hostA:/srv/x", "hostB:/srv/1", bwlimit=10 * MiB)
    h.start(j1)
    for i in range(1, 5):
        h.now += 2.0
        h.report("hostA", j1, Role.SENDER, Phase.PROGRESS, bytes_done=i * 20 * MiB, files_done=i)
        for name in ("hostA", "hostB"):
            h.beat(name, cores=4)
        h.engine.tick()
    assert j1.id in h.engine.runs
    assert h.engine.links.target(("hostA", "hostB")) == 0
    assert not [r for kind, r in h.explain(j1) if kind == "streams"]


def test_a_failure_while_sending_cuts_the_link_and_counts_against_the_source(harness: Any) -> None:
    h = harness()
    for name in ("hostA", "hostB"):
        h.agent(name, cores=4)
    j1 = h.submit("hostA:/srv/x", "hostB:/srv/1")
    h.start(j1)
    h.now += 1.0
    h.report("hostA", j1, Role.SENDER, Phase.FAILED, bytes_done=5 * MiB)
    h.now += 2.0
    h.engine.tick()  # the destination gave no verdict of its own within 2 s: the source's report stands
    assert h.engine.links.target(("hostA", "hostB")) == 2  # 4 streams, halved
    assert h.engine.links.failures == {"hostA": [h.now]}
    assert any(kind == "streams" and "streams 4 → 2" in r for kind, r in h.explain(j1))


# -- fan-out source ranking -------------------------------------------------------------------------


def test_fanout_reads_from_the_best_ranked_finished_copy_not_the_least_loaded(harness: Any) -> None:
    h = harness()
    hosts = ("hostA", "hostB", "hostC", "hostD", "hostE")
    for name in hosts:
        h.agent(name, cores=8)
    jobs = h.engine.submit_fanout(ep("hostA:/srv/x"), [ep(f"{n}:/srv/copy") for n in hosts[1:]], JobOptions())
    by_dst = {j.destination.host: j for j in jobs}
    h.start(by_dst["hostB"])  # round 1: hostA sends one copy of the fan-out at a time
    h.finish(by_dst["hostB"])
    h.start(by_dst["hostC"])  # round 2: hostC reads from hostB, hostD from hostA
    assert h.engine.runs[by_dst["hostC"].id].source.host == "hostB"
    h.start(by_dst["hostD"])
    assert h.engine.runs[by_dst["hostD"].id].source.host == "hostA"
    h.finish(by_dst["hostC"])
    h.finish(by_dst["hostD"])

    # Measured earlier: hostB is slow towards hostE, hostC fast; hostD unmeasured but recently failed.
    h.engine.links.states[("hostB", "hostE")] = LinkState("hostB", "hostE", 4, ema_bps=10 * MiB)
    h.engine.links.states[("hostC", "hostE")] = LinkState("hostC", "hostE", 4, ema_bps=100 * MiB)
    h.engine.links.failures["hostD"] = [h.now - 60]
    for name in hosts:  # hostC is the busiest copy (30% CPU, load 2 on 8 cores), under every threshold
        h.beat(name, cores=8, cpu=30.0 if name == "hostC" else 0.0, load=2.0 if name == "hostC" else 0.0)
    h.start(by_dst["hostE"])
    assert h.engine.runs[by_dst["hostE"].id].source.host == "hostC"
    (switch,) = [r for kind, r in h.explain(by_dst["hostE"]) if kind == "switch_source"]
    assert "from the finished replica hostC:/srv/copy" in switch
    assert "hostC: 100.0 MiB/s measured to hostE, load at 35% of its start thresholds, 0 failures" in switch


# -- removing agents (RemoveAgent) ------------------------------------------------------------------


def test_remove_agent_refuses_an_online_agent_and_forgets_an_offline_one(harness: Any, tmp_path: Path) -> None:
    h = harness()
    h.agent("hostA")
    h.agent("hostB")
    with pytest.raises(Conflict, match=r"hostA is online: removing it is refused; stop its zc-agent first"):
        h.engine.remove_agent("hostA")
    with pytest.raises(UnknownHost, match="unknown host 'nobody'"):
        h.engine.remove_agent("nobody")
    h.engine.disconnect(h.sessions["hostA"])
    status = h.engine.remove_agent("hostA")
    assert status.info.name == "hostA" and not status.online
    assert h.engine.agent_names() == ["hostB"]
    with pytest.raises(UnknownHost):
        h.submit("hostA:/srv/a", "hostB:/srv/b")
    again = Engine(ControllerConfig(state_dir=str(tmp_path / "state0")), h.store, clock=lambda: h.now)
    assert again.agent_names() == ["hostB"]  # gone from the store too, not only from memory


def test_remove_agent_refuses_while_queued_jobs_or_watch_rules_name_it(harness: Any) -> None:
    h = harness()
    h.agent("hostA")
    h.agent("hostB")
    h.agent("hostC")
    job = h.submit("hostA:/srv/a", "hostB:/srv/b")
    rule = h.engine.watch_rules.create(ep("hostC:/srv/w"), [ep("hostA:/srv/w")], JobOptions(), 0.0, 0.0, h.now)
    for name in ("hostA", "hostB", "hostC"):
        h.engine.disconnect(h.sessions[name])
    with pytest.raises(Conflict, match=rf"hostB is named by queued job\(s\) {job.id}; cancel them first"):
        h.engine.remove_agent("hostB")
    with pytest.raises(Conflict, match=rf"hostC is part of watch rule\(s\) {rule.id}; remove them first"):
        h.engine.remove_agent("hostC")
    h.engine.cancel(job.id)
    h.engine.remove_agent("hostB")
    h.engine.watch_rules.remove(rule.id, h.now)
    h.engine.remove_agent("hostC")
    assert h.engine.agent_names() == ["hostA"]


def test_a_fanout_replica_on_a_removed_agent_is_not_used_as_a_source(harness: Any) -> None:
    h = harness()
    for name in ("hostA", "hostB", "hostC"):
        h.agent(name)
    jobs = h.engine.submit_fanout(ep("hostA:/srv/a"), [ep("hostB:/srv/b"), ep("hostC:/srv/c")], JobOptions())
    h.start(jobs[0])
    h.finish(jobs[0])
    h.engine.disconnect(h.sessions["hostB"])
    h.engine.remove_agent("hostB")
    send = h.start(jobs[1])  # the finished copy on hostB is gone with its agent: the source serves
    assert h.engine.runs[jobs[1].id].source.host == "hostA" and send.dest_host == "hostC"


# -- skipped entries --------------------------------------------------------------------------------


def test_a_job_that_skipped_entries_ends_done_with_them_listed(harness: Any) -> None:
    h = harness()
    h.agent("hostA")
    h.agent("hostB")
    job = h.submit("hostA:/srv/a", "hostB:/srv/b")
    h.start(job)
    listed = tuple(Skipped(f"dir/fifo{i}".encode(), "FIFO: only regular files, directories and symlinks are "
                           "replicated") for i in range(SKIPPED_LISTED))
    h.engine.report(h.sessions["hostA"], TransferReport(job.id, 1, Role.SENDER, Phase.DONE,
                                                        TransferStats(files_done=2, entries_skipped=150), "", True,
                                                        listed))
    h.report("hostB", job, Role.RECEIVER, Phase.DONE, files_done=2)
    done = h.engine.get(job.id)
    assert done.state is JobState.DONE and done.done_with_skips
    assert done.progress.entries_skipped == 150 and done.skipped == listed
    assert done.history[-1].stats.entries_skipped == 150
    (kind, reason) = h.explain(job)[-1]
    assert kind == "done" and "150 entries skipped (first: dir/fifo0: FIFO: only regular files" in reason


def test_skips_of_both_sides_add_up_and_a_repeated_report_counts_once(harness: Any) -> None:
    h = harness()
    h.agent("hostA")
    h.agent("hostB")
    job = h.submit("hostA:/srv/a", "hostB:/srv/b")
    h.start(job)
    one = (Skipped(b"x", "sender"),)
    two = (Skipped(b"y", "receiver"),)
    h.engine.report(h.sessions["hostA"], TransferReport(job.id, 1, Role.SENDER, Phase.DONE,
                                                        TransferStats(entries_skipped=1), "", True, one))
    h.engine.report(h.sessions["hostA"], TransferReport(job.id, 1, Role.SENDER, Phase.DONE,
                                                        TransferStats(entries_skipped=1), "", True, one))
    h.engine.report(h.sessions["hostB"], TransferReport(job.id, 1, Role.RECEIVER, Phase.DONE,
                                                        TransferStats(entries_skipped=1), "", True, two))
    done = h.engine.get(job.id)
    assert done.progress.entries_skipped == 2 and done.skipped == one + two


def test_a_job_without_skips_is_plain_done(harness: Any) -> None:
    h = harness()
    h.agent("hostA")
    h.agent("hostB")
    job = h.submit("hostA:/srv/a", "hostB:/srv/b")
    h.start(job)
    h.finish(job)
    done = h.engine.get(job.id)
    assert done.state is JobState.DONE and not done.done_with_skips and done.skipped == ()
    assert "skipped" not in h.explain(job)[-1][1]


# -- decision memory --------------------------------------------------------------------------------


def test_the_memory_of_last_decisions_holds_live_jobs_only(harness: Any) -> None:
    """Unchanged waits are recorded once; a job that ended leaves nothing behind (it grew by a job forever)."""
    h = harness(host_limits=("hostB:streams=1",))
    h.agent("hostA")
    h.agent("hostB")
    running = h.submit("hostA:/srv/a", "hostB:/srv/1")
    h.start(running)
    waiting = h.submit("hostA:/srv/a", "hostB:/srv/2")
    h.engine.tick()
    h.engine.tick()
    assert [kind for kind, _ in h.explain(waiting)].count("wait") == 1
    assert set(h.engine._last_decision) == {running.id, waiting.id}
    h.finish(running)
    h.engine.cancel(waiting.id)
    assert h.engine.get(running.id).state is JobState.DONE
    assert h.engine.get(waiting.id).state is JobState.CANCELLED
    assert h.engine._last_decision == {}
