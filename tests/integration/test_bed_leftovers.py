"""Nothing left behind: what a SIGKILLed destination agent leaves (temp files up to the size of the file) goes when
it starts again or when the next job starts there, and the partial area keeps nothing a finished tree does not
need. On the network test bed."""

from __future__ import annotations

import json
import os
from pathlib import Path

from zchelpers import BedCluster, Cluster, diff_trees, make_tree, snapshot, wait_for


def _temps(d: Path) -> list[Path]:
    return [p for p in d.rglob(".zc.*.tmp") if ".zc.partial" not in p.parts]


def _killed_mid_file(c: Cluster, src: Path, dst: Path) -> int:
    """Start a copy, SIGKILL the destination agent while it writes the big file; returns the job id."""
    rc, out, err = c.ctl("replicate", "--detach", "--json", f"hostA:{src}", f"hostB:{dst}")
    assert rc == 0, err
    job_id = int(json.loads(out)["id"])
    wait_for(lambda: any(p.stat().st_size > 8 << 20 for p in _temps(dst) if p.exists()), 60,
             what="the big file's temp to grow")
    c.daemons["hostB"].kill()
    return job_id


def test_a_killed_destinations_temp_files_go_when_it_starts_again(make_bed_cluster: BedCluster,
                                                                  tmp_path: Path) -> None:
    c = make_bed_cluster()
    c.bed.shape("hostA", "hostB", 100)
    src, dst = tmp_path / "a" / "src", tmp_path / "b" / "dst"
    make_tree(src, files=20, big=64 << 20)
    job_id = _killed_mid_file(c, src, dst)
    left = _temps(dst)
    assert left and any(p.stat().st_size > 8 << 20 for p in left)  # what a kill leaves
    rc, _, err = c.ctl("cancel", str(job_id))  # nothing will come back to this directory by itself
    assert rc == 0, err

    c.daemons["hostB"].start()  # the start-up sweep of its exports' recent destinations
    wait_for(lambda: not _temps(dst), 20, what="the dead transfer's temp files to be removed")
    assert "left-overs removed" in c.daemons["hostB"].log()


def test_the_next_job_in_the_directory_removes_them_and_leaves_a_clean_tree(make_bed_cluster: BedCluster,
                                                                            tmp_path: Path) -> None:
    c = make_bed_cluster()
    c.bed.shape("hostA", "hostB", 100)
    src, dst = tmp_path / "a" / "src", tmp_path / "b" / "dst"
    make_tree(src, files=20, big=64 << 20)
    job_id = _killed_mid_file(c, src, dst)
    assert _temps(dst)
    rc, _, err = c.ctl("cancel", str(job_id))
    assert rc == 0, err
    (tmp_path / "hostB.state" / "recent-destinations.json").unlink()  # start-up does not know the directory
    c.daemons["hostB"].start()
    c.wait_online("hostB")
    assert _temps(dst)

    rc, _, err = c.ctl("replicate", f"hostA:{src}", f"hostB:{dst}")  # no --delete
    assert rc == 0, err
    assert not _temps(dst)
    assert not diff_trees(snapshot(src), snapshot(dst))
    assert not [p for p in dst.rglob(".zc.*") if p.name != ".zc.partial"]
    assert not list(dst.rglob(".zc.partial/*"))
    assert os.listdir(tmp_path / "b") == ["dst"]


def test_partials_of_files_gone_from_the_source_go_with_the_next_finished_job(make_bed_cluster: BedCluster,
                                                                               tmp_path: Path) -> None:
    c = make_bed_cluster()
    c.bed.shape("hostA", "hostB", 100)
    src, dst = tmp_path / "a" / "src", tmp_path / "b" / "dst"
    make_tree(src, files=20, big=64 << 20)
    rc, out, err = c.ctl("replicate", "--detach", "--json", f"hostA:{src}", f"hostB:{dst}")
    assert rc == 0, err
    job_id = int(json.loads(out)["id"])
    wait_for(lambda: c.job(job_id)["progress"]["bytes_done"] > 16 << 20, 60, what="bytes to flow")
    c.daemons["hostA"].kill()  # the destination keeps what arrived of big.bin for a resume
    wait_for(lambda: list(dst.glob(".zc.partial/*.part")), 20, what="the partial to be kept")
    (src / "big.bin").unlink()  # ...which will never come now
    c.daemons["hostA"].start()
    done = wait_for(lambda: (j := c.job(job_id))["state"] in ("done", "failed") and j, 60, what="the retry")
    assert done["state"] == "done", done["error"]
    assert not diff_trees(snapshot(src), snapshot(dst))
    assert not (dst / ".zc.partial").exists()
