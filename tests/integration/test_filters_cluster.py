"""Filters end to end: zc-ctl's rsync spellings, real controller and agents, the network data plane, a watch
rule. The rsync-equality table runs in test_filters.py; this checks the options travel and hold everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from zchelpers import BACKENDS, Cluster, wait_for


def _tree(root: Path, rels: list[str]) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode())


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_replicate_filters_delete_and_zcignore(cluster: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "src", tmp_path / "b" / "dst"
    _tree(src, ["keep.c", "x.o", "keep.o", "build/out", "src/cache/c", "src/main.c", "notes.tmp", "secret/k"])
    (src / ".zcignore").write_bytes(b"# scratch files\n*.tmp\n/secret/\n")
    _tree(dst, ["old.txt", "old.o", "build/old", "gone/a.o", "gone/b", "notes.tmp"])
    patterns = tmp_path / "excl.txt"
    patterns.write_bytes(b"; from a file\n**/cache/\n")
    rc, out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{dst}", "--delete", "--include", "keep.o",
                               "--exclude", "*.o", "--exclude", "build/", "--exclude-from", str(patterns), "--json")
    assert rc == 0, err
    job = json.loads(out)
    assert job["state"] == "done", job
    assert _listing(dst) == {".zcignore", "keep.c", "keep.o", "src", "src/main.c",
                             # excluded, so kept by --delete (and "gone" holds only what is protected)
                             "old.o", "build", "build/old", "gone", "gone/a.o", "notes.tmp"}

    rc, out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{dst}", "--exclude", "*.o",
                               "--delete-excluded", "--json")
    assert rc == 0, err
    assert _listing(dst) == {".zcignore", "keep.c", "build", "build/out", "src", "src/main.c", "src/cache",
                             "src/cache/c"}


def test_a_pattern_rsync_refuses_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    src = tmp_path / "a" / "src"
    _tree(src, ["f"])
    rc, _out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{tmp_path / 'b' / 'dst'}", "--exclude", "- ")
    assert rc == 2
    assert "no pattern after its prefix" in err and err.count("\n") == 1, err
    assert not (tmp_path / "b" / "dst").exists()
    rc, _out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{tmp_path / 'b' / 'dst'}", "--exclude-from",
                                str(tmp_path / "missing.txt"))
    assert rc == 2 and "cannot read --exclude-from file" in err, err


@pytest.mark.parametrize("cluster", BACKENDS, indirect=True)
def test_watch_rule_leaves_excluded_paths_alone(cluster: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "src", tmp_path / "b" / "dst"
    _tree(src, ["a.txt", "cache/c1", "x.log"])
    _tree(dst, ["cache/mine", "mine.log"])
    rc, out, err = cluster.ctl("replicate", "--watch", f"hostA:{src}", f"hostB:{dst}", "--exclude", "cache/",
                               "--exclude", "*.log", "--json")
    assert rc == 0, err
    rule = json.loads(out)
    assert _listing(dst) == {"a.txt", "cache", "cache/mine", "mine.log"}

    (src / "cache" / "c2").write_bytes(b"x")
    (src / "y.log").write_bytes(b"y")
    (src / "mine.log").write_bytes(b"source's")  # excluded: the destination's own stays as it is
    (src / "b.txt").write_bytes(b"b")  # a change that ships, after the excluded ones
    wait_for(lambda: (dst / "b.txt").exists(), 20, what="b.txt at the destination")
    (src / "a.txt").unlink()
    wait_for(lambda: not (dst / "a.txt").exists(), 20, what="a.txt deleted at the destination")
    # The excluded changes came before these two: had they shipped, they would have arrived by now.
    assert _listing(dst) == {"b.txt", "cache", "cache/mine", "mine.log"}
    assert (dst / "mine.log").read_bytes() == b"mine.log"
    rc, out, err = cluster.ctl("syncs", "--json")
    assert rc == 0, err
    mine = next(r for r in json.loads(out) if r["id"] == rule["id"])
    assert mine["counters"]["errors"] == 0, mine
