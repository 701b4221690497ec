"""End-to-end replication through zc-ctl, zc-controller and two zc-agent processes, each on a host of its own
on the network test bed (tests/netbed.py): data moves between real, distinct addresses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from zchelpers import Cluster, diff_trees, make_tree, snapshot, write_file


@pytest.fixture
def cluster(bed_cluster: Cluster) -> Cluster:
    return bed_cluster


def test_agents_advertise_and_use_their_own_addresses(cluster: Cluster, tmp_path: Path) -> None:
    rc, out, err = cluster.ctl("agents", "--json")
    assert rc == 0, err
    bed = cluster.bed
    for agent in json.loads(out):
        host = agent["data_address"].rpartition(":")[0]
        assert host == agent["grpc_address"].rpartition(":")[0] == bed.ip(agent["name"]), agent
    src, dst = tmp_path / "a" / "s", tmp_path / "b" / "d"
    make_tree(src, files=20, big=4 << 20)
    sent_before = bed.tx_bytes("hostA")
    rc, out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{dst}", "--json")
    assert rc == 0, err
    assert not diff_trees(snapshot(src), snapshot(dst))
    # The bytes left hostA through its own interface, not through a loopback shared by everyone.
    assert bed.tx_bytes("hostA") - sent_before >= 4 << 20


def test_replicates_tree_exactly_then_moves_nothing_then_deletes(cluster: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "src", tmp_path / "b" / "backup" / "dst"
    make_tree(src, files=1200, big=100 << 20)
    os.mkfifo(src / "a-fifo")  # skipped with a logged reason, never blocks the scan

    rc, out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{dst}", "--json")
    assert rc == 4, err  # done, with an entry left out
    job = json.loads(out)
    assert job["state"] == "done" and job["done_with_skips"]
    assert [x["path"] for x in job["skipped"]] == ["a-fifo"] and "FIFO" in job["skipped"][0]["reason"]
    problems = diff_trees({k: v for k, v in snapshot(src).items() if k != b"a-fifo"}, snapshot(dst))
    assert not problems, "\n".join(problems[:20])
    assert not (dst / "a-fifo").exists()
    assert "FIFO" in cluster.daemons["hostA"].log()
    p = job["progress"]
    assert p["files_done"] >= 1200 and p["bytes_done"] >= 100 << 20
    assert p["skipped_special"] == p["entries_skipped"] == 1
    os.unlink(src / "a-fifo")

    # Second run: everything up to date, no file bytes move.
    rc, out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{dst}", "--json")
    assert rc == 0, err
    p2 = json.loads(out)["progress"]
    assert (p2["files_done"], p2["bytes_done"]) == (0, 0)
    assert p2["files_skipped"] >= 1200

    # Extras at the destination stay without --delete (rsync -a semantics) and go with it.
    (dst / "extra.txt").write_bytes(b"x")
    (dst / "d000" / "extra-dir" / "deeper").mkdir(parents=True)
    os.symlink("x", dst / "extra-link")
    rc, out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{dst}")
    assert rc == 0 and (dst / "extra.txt").exists()
    rc, out, err = cluster.ctl("replicate", "--delete", f"hostA:{src}", f"hostB:{dst}", "--json")
    assert rc == 0, err
    assert json.loads(out)["progress"]["deleted"] == 4  # extra.txt, extra-link, extra-dir, deeper
    problems = diff_trees(snapshot(src), snapshot(dst))
    assert not problems, "\n".join(problems[:20])


def test_checksum_catches_same_size_same_mtime_change(cluster: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "s", tmp_path / "b" / "d"
    src.mkdir()
    write_file(src / "f", b"AAAA")
    assert cluster.ctl("replicate", f"hostA:{src}", f"hostB:{dst}")[0] == 0
    write_file(dst / "f", b"BBBB")  # same size, same mtime, different bytes

    assert cluster.ctl("replicate", f"hostA:{src}", f"hostB:{dst}")[0] == 0
    assert (dst / "f").read_bytes() == b"BBBB"  # size+mtime say equal: skipped, like rsync

    rc, out, err = cluster.ctl("replicate", "--checksum", f"hostA:{src}", f"hostB:{dst}", "--json")
    assert rc == 0, err
    assert (dst / "f").read_bytes() == b"AAAA"
    assert json.loads(out)["progress"]["files_done"] == 1
    assert not diff_trees(snapshot(src), snapshot(dst))


def test_mode_only_change_is_applied_without_moving_bytes(cluster: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "s", tmp_path / "b" / "d"
    src.mkdir()
    write_file(src / "f", b"data", mode=0o644)
    assert cluster.ctl("replicate", f"hostA:{src}", f"hostB:{dst}")[0] == 0
    os.chmod(src / "f", 0o700)
    rc, out, _ = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{dst}", "--json")
    assert rc == 0
    assert json.loads(out)["progress"]["bytes_done"] == 0
    assert not diff_trees(snapshot(src), snapshot(dst))


def test_every_durability_policy_gives_the_same_tree(cluster: Cluster, tmp_path: Path) -> None:
    src = tmp_path / "a" / "s"
    make_tree(src, files=60)
    for mode in ("job", "file", "none"):
        dst = tmp_path / "b" / mode
        rc, out, err = cluster.ctl("replicate", "--durability", mode, f"hostA:{src}", f"hostB:{dst}", "--json")
        assert rc == 0, err
        assert json.loads(out)["options"]["durability"] == mode
        assert not diff_trees(snapshot(src), snapshot(dst))


def test_same_host_copies_locally_without_the_network(cluster: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "src", tmp_path / "a" / "copy"
    make_tree(src, files=150, big=8 << 20)
    rc, out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostA:{dst}", "--json")
    assert rc == 0, err
    p = json.loads(out)["progress"]
    assert p["wire_bytes"] == 0 and p["bytes_done"] >= 8 << 20
    assert not diff_trees(snapshot(src), snapshot(dst))
    assert "local copy done" in cluster.daemons["hostA"].log()
    rc, out, _ = cluster.ctl("replicate", "--delete", f"hostA:{src}", f"hostA:{dst}", "--json")
    assert rc == 0 and json.loads(out)["progress"]["bytes_done"] == 0
