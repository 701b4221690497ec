"""Continuous replication end to end: `zc-ctl replicate --watch`, real agents and controller processes,
real inotify, real files. Each test waits for the trees to converge (never for a fixed time).

Every host runs on the network test bed (tests/netbed.py): its own namespace and address, so rules move data
over real, distinct addresses."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from zchelpers import BedCluster, Cluster, diff_trees, make_tree, snapshot, wait_for

from zcrepl.agent.watch_coalesce import REPLAY_MARGIN
from zcrepl.core.watchtypes import DEFAULT_QUIET, DEFAULT_WINDOW

# A change is on its way within this long after it was made: events may lag REPLAY_MARGIN behind it, then the
# watcher holds it for the window and the quiet period. What has not left after that was held back on purpose.
SHIPPED_WITHIN = REPLAY_MARGIN + DEFAULT_WINDOW + DEFAULT_QUIET


@pytest.fixture
def cluster(bed_cluster: Cluster) -> Cluster:
    return bed_cluster


def _rules(c: Cluster) -> list[dict[str, Any]]:
    rc, out, err = c.ctl("syncs", "--json")
    assert rc == 0, err
    return json.loads(out)


def _rule(c: Cluster, rule_id: int) -> dict[str, Any]:
    return next(r for r in _rules(c) if r["id"] == rule_id)


def _counted(c: Cluster, rule_id: int, what: str, pred: Any) -> dict[str, Any]:
    """The rule once its counters satisfy ``pred``: they reach the controller with the source's next
    heartbeat, a moment after the trees already match."""
    def ready() -> dict[str, Any] | None:
        r = _rule(c, rule_id)
        return r if pred(r["counters"]) else None

    return wait_for(ready, 10, interval=0.2, what=what)


def _converge(src: Path, dst: Path, timeout: float = 30.0) -> None:
    def same() -> bool:
        try:
            return not diff_trees(snapshot(src), snapshot(dst))
        except FileNotFoundError:  # a file vanished between the walk and its read
            return False

    try:
        wait_for(same, timeout, interval=0.1, what=f"{dst} to match {src}")
    except AssertionError:
        problems = diff_trees(snapshot(src), snapshot(dst))
        raise AssertionError(f"{len(problems)} differences, first: {problems[:5]}") from None


def _watch(c: Cluster, src: Path, *dsts: str) -> dict[str, Any]:
    rc, out, err = c.ctl("replicate", "--watch", f"hostA:{src}", *dsts, "--json")
    assert rc == 0, err
    rule = json.loads(out)
    assert rule["phase"] == "watching", rule
    return rule


def test_every_kind_of_change_arrives_and_a_directory_rename_is_a_rename(cluster: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "src", tmp_path / "b" / "dst"
    make_tree(src, files=300)
    big = src / "bigdir"
    big.mkdir()
    for i in range(400):
        (big / f"f{i:03d}").write_bytes(os.urandom(2048))
    rule = _watch(cluster, src, f"hostB:{dst}")
    assert rule["counters"]["reconciles"] >= 1 and rule["counters"]["files"] > 300
    assert not diff_trees(snapshot(src), snapshot(dst))

    # For REPLAY_MARGIN after a reconciliation the watcher ships renames as delete + upsert (the destination may
    # be ahead of events still in flight); after that a rename is a rename. The reconciliation ended before the
    # rule reported "watching", so the margin has run out this long after that (a fifth more for the clocks).
    time.sleep(REPLAY_MARGIN * 1.2)
    inode = (dst / "bigdir").stat().st_ino
    before = _rule(cluster, rule["id"])["counters"]
    (src / "bigdir").rename(src / "moved")
    _converge(src, dst)
    assert (dst / "moved").stat().st_ino == inode
    # The counters reach the controller with the source's next heartbeat.
    after = wait_for(lambda: (c := _rule(cluster, rule["id"])["counters"])["sessions"] > before["sessions"] and c,
                     10, interval=0.2, what="the rename's session in the rule's counters")
    assert after["renamed"] == before["renamed"] + 1, (before, after)
    assert after["bytes"] - before["bytes"] < 100_000, (before, after)  # not re-sent

    (src / "new.txt").write_bytes(b"hello")  # create
    (src / "moved" / "f000").write_bytes(b"modified")  # modify
    os.chmod(src / "moved" / "f001", 0o600)  # mode
    os.utime(src / "moved" / "f002", ns=(10**18, 10**18))  # mtime
    (src / "moved" / "f003").unlink()  # delete
    (src / "moved" / "f004").rename(src / "renamed-file")  # rename a file
    (src / "link").symlink_to("new.txt")  # symlink
    (src / "empty" / "deeper").mkdir(parents=True)  # empty directories
    victim = next(p for p in src.iterdir() if p.is_dir() and p.name.startswith("d"))
    shutil.rmtree(victim)  # delete a tree
    (src / "moved" / "f005").unlink()
    (src / "moved" / "f005").mkdir()  # a file becomes a directory
    _converge(src, dst)
    # (the file rename may have gone as delete + upsert: its directory was renamed moments before)
    r = _counted(cluster, rule["id"], "the deletes in the counters", lambda c: c["deleted"] > 0)
    assert r["counters"]["errors"] == 0, r


def test_a_burst_of_10000_files_converges_exactly(cluster: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "src", tmp_path / "b" / "dst"
    src.mkdir(parents=True)
    rule = _watch(cluster, src, f"hostB:{dst}")
    for d in range(10):
        (src / f"dir{d}").mkdir()
        for i in range(1000):
            (src / f"dir{d}" / f"file{i:04d}").write_bytes(b"%d-%d\n" % (d, i))
    _converge(src, dst, timeout=90)
    r = _counted(cluster, rule["id"], "10,000 files in the counters", lambda c: c["files"] >= 10_000)
    assert r["counters"]["errors"] == 0, r


def test_an_agent_restart_during_a_stream_of_changes_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "src", tmp_path / "b" / "dst"
    make_tree(src, files=100)
    rule = _watch(cluster, src, f"hostB:{dst}")
    stop = threading.Event()
    written = [0]  # stream files created so far

    def writer() -> None:
        i = 0
        while not stop.is_set():
            (src / f"stream-{i:05d}").write_bytes(os.urandom(512))
            if i % 7 == 3:
                (src / f"stream-{i - 3:05d}").unlink()
            i += 1
            written[0] = i
            time.sleep(0.005)  # a steady stream, not a burst the coalescer folds into one set

    def arrived() -> int:
        """Stream files at the destination, up to the newest one."""
        return max((int(p.name[7:]) + 1 for p in dst.glob("stream-*")), default=0)

    def changes_while_down(what: str) -> None:
        mark = written[0]
        wait_for(lambda: written[0] >= mark + 100, 20, what=f"100 changes while {what} is down")

    def flowing_again(what: str) -> None:
        mark = written[0]
        wait_for(lambda: arrived() > mark, 30, interval=0.1, what=f"new changes to reach hostB after {what}")

    t = threading.Thread(target=writer)
    t.start()
    try:
        flowing_again("the rule started")
        cluster.daemons["hostB"].kill()  # the destination dies mid-stream...
        changes_while_down("hostB")
        cluster.daemons["hostB"].start()
        flowing_again("hostB's restart")
        cluster.daemons["hostA"].kill()  # ...then the source
        changes_while_down("hostA")
        cluster.daemons["hostA"].start()
        flowing_again("hostA's restart")
    finally:
        stop.set()
        t.join()
    _converge(src, dst, timeout=60)
    r = _rule(cluster, rule["id"])
    assert r["counters"]["reconciles"] >= 1, r  # the redeploy after the restarts reconciled


def test_the_watcher_never_ships_the_agents_own_temp_files(cluster: Cluster, tmp_path: Path) -> None:
    """A chain: hostB's receiver writes temp files into a tree hostB itself watches and ships on."""
    src, mid, out = tmp_path / "a" / "src", tmp_path / "b" / "mid", tmp_path / "b" / "out"
    make_tree(src, files=50, big=8 << 20)
    _watch(cluster, src, f"hostB:{mid}")
    rc, text, err = cluster.ctl("replicate", "--watch", f"hostB:{mid}", f"hostB:{out}", "--json")
    assert rc == 0, err
    second = json.loads(text)["id"]
    for i in range(5):  # big enough that hostB's receiver holds temp files in mid for a while
        (src / f"big{i}").write_bytes(os.urandom(4 << 20))
    _converge(src, mid)
    _converge(mid, out)
    # A temp name reaching the second rule's receiver would be refused (names in our namespace never
    # cross the wire), failing the session: no error means none was shipped.
    r = _counted(cluster, second, "the chained rule's files in its counters", lambda c: c["files"] >= 55)
    assert r["counters"]["errors"] == 0, r
    assert not list(out.rglob(".zc.*"))


def test_pause_resume_remove_and_a_bad_path(cluster: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "src", tmp_path / "b" / "dst"
    make_tree(src, files=20)
    rc, _, err = cluster.ctl("replicate", "--watch", "hostA:/etc", f"hostB:{dst}")
    assert rc == 1 and "outside the exports of hostA" in err and "syncs remove" in err, err
    bad = _rules(cluster)[0]
    assert bad["phase"] == "failed" and "outside the exports" in bad["last_error"]
    rc, _, err = cluster.ctl("syncs", "remove", str(bad["id"]))
    assert rc == 0, err
    rc, _, err = cluster.ctl("replicate", "--watch", f"nohost:{src}", f"hostB:{dst}")
    assert rc == 2 and "unknown host" in err
    # A destination outside hostB's exports: hostB refuses the rule's sessions and says why.
    rc, out, err = cluster.ctl("replicate", "--watch", "--detach", "--json", f"hostA:{src}", "hostB:/etc/zc")
    assert rc == 0, err
    refused = json.loads(out)["id"]
    r = wait_for(lambda: (x := _rule(cluster, refused))["last_error"] and x, 20, interval=0.2,
                 what="the destination's refusal in the rule")
    assert "outside the exports of hostB" in r["last_error"], r
    assert not Path("/etc/zc").exists()
    rc, _, err = cluster.ctl("syncs", "remove", str(refused))
    assert rc == 0, err

    rule = _watch(cluster, src, f"hostB:{dst}")
    rc, _, err = cluster.ctl("syncs", "pause", str(rule["id"]))
    assert rc == 0, err
    (src / "while-paused").write_bytes(b"x")
    time.sleep(SHIPPED_WITHIN)
    assert not (dst / "while-paused").exists()
    assert _rule(cluster, rule["id"])["phase"] == "paused"
    rc, table, _ = cluster.ctl("syncs")
    assert rc == 0 and "paused" in table
    rc, _, err = cluster.ctl("syncs", "resume", str(rule["id"]))
    assert rc == 0, err
    _converge(src, dst)  # the resume reconciles what changed while paused
    rc, _, err = cluster.ctl("syncs", "remove", str(rule["id"]))
    assert rc == 0, err
    (src / "after-remove").write_bytes(b"x")
    time.sleep(SHIPPED_WITHIN)
    assert not (dst / "after-remove").exists() and _rules(cluster) == []
    rc, _, err = cluster.ctl("syncs", "pause", "999")
    assert rc == 2 and "no watch rule 999" in err


def test_two_destinations_keep_in_step_through_a_controller_restart(make_bed_cluster: BedCluster,
                                                                     tmp_path: Path) -> None:
    c = make_bed_cluster(hosts=("hostA", "hostB", "hostC"))
    src = tmp_path / "a" / "src"
    make_tree(src, files=100)
    dsts = [tmp_path / "b" / "copy", tmp_path / "hostC" / "copy"]
    rc, out, err = c.ctl("replicate", "--watch", f"hostA:{src}", f"hostB:{dsts[0]}", f"hostC:{dsts[1]}", "--json")
    assert rc == 0, err
    rule_id = json.loads(out)["id"]
    (src / "one").write_bytes(b"1")
    for d in dsts:
        _converge(src, d)

    c.controller.stop()
    (src / "while-the-controller-is-down").write_bytes(b"agents keep the rule running")
    for d in dsts:
        _converge(src, d)
    c.controller.start()
    c.wait_online("hostA", "hostB", "hostC")
    # The restarted controller redeploys the stored rule with a new epoch: the source reconciles.
    try:
        wait_for(lambda: _rule(c, rule_id)["phase"] == "watching"
                 and _rule(c, rule_id)["counters"]["reconciles"] >= 2 * 2, 30, interval=0.2,
                 what="the rule to be redeployed and reconciled after the controller restart")
    except AssertionError as err:
        raise AssertionError(f"{err}: {_rule(c, rule_id)}") from None
    (src / "after-restart").mkdir()
    (src / "after-restart" / "f").write_bytes(b"2")
    for d in dsts:
        _converge(src, d)


def test_a_file_that_changes_while_it_is_sent_is_sent_again(cluster: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "src", tmp_path / "b" / "dst"
    src.mkdir(parents=True)
    rule = _watch(cluster, src, f"hostB:{dst}")
    big = src / "big"
    for i in range(8):  # each rewrite lands while the previous version may still be on the wire
        with open(big, "wb") as f:
            for _ in range(16):
                f.write(bytes([i]) * (1 << 20))
        time.sleep(0.03)
    _converge(src, dst)
    assert (dst / "big").read_bytes()[:1] == b"\x07"
    assert _rule(cluster, rule["id"])["counters"]["errors"] == 0
