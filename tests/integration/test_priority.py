"""Job priorities end to end: zc-ctl replicate --priority, stored and shown, and the order jobs start in."""

from __future__ import annotations

import json
from pathlib import Path

from zchelpers import Cluster, wait_for


def test_high_priority_job_starts_first_when_one_slot_frees(tmp_path: Path) -> None:
    c = Cluster(tmp_path, max_jobs_per_host=1)
    try:
        c.controller.start()
        c.add_agent("hostA", tmp_path / "a").start()
        hostb = c.add_agent("hostB", tmp_path / "b")
        hostb.start()
        c.wait_online("hostA", "hostB")
        src = tmp_path / "a" / "s"
        src.mkdir()
        (src / "f").write_bytes(b"x" * 4096)
        hostb.stop()  # the jobs queue up behind the offline destination, submitted oldest = lowest
        wait_for(lambda: not c.agents_online("hostB"), 20, interval=0.2, what="hostB offline")

        ids: dict[str, int] = {}
        for level in ("low", "normal", "high"):
            rc, out, err = c.ctl("replicate", "--detach", "--json", "--priority", level, f"hostA:{src}",
                                 f"hostB:{tmp_path}/b/{level}")
            assert rc == 0, err
            ids[level] = json.loads(out)["id"]
            assert json.loads(out)["options"]["priority"] == level
        rc, out, err = c.ctl("replicate", "--priority", "urgent", f"hostA:{src}", f"hostB:{tmp_path}/b/x")
        assert rc == 2 and "invalid choice: 'urgent'" in err

        rc, out, _ = c.ctl("jobs")
        assert rc == 0 and "PRIO" in out
        cells = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if "│" in line]
        prio = {int(row[0]): row[2] for row in cells if row and row[0].isdigit()}  # ID, STATE, PRIO, ...
        assert {level: prio[i] for level, i in ids.items()} == {"low": "low", "normal": "normal", "high": "high"}, out
        rc, out, _ = c.ctl("job", str(ids["high"]))
        assert rc == 0 and " high " in out

        hostb.start()  # one slot per host: the jobs now run one at a time, in priority order
        done = {level: wait_for(lambda i=i: (j := c.job(i))["state"] == "done" and j, 30, what=f"job {i} done")
                for level, i in ids.items()}
        started = sorted(ids, key=lambda level: done[level]["history"][0]["started_at"])
        assert started == ["high", "normal", "low"]
        assert (tmp_path / "b" / "low" / "f").read_bytes() == b"x" * 4096
    finally:
        c.close()
