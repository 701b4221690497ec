"""No peer-chosen privilege (issue 9, findings 4 and 9), with real agents and real files.

A source's capabilities, ACLs, trusted.* attributes and ownership reach a destination only where its export
policy allows them, for jobs, watch rules and same-host copies alike; and a destination file that is a hard
link to something outside the export is replaced, never changed through the link.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from zchelpers import OLD_MTIME_NS, Cluster, wait_for, write_file

from zcrepl.core.types import Endpoint, JobOptions

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="setting privileged xattrs and owners needs root")

# vfs_cap_data revision 2 with CAP_SETUID permitted and effective: what `setcap cap_setuid+ep` writes.
CAP_SETUID = struct.pack("<IIIII", 0x02000001, 1 << 7, 0, 0, 0)
# A POSIX access ACL granting uid 1234 rwx: user::rw-, user:1234:rwx, group::r--, mask::rwx, other::r--.
ACL = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in (
    (0x01, 6, 0xFFFFFFFF), (0x02, 7, 1234), (0x04, 4, 0xFFFFFFFF), (0x10, 7, 0xFFFFFFFF), (0x20, 4, 0xFFFFFFFF)))
PRIVILEGED = {b"security.capability": CAP_SETUID, b"trusted.zc": b"peer says", b"system.posix_acl_access": ACL}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """hostA (source), hostB (default policy), hostC (lets peers decide: owners within a range, privileged xattrs)."""
    c = Cluster(tmp_path)
    try:
        c.controller.start()
        agents = [c.add_agent("hostA", tmp_path / "a"), c.add_agent("hostB", tmp_path / "b"),
                  c.add_agent("hostC", tmp_path / "c")]
        policy = "owners=keep,uids=1000-1999,gids=100-199,gid_map=5678>6000,allow_privileged_xattrs=yes"
        agents[2].argv += ["--export-policy", f"{tmp_path / 'c'}:{policy}"]
        for a in agents:
            a.start()
        c.wait_online("hostA", "hostB", "hostC")
        yield c
    finally:
        c.close()


def _privileged_source(src: Path) -> Path:
    """A root-owned executable with a capability, an ACL and trusted.*; files owned by other users."""
    src.mkdir(parents=True)
    exe = src / "tool"
    write_file(exe, b"#!/bin/sh\nid\n", 0o755)
    for key, value in PRIVILEGED.items():
        try:
            os.setxattr(exe, key, value)
        except OSError as err:
            pytest.skip(f"this filesystem refuses {key.decode()}: {os.strerror(err.errno or errno.EIO)}")
    os.setxattr(exe, b"user.note", b"harmless")
    os.utime(exe, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    for name, uid, gid in ((b"alice", 1234, 5678), (b"outsider", 2500, 2500)):
        write_file(src / os.fsdecode(name), name)
        os.chown(src / os.fsdecode(name), uid, gid)
    os.symlink("tool", src / "link")
    os.chown(src / "link", 1234, 5678, follow_symlinks=False)
    return src


def _attrs(path: Path) -> set[bytes]:
    return {os.fsencode(k) for k in os.listxattr(path)}


def _owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def test_by_default_a_peer_decides_neither_privileged_xattrs_nor_owners(cluster: Cluster, tmp_path: Path) -> None:
    src = _privileged_source(tmp_path / "a" / "src")
    rc, _, err = cluster.ctl("replicate", "--xattrs", f"hostA:{src}", f"hostB:{tmp_path}/b/dst")
    assert rc == 0, err
    dst = tmp_path / "b" / "dst"
    assert (dst / "tool").read_bytes() == (src / "tool").read_bytes()
    assert _attrs(dst / "tool") & set(PRIVILEGED) == set()  # no cap_setuid, no ACL, no trusted.*
    assert os.getxattr(dst / "tool", b"user.note") == b"harmless"  # ordinary attributes still travel
    assert stat.S_IMODE(os.stat(dst / "tool").st_mode) == stat.S_IMODE(os.stat(src / "tool").st_mode)
    for name in ("alice", "outsider", "link", "tool"):
        assert _owner(dst / name) == (0, 0), name  # the agent's user, whatever the source said


def test_an_export_that_allows_them_gets_them_within_its_ranges(cluster: Cluster, tmp_path: Path) -> None:
    src = _privileged_source(tmp_path / "a" / "src")
    rc, _, err = cluster.ctl("replicate", "--xattrs", f"hostA:{src}", f"hostC:{tmp_path}/c/dst")
    assert rc == 0, err
    dst = tmp_path / "c" / "dst"
    for key, value in PRIVILEGED.items():
        assert os.getxattr(dst / "tool", key) == value
    assert _owner(dst / "alice") == (1234, 6000)  # uid in range; gid mapped
    assert _owner(dst / "link") == (1234, 6000)
    assert _owner(dst / "outsider") == (0, 0)  # neither in range nor mapped: nothing applied


def test_same_host_copies_follow_the_destination_policy(cluster: Cluster, tmp_path: Path) -> None:
    src = _privileged_source(tmp_path / "a" / "src")
    rc, _, err = cluster.ctl("replicate", "--xattrs", f"hostA:{src}", f"hostA:{tmp_path}/a/copy")
    assert rc == 0, err
    copy = tmp_path / "a" / "copy"
    assert (copy / "tool").read_bytes() == (src / "tool").read_bytes()
    assert _attrs(copy / "tool") & set(PRIVILEGED) == set()
    assert _owner(copy / "alice") == (0, 0)


def test_watch_rules_follow_the_destination_policy(cluster: Cluster, tmp_path: Path) -> None:
    src = _privileged_source(tmp_path / "a" / "src")
    dst = tmp_path / "b" / "live"
    with cluster.client() as client:
        rule = client.create_watch_rule(Endpoint("hostA", os.fsencode(src)), [Endpoint("hostB", os.fsencode(dst))],
                                  JobOptions(xattrs=True))
        try:
            wait_for(lambda: (dst / "tool").exists() and (dst / "alice").exists(), what="the first full scan")
            write_file(src / "later", b"later")
            os.chown(src / "later", 1234, 5678)
            os.setxattr(src / "later", b"security.capability", CAP_SETUID)
            wait_for(lambda: (dst / "later").exists(), what="the change to arrive")
        finally:
            client.watch_rule_action("remove", rule.id)
    for name in ("tool", "later"):
        assert _attrs(dst / name) & set(PRIVILEGED) == set(), name
    assert _owner(dst / "alice") == _owner(dst / "later") == (0, 0)


def test_a_hard_link_to_a_file_outside_is_replaced_not_changed(cluster: Cluster, tmp_path: Path) -> None:
    """Finding 9: same size and mtime as the source, other mode and xattrs: the "up to date" path must not
    fix them through the link; a changed big file's delta must not write into it either."""
    src = tmp_path / "a" / "src"
    src.mkdir(parents=True)
    write_file(src / "f", b"same bytes", 0o600)
    os.setxattr(src / "f", b"user.zc", b"from the source")
    big = os.urandom(5 << 20)
    write_file(src / "big", big[:-1] + b"!")
    outside = tmp_path / "outside"
    outside.mkdir()
    write_file(outside / "f", b"same bytes", 0o644)
    write_file(outside / "big", big, 0o644, mtime_ns=OLD_MTIME_NS + 1)
    before = {n: (os.stat(outside / n), (outside / n).read_bytes(), _attrs(outside / n)) for n in ("f", "big")}
    dst = tmp_path / "b" / "dst"
    dst.mkdir(parents=True)
    for n in ("f", "big"):
        os.link(outside / n, dst / n)
    rc, _, err = cluster.ctl("replicate", "--xattrs", f"hostA:{src}", f"hostB:{dst}")
    assert rc == 0, err
    for n in ("f", "big"):
        st, data, attrs = before[n]
        now = os.stat(outside / n)
        assert (now.st_mode, now.st_mtime_ns, now.st_uid) == (st.st_mode, st.st_mtime_ns, st.st_uid), n
        assert (outside / n).read_bytes() == data and _attrs(outside / n) == attrs, n
        assert os.stat(dst / n).st_ino != now.st_ino and now.st_nlink == 1, n
        assert (dst / n).read_bytes() == (src / n).read_bytes(), n
    assert stat.S_IMODE(os.stat(dst / "f").st_mode) == 0o600
    assert os.getxattr(dst / "f", b"user.zc") == b"from the source"
    assert os.stat(dst / "f").st_mtime_ns == OLD_MTIME_NS
