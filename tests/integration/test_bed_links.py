"""Link speed matters: shaped links on the test bed steer fan-out sources and stream targets, and bandwidth caps
hold on a shaped link."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from zchelpers import BedCluster, Cluster, diff_trees, make_tree, snapshot

SLOW, FAST = 50, 500  # Mbit/s: hostA -> hostC, hostB -> hostC


def _explain(c: Cluster, job_id: int) -> list[dict[str, Any]]:
    rc, out, err = c.ctl("explain", str(job_id), "--json")
    assert rc == 0, err
    return json.loads(out)


def _mbits(text: str) -> list[float]:
    """The rates in an explain line (``6.0 MiB/s``, ``512 KiB/s``...) in Mbit/s."""
    units = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    return [float(n) * units[u or None] * 8 / 1e6 for n, u in re.findall(r"([\d.]+) ([KMG]i)?B/s", text)]


def test_fanout_feeds_the_far_host_from_the_replica_on_the_fast_link(make_bed_cluster: BedCluster,
                                                                       tmp_path: Path) -> None:
    c = make_bed_cluster(hosts=("hostA", "hostB", "hostC"))
    c.bed.shape("hostA", "hostC", SLOW)
    c.bed.shape("hostB", "hostC", FAST)
    src = tmp_path / "a" / "src"
    make_tree(src, files=40, big=40 << 20)

    # A first copy over the slow link: the controller measures it and moves its stream target.
    rc, out, err = c.ctl("replicate", f"hostA:{src}", f"hostC:{tmp_path}/hostC/first", "--json")
    assert rc == 0, err
    steps = [d for d in _explain(c, json.loads(out)["id"]) if d["kind"] == "streams"]
    assert steps, "no stream target step on the slow link"
    assert all("hostA→hostC" in d["reason"] for d in steps), steps
    # What the link showed is what the shaping allows. The controller's 2 s windows are cut from progress reports
    # that arrive every 0.5 s, so a single window may read a quarter or more off either way: take the median.
    rates = sorted(r for d in steps for r in _mbits(d["reason"]))
    assert rates and 0.6 * SLOW <= rates[len(rates) // 2] <= 1.4 * SLOW, steps
    assert c.bed.shaped_bytes("hostA", "hostC") >= 40 << 20

    # The fan-out: hostB gets its copy from hostA first, then feeds hostC over the fast link, sparing the
    # slow one; explain says where hostC's copy came from and why.
    before = c.bed.shaped_bytes("hostA", "hostC")
    dsts = [f"hostB:{tmp_path}/b/copy", f"hostC:{tmp_path}/hostC/copy"]
    rc, out, err = c.ctl("replicate", f"hostA:{src}", *dsts, "--json")
    assert rc == 0, err
    job_b, job_c = json.loads(out)
    assert job_b["history"][-1]["source"].startswith("hostA:")
    assert job_c["history"][-1]["source"].startswith("hostB:"), job_c["history"]
    assert c.bed.shaped_bytes("hostA", "hostC") - before < 1 << 20  # the slow link carried no file data
    assert c.bed.shaped_bytes("hostB", "hostC") >= 40 << 20
    switch = [d for d in _explain(c, job_c["id"]) if d["kind"] == "switch_source"]
    assert switch and "finished replica hostB" in switch[0]["reason"], switch
    for copy in ("b/copy", "hostC/copy", "hostC/first"):
        assert not diff_trees(snapshot(src), snapshot(tmp_path / copy)), copy


def test_bwlimit_holds_within_ten_percent_on_a_shaped_link(make_bed_cluster: BedCluster, tmp_path: Path) -> None:
    c = make_bed_cluster(hosts=("hostA", "hostC"))
    c.bed.shape("hostA", "hostC", SLOW)  # 6.25 MB/s on the wire
    src = tmp_path / "a" / "src"
    make_tree(src, files=5, big=24 << 20)
    cap = 3 << 20
    rc, out, err = c.ctl("replicate", "--bwlimit", "3M", f"hostA:{src}", f"hostC:{tmp_path}/hostC/copy", "--json")
    assert rc == 0, err
    job = json.loads(out)
    attempt = job["history"][-1]
    rate = job["progress"]["bytes_done"] / (attempt["ended_at"] - attempt["started_at"])
    assert 0.9 * cap <= rate <= 1.1 * cap, f"{rate / (1 << 20):.2f} MiB/s against a cap of 3 MiB/s"
    assert not diff_trees(snapshot(src), snapshot(tmp_path / "hostC" / "copy"))
