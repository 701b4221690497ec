"""rsync's everyday options end to end on one cluster (real controller and agents, the network data plane, zc-ctl):
a dry run's plan reaching the operator, --backup-dir and --link-dest, and their bad input refused in one sentence.
The rsync-equality table of the plan runs in test_dryrun.py."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import zchelpers
from treesnap import snapshot
from zchelpers import Cluster, running


@pytest.fixture(scope="module")
def cl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running(Cluster(tmp_path_factory.mktemp("rsyncopts"))) as c:
        yield c


def _tree(root: Path, files: dict[str, bytes], t: int = 1_600_000_000) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, (t, t))


def _case(cl: Cluster, name: str) -> tuple[Path, Path]:
    return cl.base / "a" / name / "src", cl.base / "b" / name / "dst"


def test_dry_run_lists_the_plan_and_changes_nothing(cl: Cluster) -> None:
    src, dst = _case(cl, "dry")
    _tree(src, {"same.txt": b"same", "new/n.txt": b"new!", "grown.txt": b"longer now", "mode.txt": b"m"})
    _tree(dst, {"same.txt": b"same", "grown.txt": b"short", "mode.txt": b"m", "old/o.txt": b"o"})
    os.chmod(dst / "mode.txt", 0o600)
    (dst / ".zc.stale.tmp").write_bytes(b"left by a killed receiver: a real run removes it, a dry run doesn't")
    for root in (src, dst):  # directories alike: their mtimes would be updates of their own
        for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            os.utime(d, (1_600_000_000, 1_600_000_000))
    before = snapshot(dst)
    rc, out, err = cl.ctl("replicate", "-n", "--delete", f"hostA:{src}", f"hostB:{dst}", "--json")
    assert rc == 0, err
    plan = {(x["change"], x["path"]): x for x in json.loads(out)}
    assert set(plan) == {("created", "new"), ("created", "new/n.txt"), ("updated", "grown.txt"),
                         ("updated", "mode.txt"), ("deleted", "old/o.txt"), ("deleted", "old")}
    assert plan[("updated", "grown.txt")]["why"] == ["size"] and plan[("updated", "grown.txt")]["bytes"] == 10
    assert plan[("updated", "mode.txt")]["itemize"] == ".f...p....."
    assert plan[("created", "new/n.txt")]["itemize"] == ">f+++++++++"
    assert "2 to create, 2 to update, 2 to delete; 2 files (14 bytes) would be sent" in err
    assert snapshot(dst) == before

    rc, out, err = cl.ctl("replicate", "--dry-run", f"hostA:{src}", f"hostB:{dst}")  # no --delete: no deletions
    assert rc == 0, err
    lines = out.splitlines()
    assert ">f.s....... grown.txt  (size)" in lines and "cd+++++++++ new/" in lines
    assert not any("deleting" in line for line in lines)
    job_id = int(lines[-1].split()[1])
    rc, out, err = cl.ctl("job", str(job_id), "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["options"]["dry_run"] and doc["progress"]["plan_created"] == 2 and len(doc["plan"]) == 4
    assert doc["progress"]["bytes_done"] == 0 and doc["progress"]["files_done"] == 0
    assert snapshot(dst) == before

    missing = dst.parent / "not-yet"
    rc, out, err = cl.ctl("replicate", "-n", f"hostA:{src}", f"hostB:{missing}", "--json")
    assert rc == 0, err
    assert {x["path"] for x in json.loads(out) if x["change"] == "created"} == {
        "", "same.txt", "new", "new/n.txt", "grown.txt", "mode.txt"}
    assert not missing.exists()


def test_dry_run_refused_with_watch(cl: Cluster) -> None:
    src, dst = _case(cl, "dry-refused")
    _tree(src, {"f": b"f"})
    rc, _out, err = cl.ctl("replicate", "-n", "--watch", f"hostA:{src}", f"hostB:{dst}")
    assert rc == 2 and "--dry-run plans one run" in err and err.count("\n") == 1, err
    assert not dst.exists()


def test_backup_dir_over_the_network(cl: Cluster) -> None:
    src, dst = _case(cl, "bak")
    bak = dst.parent / "backup"
    _tree(src, {"top.txt": b"new top", "a/b/deep.txt": b"new deep"})
    _tree(dst, {"top.txt": b"old top", "a/b/deep.txt": b"old deep", "gone/g.txt": b"deleted"}, 1_500_000_000)
    rc, out, err = cl.ctl("replicate", "--delete", "--backup-dir", "../backup", f"hostA:{src}", f"hostB:{dst}",
                          "--json")
    assert rc == 0, err
    job = json.loads(out)
    assert job["options"]["backup_dir"] == str(bak)  # stored resolved, relative to the destination
    assert job["progress"]["backed_up"] == 3
    assert {str(p.relative_to(bak)): p.read_bytes() for p in bak.rglob("*") if p.is_file()} == {
        "top.txt": b"old top", "a/b/deep.txt": b"old deep", "gone/g.txt": b"deleted"}
    assert (dst / "top.txt").read_bytes() == b"new top" and not (dst / "gone").exists()


@pytest.mark.parametrize("flag,value,says", [
    ("--backup-dir", "/elsewhere/bak", "outside hostB's exports"),
    ("--backup-dir", "inside", "which overlaps the destination"),
    ("--link-dest", "..", "which overlaps the destination"),
    ("--link-dest", "/etc", "outside hostB's exports"),
])
def test_backup_and_link_dirs_refused(cl: Cluster, flag: str, value: str, says: str) -> None:
    src, dst = _case(cl, "refused")
    _tree(src, {"f": b"f"})
    rc, _out, err = cl.ctl("replicate", flag, value, f"hostA:{src}", f"hostB:{dst}")
    assert rc == 2 and says in err and err.count("\n") == 1, err
    assert not dst.exists()


def test_link_dest_moves_almost_nothing_for_an_unchanged_file(cl: Cluster) -> None:
    """A snapshot of an unchanged 16 MiB file against the previous one: linked, and less than 1% of it on the
    wire (the manifest and the protocol are all that travel)."""
    src = cl.base / "a" / "snaps-src"
    snaps = cl.base / "b" / "snaps"
    src.mkdir(parents=True)
    big = src / "big.bin"
    big.write_bytes(os.urandom(16 << 20))  # incompressible, no holes: only a link avoids sending it
    _tree(src, {"small.txt": b"changes every night"})
    rc, _out, err = cl.ctl("replicate", f"hostA:{src}", f"hostB:{snaps / 'day1'}")
    assert rc == 0, err
    _tree(src, {"small.txt": b"changed the next night"}, 1_600_000_100)
    rc, out, err = cl.ctl("replicate", "--link-dest", "../day1", f"hostA:{src}", f"hostB:{snaps / 'day2'}", "--json")
    assert rc == 0, err
    p = json.loads(out)["progress"]
    assert p["linked"] == 1 and p["files_done"] == 1
    assert 0 < p["wire_bytes"] < (16 << 20) // 100, p
    assert os.path.samefile(snaps / "day1" / "big.bin", snaps / "day2" / "big.bin")
    assert (snaps / "day1" / "small.txt").read_bytes() == b"changes every night"
    assert (snaps / "day2" / "small.txt").read_bytes() == b"changed the next night"


def test_same_host_copy_plans_and_backs_up_too(cl: Cluster) -> None:
    """Both ends on one agent (the local copy, no socket): the same receiver rules."""
    base = cl.base / "b" / "local"
    src, dst = base / "src", base / "dst"
    _tree(src, {"f.txt": b"new version"})
    _tree(dst, {"f.txt": b"old", "extra.txt": b"x"}, 1_500_000_000)
    before = snapshot(dst)
    rc, out, err = cl.ctl("replicate", "-n", "--delete", f"hostB:{src}", f"hostB:{dst}", "--json")
    assert rc == 0, err
    assert {(x["change"], x["path"]) for x in json.loads(out)} >= {("updated", "f.txt"), ("deleted", "extra.txt")}
    assert snapshot(dst) == before
    rc, out, err = cl.ctl("replicate", "--delete", "--backup-dir", "../bak", f"hostB:{src}", f"hostB:{dst}",
                          "--json")
    assert rc == 0, err
    assert json.loads(out)["progress"]["backed_up"] == 2
    assert (base / "bak" / "f.txt").read_bytes() == b"old" and (base / "bak" / "extra.txt").read_bytes() == b"x"


def test_link_dest_copy_is_the_delta_basis_of_a_changed_file(cl: Cluster) -> None:
    """A new snapshot lacks the file, so its own old version can't serve as a delta basis: the previous
    snapshot's copy does, and only the changed block and the hashes travel."""
    src = cl.base / "a" / "delta-src"
    snaps = cl.base / "b" / "delta-snaps"
    src.mkdir(parents=True)
    data = bytearray(os.urandom(8 << 20))
    (src / "db.bin").write_bytes(data)
    rc, _out, err = cl.ctl("replicate", f"hostA:{src}", f"hostB:{snaps / 'day1'}")
    assert rc == 0, err
    data[5 << 20: (5 << 20) + 4096] = os.urandom(4096)
    (src / "db.bin").write_bytes(data)
    rc, out, err = cl.ctl("replicate", "--link-dest", "../day1", f"hostA:{src}", f"hostB:{snaps / 'day2'}", "--json")
    assert rc == 0, err
    p = json.loads(out)["progress"]
    assert p["linked"] == 0 and p["files_done"] == 1
    assert p["wire_bytes"] < (8 << 20) // 10, p
    assert (snaps / "day2" / "db.bin").read_bytes() == data
    assert (snaps / "day1" / "db.bin").read_bytes() != data  # the basis itself is untouched


def test_compress_end_to_end(cl: Cluster) -> None:
    """-z through zc-ctl, the controller's order and both agents (which registered their zstd rate): an exact
    copy, fewer wire bytes than file bytes, and the decision in explain."""
    src, dst = _case(cl, "zstd")
    line = b"2026-11-30 16:50:01 hostA zc-agent[4242]: send done job=17 files=2261 bytes=40000000\n"
    _tree(src, {"log/big.log": line * 40_000, "small.txt": b"hello\n", "empty": b""})
    rc, out, err = cl.ctl("replicate", "-z", "--compress-level", "5", f"hostA:{src}", f"hostB:{dst}", "--json")
    assert rc == 0, err
    job = json.loads(out)
    assert job["options"]["compress"] == "on" and job["options"]["compress_level"] == 5
    assert not zchelpers.diff_trees(zchelpers.snapshot(src), zchelpers.snapshot(dst))
    stats = job["history"][-1]["stats"]
    assert stats["bytes_done"] == len(line) * 40_000 + 6
    assert stats["wire_bytes"] < stats["bytes_done"] // 20, stats  # a log of repeated lines shrinks a lot
    rc, out, err = cl.ctl("explain", str(job["id"]))
    assert rc == 0 and "compressed: the job asked for it (--compress)" in out, out + err


def test_compress_refused_with_watch(cl: Cluster) -> None:
    src, dst = _case(cl, "zstd-watch")
    _tree(src, {"f": b"f"})
    rc, _out, err = cl.ctl("replicate", "-z", "--watch", f"hostA:{src}", f"hostB:{dst}")
    assert rc == 2 and "-z/--compress applies to jobs" in err and err.count("\n") == 1, err
    assert not dst.exists()
