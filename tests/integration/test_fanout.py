"""Fan-out: one source, three destinations; finished copies become sources for the rest."""

from __future__ import annotations

import json
from pathlib import Path

from zchelpers import Cluster, diff_trees, make_tree, snapshot


def test_fanout_to_three_hosts_uses_finished_replicas(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    try:
        c.controller.start()
        for name in ("hostA", "hostB", "hostC", "hostD"):
            c.add_agent(name, tmp_path / name).start()
        c.wait_online("hostA", "hostB", "hostC", "hostD")
        src = tmp_path / "hostA" / "src"
        make_tree(src, files=200, big=4 << 20)
        dsts = [f"{h}:{tmp_path}/{h}/copy" for h in ("hostB", "hostC", "hostD")]
        rc, out, err = c.ctl("replicate", f"hostA:{src}", *dsts, "--json")
        assert rc == 0, err
        jobs = json.loads(out)
        assert len(jobs) == 3 and {j["group_id"] for j in jobs} == {jobs[0]["id"]}
        assert all(j["state"] == "done" for j in jobs)
        for h in ("hostB", "hostC", "hostD"):
            assert not diff_trees(snapshot(src), snapshot(tmp_path / h / "copy")), h
        sources = [j["history"][-1]["source"].split(":")[0] for j in jobs]
        # One copy leaves hostA first; the next round reads from that finished replica too.
        assert sources.count("hostA") < 3, sources
        assert set(sources) - {"hostA"} <= {"hostB", "hostC", "hostD"}
        rc, out, _ = c.ctl("explain", str(jobs[-1]["id"]))
        assert rc == 0
        rc, out, _ = c.ctl("jobs")
        assert rc == 0 and out.count("done") >= 3
    finally:
        c.close()
