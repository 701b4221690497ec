"""Partitions on the network test bed: links cut between agents, an agent or the controller cut off from the
rest, a destination offline during a fan-out. Each test ends with the trees compared by an independent walk.

Detection times these tests rely on (stated in README, "Failure behaviour"): a data connection silent for the
agent's ``io_timeout`` fails its attempt (4 s here, 60 s by default) and a connect gives up after 10 s; the
controller calls an agent offline after ``offline_after`` without a heartbeat (3 s here, 5 s by default) and
holds its running attempts for ``attempt_grace`` (60 s) before it may start another.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from zchelpers import BedCluster, Cluster, diff_trees, make_tree, snapshot, wait_for

IO_TIMEOUT = 4.0
# The durations (a 15 s cut, a 30 s outage) run under -m slow; the default suite keeps the same
# sequence with shorter ones, still well past every detection time above.
CUT = [8.0, pytest.param(15.0, marks=pytest.mark.slow)]
OUTAGE = [15.0, pytest.param(30.0, marks=pytest.mark.slow)]


def _submit(c: Cluster, *args: str) -> int:
    rc, out, err = c.ctl("replicate", "--detach", "--json", *args)
    assert rc == 0, err
    doc = json.loads(out)
    return int(doc[0]["id"] if isinstance(doc, list) else doc["id"])


def _finished(c: Cluster, job_id: int, timeout: float = 90.0) -> dict[str, Any]:
    return wait_for(lambda: (j := c.job(job_id))["state"] in ("done", "failed", "cancelled") and j, timeout,
                    interval=0.2, what=f"job {job_id} to finish")


def _explain(c: Cluster, job_id: int) -> list[str]:
    rc, out, err = c.ctl("explain", str(job_id), "--json")
    assert rc == 0, err
    return [d["reason"] for d in json.loads(out)]


def _clean(dst: Path) -> None:
    """Nothing of the agent's own is left: no temp file, no partial."""
    assert not [p for p in dst.rglob(".zc.*") if p.name != ".zc.partial"], list(dst.rglob(".zc.*"))
    assert not list(dst.rglob(".zc.partial/*"))


@pytest.mark.parametrize("cut_s", CUT)
def test_a_link_cut_mid_file_fails_the_attempt_then_resumes_the_file(make_bed_cluster: BedCluster,
                                                                      tmp_path: Path, cut_s: float) -> None:
    c = make_bed_cluster(agent_flags=("--io-timeout", str(IO_TIMEOUT)), max_attempts=10)
    c.bed.shape("hostA", "hostB", 100)  # 12.5 MB/s: the big file takes a few seconds
    src, dst = tmp_path / "a" / "src", tmp_path / "b" / "dst"
    make_tree(src, files=20, big=64 << 20)
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    job_id = _submit(c, f"hostA:{src}", f"hostB:{dst}")
    before = wait_for(lambda: (b := c.job(job_id)["progress"]["bytes_done"]) > 16 << 20 and b, 60,
                      what="bytes to flow")

    c.bed.cut("hostA", "hostB")
    cut_at = time.time()
    first = wait_for(lambda: (h := c.job(job_id)["history"])[0]["ended_at"] and h[0], 30,
                     what="the first attempt to fail")
    # Detected by the data connection's I/O timeout (plus a report's way to the controller).
    assert first["ended_at"] - cut_at < IO_TIMEOUT + 3, (first, cut_at)
    assert "hostA" in first["error"] and "hostB" in first["error"], first  # both ends named, whoever told first
    time.sleep(max(0.0, cut_at + cut_s - time.time()))
    c.bed.heal("hostA", "hostB")

    done = _finished(c, job_id)
    assert done["state"] == "done", done["error"]
    assert done["attempts"] >= 2
    assert not diff_trees(snapshot(src), snapshot(dst))
    _clean(dst)
    # The retry resumed the big file: what crossed the link is about the tree once (and some TCP/IP headers),
    # not the tree plus what had arrived before the cut.
    wire = c.bed.shaped_bytes("hostA", "hostB")
    assert wire < total + before // 2, (wire, total, before)
    assert done["history"][-1]["stats"]["bytes_done"] <= total - before + (8 << 20)


def test_an_agent_cut_off_from_the_controller_keeps_transferring_and_is_never_run_twice(
        make_bed_cluster: BedCluster, tmp_path: Path) -> None:
    c = make_bed_cluster()
    c.bed.shape("hostA", "hostB", 100)
    src, dst = tmp_path / "a" / "src", tmp_path / "b" / "dst"
    make_tree(src, files=20, big=64 << 20)
    job_id = _submit(c, f"hostA:{src}", f"hostB:{dst}")
    wait_for(lambda: c.job(job_id)["progress"]["bytes_done"] > 8 << 20, 60, what="bytes to flow")

    c.bed.cut("hostA", "controller")  # the source loses the controller, not its peer
    wait_for(lambda: not c.agents_online("hostA"), 20, what="the controller to call hostA offline")
    # The transfer goes on between the agents and completes while hostA is still cut off.
    wait_for(lambda: not diff_trees(snapshot(src, content=False), snapshot(dst, content=False)), 60,
             what="the copy to complete during the cut")
    job = c.job(job_id)
    assert job["state"] == "running" and job["attempts"] == 1, job  # held, not restarted elsewhere
    c.bed.heal("hostA", "controller")

    done = _finished(c, job_id)
    assert done["state"] == "done", done["error"]
    assert done["attempts"] == 1, done["history"]  # no second attempt, let alone two at once
    reasons = _explain(c, job_id)
    assert any("hostA went offline during attempt 1" in r and "held" in r for r in reasons), reasons
    assert any("hostA is back and still runs attempt 1" in r for r in reasons), reasons
    assert "attempt=2" not in c.daemons["hostB"].log()
    assert not diff_trees(snapshot(src), snapshot(dst))
    _clean(dst)


@pytest.mark.parametrize("outage_s", OUTAGE)
def test_the_controller_unreachable_by_everyone(make_bed_cluster: BedCluster, tmp_path: Path,
                                                outage_s: float) -> None:
    c = make_bed_cluster(hosts=("hostA", "hostB"), max_jobs_per_host=1)
    c.bed.shape("hostA", "hostB", 100)
    src, dst = tmp_path / "a" / "src", tmp_path / "b" / "dst"
    make_tree(src, files=20, big=64 << 20)
    small, small_dst = tmp_path / "a" / "small", tmp_path / "b" / "small"
    make_tree(small, files=30, seed=3)
    wsrc, wdst = tmp_path / "a" / "watched", tmp_path / "b" / "watched"
    wsrc.mkdir()
    rc, _, err = c.ctl("replicate", "--watch", f"hostA:{wsrc}", f"hostB:{wdst}")
    assert rc == 0, err
    running = _submit(c, f"hostA:{src}", f"hostB:{dst}")
    queued = _submit(c, f"hostA:{small}", f"hostB:{small_dst}")  # waits: one job per host at a time
    wait_for(lambda: c.job(running)["progress"]["bytes_done"] > 8 << 20, 60, what="bytes to flow")
    assert c.job(queued)["state"] == "queued"

    c.bed.isolate("controller")
    cut_at = time.monotonic()
    rc, _, err = c.ctl("jobs", timeout=60)
    assert rc == 3 and "controller" in err.lower(), (rc, err)  # the operator is cut off too
    # Watch rules and the running transfer carry on between the agents.
    (wsrc / "during-the-outage").write_bytes(b"written while the controller was unreachable")
    wait_for(lambda: (wdst / "during-the-outage").exists(), 20, what="the watch rule to ship a change")
    wait_for(lambda: not diff_trees(snapshot(src, content=False), snapshot(dst, content=False)), 60,
             what="the running copy to complete during the outage")
    assert time.monotonic() - cut_at < outage_s, "the outage ended before the test could check the agents"
    time.sleep(max(0.0, cut_at + outage_s - time.monotonic()))
    c.bed.rejoin("controller")

    first, second = _finished(c, running), _finished(c, queued)
    assert first["state"] == "done" and first["attempts"] == 1, first  # finished once, not run again
    assert second["state"] == "done" and second["attempts"] == 1, second
    assert second["history"][0]["started_at"] > first["history"][0]["started_at"]
    for a, b in ((src, dst), (small, small_dst)):
        assert not diff_trees(snapshot(a), snapshot(b))
        _clean(b)
    (wsrc / "after").write_bytes(b"the rule still runs")
    wait_for(lambda: not diff_trees(snapshot(wsrc), snapshot(wdst)), 30, what="the watch rule to converge")


def test_a_destination_offline_during_a_fanout_catches_up(make_bed_cluster: BedCluster, tmp_path: Path) -> None:
    c = make_bed_cluster(hosts=("hostA", "hostB", "hostC", "hostD"), agent_flags=("--io-timeout", str(IO_TIMEOUT)))
    src = tmp_path / "a" / "src"
    make_tree(src, files=100, big=16 << 20)
    c.bed.shape("hostA", "hostB", 50)  # the first copy takes a few seconds
    copies = {"hostB": tmp_path / "b" / "copy", "hostC": tmp_path / "hostC" / "copy",
              "hostD": tmp_path / "hostD" / "copy"}
    rc, out, err = c.ctl("replicate", "--detach", "--json", f"hostA:{src}", *(f"{h}:{p}" for h, p in copies.items()))
    assert rc == 0, err
    jobs = {j["destination"].split(":")[0]: j["id"] for j in json.loads(out)}
    wait_for(lambda: c.job(jobs["hostB"])["progress"]["bytes_done"] > 0, 20, what="the fan-out to start")
    c.bed.link_down("hostD")  # hostD drops off the network while the fan-out runs

    for h in ("hostB", "hostC"):  # the others finish
        assert _finished(c, jobs[h])["state"] == "done"
        assert not diff_trees(snapshot(src), snapshot(copies[h]))
    job_d = wait_for(lambda: "hostD is offline" in (j := c.job(jobs["hostD"]))["wait_reason"] and j, 30,
                     what="hostD's job to wait for hostD")
    assert job_d["state"] == "queued", job_d

    c.bed.link_up("hostD")  # back: it catches up
    done = _finished(c, jobs["hostD"])
    assert done["state"] == "done", done["error"]
    assert not diff_trees(snapshot(src), snapshot(copies["hostD"]))
    for copy in copies.values():
        _clean(copy)
