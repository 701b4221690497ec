"""Nothing is skipped silently (issue 9, item 10): trees of any depth replicate, and every entry left out
makes the job "done with N skipped" (zc-ctl exit 4) with its path and reason in ``zc-ctl job``; a file that
cannot be read makes it "done with N errors" (exit 6, test_read_errors.py)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from zchelpers import Cluster, Daemon, diff_trees, remove_deep, snapshot, wait_for, write_file

# Run a zc-agent as root without the capabilities that let root read anything: permissions then bind it
# like any user, so unreadable entries exist for it.
NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture(autouse=True)
def _remove_deep_trees(tmp_path: Path) -> Iterator[None]:
    """The trees here are deeper than pytest's own clean-up can remove (it recurses once per level)."""
    yield
    for side in ("a", "b"):
        remove_deep(tmp_path / side)


def walk(root: Path) -> dict[bytes, tuple[Any, ...]]:
    """Every entry below ``root`` through directory fds, so paths longer than PATH_MAX are no obstacle
    (zchelpers.snapshot goes by path). Independent of zcrepl: scandir + fstatat + sha256."""
    out: dict[bytes, tuple[Any, ...]] = {}
    stack: list[tuple[int, bytes]] = [(os.open(root, os.O_RDONLY | os.O_DIRECTORY), b"")]
    while stack:
        fd, rel = stack.pop()
        try:
            for de in os.scandir(fd):
                name = os.fsencode(de.name)
                path = rel + b"/" + name if rel else name
                st = de.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    out[path] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
                    stack.append((os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd), path))
                elif stat.S_ISREG(st.st_mode):
                    ffd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
                    with os.fdopen(ffd, "rb") as f:
                        digest = hashlib.sha256(f.read()).hexdigest()
                    out[path] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, digest)
                elif stat.S_ISLNK(st.st_mode):
                    out[path] = ("link", os.readlink(name, dir_fd=fd))
                else:
                    out[path] = ("special", stat.S_IFMT(st.st_mode))
        finally:
            os.close(fd)
    return out


def chain(top: Path, names: list[bytes], leaf: bytes = b"bottom.txt") -> None:
    """Directories ``names`` nested under ``top``, a file at every 50th level and one at the bottom."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for depth, name in enumerate(names, 1):
            os.mkdir(name, 0o750, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            if depth % 50 == 0:
                with os.fdopen(os.open(b"level%d" % depth, os.O_CREAT | os.O_WRONLY, 0o640, dir_fd=fd), "wb") as f:
                    f.write(b"at level %d" % depth)
        with os.fdopen(os.open(leaf, os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd), "wb") as f:
            f.write(b"the bottom of the tree")
    finally:
        os.close(fd)


def test_trees_deeper_than_256_levels_and_longer_than_path_max_replicate(cluster: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "deep", tmp_path / "b" / "deep"
    src.mkdir()
    (src / "narrow").mkdir()
    chain(src / "narrow", [b"d"] * 300)  # the old walk stopped at level 256
    (src / "wide").mkdir()
    chain(src / "wide", [b"n" * 200] * 40)  # 8 KB of path: no single syscall can name the bottom
    rc, out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{dst}", "--json")
    assert rc == 0, err
    want, got = walk(src), walk(dst)
    assert len(want) == 300 + 6 + 1 + 40 + 1 + 2  # dirs, files of the chains, and their two tops
    assert sorted(set(want) - set(got))[:3] == [] and got == want
    deepest = max(want, key=len)
    assert len(deepest) > 8000 and deepest.endswith(b"bottom.txt")
    job = json.loads(out)
    assert job["progress"]["entries_skipped"] == 0 and job["skipped"] == []

    # --delete removes a tree as deep from the destination as well.
    chain(dst, [b"x"] * 400)
    rc, out, err = cluster.ctl("replicate", "--delete", f"hostA:{src}", f"hostB:{dst}", "--json")
    assert rc == 0, err
    assert json.loads(out)["progress"]["deleted"] == 400 + 8 + 1
    assert walk(dst) == want

    # A same-host copy walks the same way.
    local = tmp_path / "a" / "copy"
    rc, _, err = cluster.ctl("replicate", f"hostA:{src}", f"hostA:{local}")
    assert rc == 0, err
    assert walk(local) == want


def test_special_files_make_the_job_done_with_them_listed(cluster: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "s", tmp_path / "b" / "d"
    (src / "sub").mkdir(parents=True)
    write_file(src / "sub" / "plain", b"data")
    os.mkfifo(src / "sub" / "a fifo\n")
    with socket.socket(socket.AF_UNIX) as sk:
        sk.bind(str(src / "sock"))
    rc, out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{dst}")
    assert rc == 4, err
    assert "job 1 done with 2 skipped" in out
    assert "zc-ctl: job 1 (hostB) done with 2 entries skipped (first: sock: socket: only regular files" in err
    assert (dst / "sub" / "plain").read_bytes() == b"data"

    doc = cluster.job(1)
    assert doc["state"] == "done" and doc["done_with_skips"] and doc["progress"]["entries_skipped"] == 2
    assert {x["path"]: x["reason"].split(":")[0] for x in doc["skipped"]} == {"sock": "socket",
                                                                            "sub/a fifo\\n": "FIFO"}
    rc, out, _ = cluster.ctl("job", "1")
    assert rc == 0 and "2 entries skipped (not replicated):" in out and "  sub/a fifo\\n: FIFO: only" in out
    rc, out, _ = cluster.ctl("jobs")
    assert rc == 0 and "done with 2 skipped" in out
    rc, out, _ = cluster.ctl("explain", "1")
    assert "2 entries skipped (first: sock: socket" in out

    cluster.controller.stop()  # the list is durable like the rest of the job
    cluster.controller.start()
    cluster.wait_online("hostA", "hostB")
    assert cluster.job(1)["skipped"] == doc["skipped"]

    # Same host: one scan serves both ends and counts its skips once.
    rc, out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostA:{tmp_path / 'a' / 'copy'}", "--json")
    assert rc == 4, err
    assert json.loads(out)["progress"]["entries_skipped"] == 2 and len(json.loads(out)["skipped"]) == 2


@pytest.fixture
def capless(tmp_path: Path) -> Iterator[Cluster]:
    """hostA runs without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH; hostB is an ordinary root agent."""
    c = Cluster(tmp_path)
    try:
        c.controller.start()
        (tmp_path / "a").mkdir()
        argv = [*NO_DAC, sys.executable, "-m", "zcrepl.agent", "--name", "hostA", "--controller",
                c.controller_addr, "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--ready-file",
                str(tmp_path / "hostA.json"), "--log-level", "debug", "--export", str(tmp_path / "a"),
                *c.pki.flags("agent", "hostA")]
        c.daemons["hostA"] = Daemon("hostA", argv, tmp_path / "hostA.json", tmp_path / "hostA.log")
        c.daemons["hostA"].start()
        c.add_agent("hostB", tmp_path / "b").start()
        c.wait_online("hostA", "hostB")
        yield c
    finally:
        c.close()


def test_unreadable_entries_are_left_out_and_the_destination_keeps_its_copy(capless: Cluster,
                                                                             tmp_path: Path) -> None:
    """An unreadable directory is skipped; an unreadable file is a file error (it should have been copied),
    which outranks the skip in the exit code."""
    src, dst = tmp_path / "a" / "s", tmp_path / "b" / "d"
    (src / "locked" / "inner").mkdir(parents=True)
    write_file(src / "locked" / "inner" / "f", b"new")
    write_file(src / "secret", b"new secret", mode=0o000)
    write_file(src / "open", b"readable")
    os.chmod(src / "locked", 0o000)
    (dst / "locked" / "inner").mkdir(parents=True)
    write_file(dst / "locked" / "inner" / "f", b"the copy from last week")
    write_file(dst / "locked" / "only-here", b"kept")
    write_file(dst / "secret", b"old secret")
    write_file(dst / "extra", b"gone with --delete")

    rc, out, err = capless.ctl("replicate", "--delete", f"hostA:{src}", f"hostB:{dst}", "--json")
    assert rc == 6, err
    doc = json.loads(out)
    reasons = {x["path"]: x["reason"] for x in doc["skipped"]}
    assert set(reasons) == {"locked"} and doc["progress"]["entries_skipped"] == 1
    assert reasons["locked"].startswith("directory not readable by zc-agent: its contents are not replicated")
    assert [x["path"] for x in doc["errors"]] == ["secret"] and doc["progress"]["file_errors"] == 1
    assert doc["errors"][0]["reason"].startswith("cannot be read at the source (Permission denied): not "
                                                 "replicated, and the destination keeps")
    # What the source could not read is kept as it was; the rest is mirrored.
    assert (dst / "locked" / "inner" / "f").read_bytes() == b"the copy from last week"
    assert (dst / "locked" / "only-here").read_bytes() == b"kept"
    assert (dst / "secret").read_bytes() == b"old secret"
    assert (dst / "open").read_bytes() == b"readable" and not (dst / "extra").exists()
    assert stat.S_IMODE(os.stat(dst / "locked").st_mode) == 0o000


def test_a_watch_rule_counts_what_it_skips(cluster: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "w", tmp_path / "b" / "w"
    src.mkdir()
    write_file(src / "f", b"x")
    os.mkfifo(src / "fifo")
    rc, out, err = cluster.ctl("replicate", "--watch", f"hostA:{src}", f"hostB:{dst}", "--json")
    assert rc == 0, err
    rule = json.loads(out)["id"]

    def counted() -> dict[str, Any] | None:
        rules = json.loads(cluster.ctl("syncs", "--json")[1])
        r = next(r for r in rules if r["id"] == rule)
        return r if r["counters"]["skipped"] >= 1 else None

    r = wait_for(counted, 20, interval=0.2, what="the skipped FIFO counted")
    assert "entries skipped; last: fifo: FIFO: only regular files" in r["last_error"]
    rc, out, _ = cluster.ctl("syncs")
    assert rc == 0 and "1 skipped" in out
    assert (dst / "f").read_bytes() == b"x"
    assert cluster.ctl("syncs", "remove", str(rule))[0] == 0
    assert diff_trees({k: v for k, v in snapshot(src).items() if k != b"fifo"}, snapshot(dst)) == []
