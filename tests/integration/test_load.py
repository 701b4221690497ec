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
    """hostA and hostB with a 60% CPU start threshold (the default is 85%)."""
    c = Cluster(tmp_path, max_cpu_percent=60, max_load_per_core=1000)
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
