"""Fan-out: one source, three destinations; finished copies become sources for the rest. Each host runs on
the network test bed (tests/netbed.py)."""

from __future__ import annotations

import json
from pathlib import Path

from zchelpers import BedCluster, diff_trees, make_tree, snapshot


def test_fanout_to_three_hosts_uses_finished_replicas(make_bed_cluster: BedCluster, tmp_path: Path) -> None:
    c = make_bed_cluster(hosts=("hostA", "hostB", "hostC", "hostD"))
    src = tmp_path / "a" / "src"
    make_tree(src, files=200, big=4 << 20)
    copies = {"hostB": tmp_path / "b" / "copy", "hostC": tmp_path / "hostC" / "copy",
              "hostD": tmp_path / "hostD" / "copy"}
    rc, out, err = c.ctl("replicate", f"hostA:{src}", *(f"{h}:{p}" for h, p in copies.items()), "--json")
    assert rc == 0, err
    jobs = json.loads(out)
    assert len(jobs) == 3 and {j["group_id"] for j in jobs} == {jobs[0]["id"]}
    assert all(j["state"] == "done" for j in jobs)
    for h, copy in copies.items():
        assert not diff_trees(snapshot(src), snapshot(copy)), h
    sources = [j["history"][-1]["source"].split(":")[0] for j in jobs]
    # One copy leaves hostA first; the next round reads from that finished replica too.
    assert sources.count("hostA") < 3, sources
    assert set(sources) - {"hostA"} <= {"hostB", "hostC", "hostD"}
    rc, out, _ = c.ctl("explain", str(jobs[-1]["id"]))
    assert rc == 0
    rc, out, _ = c.ctl("jobs")
    assert rc == 0 and out.count("done") >= 3
