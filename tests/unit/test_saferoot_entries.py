"""Tests for zcrepl.agent.transfer.atomic under a SafeRoot: symlinks, directory metadata, odd names, and
removing entries and trees without leaving the root."""

from __future__ import annotations

import os
import resource
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import saferoothelpers
from saferoothelpers import MTIME_NS, ODD_NAMES, _chain, _names, _write_all

from zcrepl.agent.transfer.atomic import AtomicFile, remove_entry, replace_symlink, set_dir_meta
from zcrepl.agent.transfer.saferoot import TEMP_PREFIX, SafeRoot
from zcrepl.core.errors import UnsafePath

# The shared fixtures: pytest finds a fixture by the name of the module attribute holding it.
_no_fd_leak = saferoothelpers._no_fd_leak
resolver = saferoothelpers.resolver
tree = saferoothelpers.tree
root = saferoothelpers.root


# ---------------------------------------------------------------------------------- symlinks, meta


def test_replace_symlink_dangling_verbatim_with_mtime(root: SafeRoot, tree: Path) -> None:
    target = b"../../nowhere/\xff\nx"
    replace_symlink(root.fd, b"lnk", target, MTIME_NS)
    assert os.readlink(os.fsencode(tree / "root" / "lnk")) == target
    st = os.lstat(tree / "root" / "lnk")
    assert stat.S_ISLNK(st.st_mode) and st.st_mtime_ns == MTIME_NS
    assert not any(n.startswith(TEMP_PREFIX) for n in _names(tree / "root"))


def test_replace_symlink_replaces_file_and_link(root: SafeRoot, tree: Path) -> None:
    pfd, leaf = root.open_parent((b"a", b"f"))
    try:
        replace_symlink(pfd, leaf, b"b", MTIME_NS)
        replace_symlink(pfd, leaf, b"/etc/passwd", MTIME_NS + 1)
    finally:
        os.close(pfd)
    f = tree / "root" / "a" / "f"
    assert f.is_symlink() and os.readlink(f) == "/etc/passwd"
    assert os.lstat(f).st_mtime_ns == MTIME_NS + 1
    assert _names(tree / "root" / "a") == [b"b", b"f"]


def test_replace_symlink_refuses_bad_input_and_cleans_up(root: SafeRoot, tree: Path) -> None:
    before = _names(tree / "root")
    for leaf, target in [(b"..", b"x"), (b".zc.a", b"x"), (b"ok", b""), (b"ok", b"a\0b")]:
        with pytest.raises(UnsafePath):
            replace_symlink(root.fd, leaf, target, MTIME_NS)
    with pytest.raises(IsADirectoryError):  # a directory is in the way: temp link must not linger
        replace_symlink(root.fd, b"a", b"x", MTIME_NS)
    assert _names(tree / "root") == before


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_names_round_trip(root: SafeRoot, tree: Path, resolver: bool, name: bytes) -> None:
    pfd, leaf = root.open_parent((name, name), create=True)
    try:
        with AtomicFile(pfd, leaf) as af:
            _write_all(af.fd, name)
            af.commit(0o640, MTIME_NS)
        replace_symlink(pfd, name + b".lnk", name, MTIME_NS)
    finally:
        os.close(pfd)
    d = os.fsencode(tree / "root") + b"/" + name
    assert sorted(os.listdir(d)) == sorted([name, name + b".lnk"])
    with open(d + b"/" + name, "rb") as fh:
        assert fh.read() == name
    assert os.readlink(d + b"/" + name + b".lnk") == name
    fd = root.open_read((name, name))
    try:
        assert os.read(fd, 100) == name
    finally:
        os.close(fd)


def test_set_dir_meta(root: SafeRoot, tree: Path) -> None:
    fd = root.open_dir((b"a", b"b"))
    try:
        set_dir_meta(fd, 0o40751 | 0o1000, MTIME_NS)
    finally:
        os.close(fd)
    st = (tree / "root" / "a" / "b").stat()
    assert stat.S_IMODE(st.st_mode) == 0o751 and st.st_mtime_ns == MTIME_NS


# ------------------------------------------------------------------------------------ remove_entry


def test_remove_file_link_and_absent(root: SafeRoot, tree: Path) -> None:
    (tree / "outside" / "d").mkdir()
    (tree / "outside" / "d" / "x").write_bytes(b"x")
    (tree / "root" / "todir").symlink_to("../outside/d")
    assert remove_entry(root.fd, b"todir") == 1
    assert (tree / "outside" / "d" / "x").read_bytes() == b"x"
    assert remove_entry(root.fd, b"escape") == 1
    assert _names(tree / "outside") == [b"d", b"secret"]
    pfd, leaf = root.open_parent((b"a", b"f"))
    try:
        assert remove_entry(pfd, leaf) == 1
        assert remove_entry(pfd, leaf) == 0
    finally:
        os.close(pfd)
    assert remove_entry(root.fd, b"absent") == 0
    with pytest.raises(UnsafePath):
        remove_entry(root.fd, b"..")


def test_remove_tree_counts_and_stays_inside(root: SafeRoot, tree: Path) -> None:
    top = tree / "root" / "t"
    (top / "b" / "c").mkdir(parents=True)
    (top / "f1").write_bytes(b"1")
    (top / "b" / "f2").write_bytes(b"2")
    (top / "b" / "c" / os.fsdecode(b"\xff\n")).write_bytes(b"3")  # a non-UTF-8 name
    (top / "b" / "out").symlink_to("../../../outside")
    (top / "e").mkdir()
    # t, f1, b, f2, c, c/<odd>, out, e
    assert remove_entry(root.fd, b"t") == 8
    assert not top.exists()
    assert _names(tree / "outside") == [b"secret"]


@pytest.fixture
def few_fds() -> Iterator[int]:
    """RLIMIT_NOFILE lowered to 200 for the test: a removal that holds an fd per level runs out at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))
    try:
        yield 200
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_remove_tree_at_any_depth_with_few_fds(root: SafeRoot, tree: Path, few_fds: int) -> None:
    depth = 5 * few_fds
    names = _names(tree / "root")
    _chain(root.fd, depth, files=2)
    before = len(os.listdir("/proc/self/fd"))
    assert remove_entry(root.fd, b"d") == 3 * depth  # every directory and the two files in each
    assert _names(tree / "root") == names
    assert len(os.listdir("/proc/self/fd")) == before
    assert _names(tree / "outside") == [b"secret"]


def test_remove_tree_deeper_than_path_max(root: SafeRoot, tree: Path) -> None:
    names = _names(tree / "root")
    _chain(root.fd, 40, name=b"n" * 200)  # 8,040 bytes of path: no single syscall could name the bottom
    assert remove_entry(root.fd, b"n" * 200) == 40
    assert _names(tree / "root") == names
