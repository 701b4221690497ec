"""Scheduling by measured load: a real CPU burner makes a job wait with the reason in words, and the job
starts when the burner stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from zchelpers import Cluster, wait_for


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[Cluster]:
    """hostA and hostB with a 60% CPU start threshold and a 90% high-water mark (defaults 85% and 95%)."""
    c = Cluster(tmp_path, max_cpu_percent=60, high_cpu_percent=90, max_load_per_core=1000)
    try:
        c.controller.start()
        c.add_agent("hostA", tmp_path / "a").start()
        c.add_agent("hostB", tmp_path / "b").start()
        c.wait_online("hostA", "hostB")
        yield c
    finally:
        c.close()


def test_cpu_burner_makes_a_job_wait_then_it_runs(strict: Cluster, tmp_path: Path) -> None:
    src = tmp_path / "a" / "s"
    src.mkdir(parents=True)
    (src / "f").write_bytes(b"x" * 1000)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        wait_for(lambda: (json.loads(strict.ctl("health", "hostA", "--json")[1])[0]["health"] or {})
                 .get("cpu_percent", 0) > 80, 20, interval=0.3, what="the burners to show in hostA's health")
        rc, out, err = strict.ctl("replicate", "--detach", "--json", f"hostA:{src}", f"hostB:{tmp_path}/b/d")
        assert rc == 0, err
        job_id = json.loads(out)["id"]
        job = wait_for(lambda: (j := strict.job(job_id))["wait_reason"] and j, 10, what="a wait reason")
        assert job["state"] == "queued"
        assert "CPU" in job["wait_reason"] and "limit 60%" in job["wait_reason"], job["wait_reason"]
    finally:
        for p in burners:
            p.kill()
            p.wait()
    done = wait_for(lambda: (j := strict.job(job_id))["state"] in ("done", "failed") and j, 30,
                    what="the job to run once the burners stopped")
    assert done["state"] == "done", done["error"]
    assert (tmp_path / "b" / "d" / "f").read_bytes() == b"x" * 1000


def test_running_transfer_slows_under_load_and_recovers(strict: Cluster, tmp_path: Path) -> None:
    src = tmp_path / "a" / "s"
    src.mkdir(parents=True)
    data = os.urandom(1 << 20) * 40
    (src / "big").write_bytes(data)
    rc, out, err = strict.ctl("replicate", "--detach", "--json", "--bwlimit", "8M", f"hostA:{src}",
                              f"hostB:{tmp_path}/b/d")
    assert rc == 0, err
    job_id = json.loads(out)["id"]
    wait_for(lambda: strict.job(job_id)["progress"]["bytes_done"] > 2 << 20, 30, what="bytes to flow")
    # The sender's health reports the transfer's byte rate (8 MiB/s cap; one sample may straddle a start).
    rates = wait_for(lambda: (h := json.loads(strict.ctl("health", "hostA", "hostB", "--json")[1]))[0]["health"]
                     ["transfer_bps"] > 2 << 20 and h, 15, interval=0.3, what="hostA's transfer rate")
    assert rates[0]["health"]["transfer_bps"] < 16 << 20
    assert rates[0]["health"]["active_transfers"] == 1
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        def kinds() -> list[str]:
            return [d["kind"] for d in json.loads(strict.ctl("explain", str(job_id), "--json")[1])]

        wait_for(lambda: "slow" in kinds() or "pause" in kinds(), 30, interval=0.5,
                 what="the transfer to be slowed down under load")
        assert strict.job(job_id)["state"] == "running"
    finally:
        for p in burners:
            p.kill()
            p.wait()
    done = wait_for(lambda: (j := strict.job(job_id))["state"] in ("done", "failed") and j, 60,
                    what="the transfer to speed up again and finish")
    assert done["state"] == "done", done["error"]
    assert done["attempts"] == 1  # slowed, never restarted: no progress lost
    assert "resume" in kinds()
    assert (tmp_path / "b" / "d" / "big").read_bytes() == data


def test_a_watch_rule_is_held_under_load_keeps_collecting_and_ships_after(strict: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "w", tmp_path / "b" / "w"
    src.mkdir(parents=True)
    (src / "first").write_bytes(b"1")
    rc, out, err = strict.ctl("replicate", "--watch", "--json", f"hostA:{src}", f"hostB:{dst}")
    assert rc == 0, err
    rule_id = json.loads(out)["id"]

    def rule() -> dict[str, object]:
        return next(r for r in json.loads(strict.ctl("syncs", "--json")[1]) if r["id"] == rule_id)

    # Start-up itself can show as a busy CPU: let that hold pass first, so the hold below is the burners' own.
    wait_for(lambda: rule()["phase"] == "watching", 30, interval=0.3, what="the rule to watch before the burners")
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        held = wait_for(lambda: (r := rule())["phase"] == "held" and r, 20, interval=0.3,
                        what="the rule to be held by the burners")
        assert "CPU" in str(held["status"]) and "limit 60%" in str(held["status"]), held
        for i in range(20):
            (src / f"while-held-{i}").write_bytes(b"x" * 100)
        lagging = wait_for(lambda: (r := rule())["pending"] and float(r["lag"]) > 0.5 and r, 10, interval=0.3,
                           what="the held rule's lag to grow")  # it keeps collecting, and shows it
        assert not (dst / "while-held-0").exists(), lagging
    finally:
        for p in burners:
            p.kill()
            p.wait()
    wait_for(lambda: all((dst / f"while-held-{i}").exists() for i in range(20)), 30, interval=0.2,
             what="the changes collected while held to arrive")
    # (a burner can also delay heartbeats past offline_after: a redeploy then reconciles first)
    wait_for(lambda: rule()["phase"] == "watching", 30, interval=0.3, what="the rule to watch again")
