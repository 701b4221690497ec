"""Tests for zcrepl.agent.transfer.atomic.AtomicFile under a SafeRoot: invisible until committed, nothing left
behind on failure (reliability §1)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import saferoothelpers
from saferoothelpers import MTIME_NS, _names, _write_all

from zcrepl.agent.transfer.atomic import PREALLOCATE_MIN, AtomicFile
from zcrepl.agent.transfer.saferoot import TEMP_PREFIX, SafeRoot
from zcrepl.core.errors import UnsafePath

# The shared fixtures: pytest finds a fixture by the name of the module attribute holding it.
_no_fd_leak = saferoothelpers._no_fd_leak
resolver = saferoothelpers.resolver
tree = saferoothelpers.tree
root = saferoothelpers.root


# -------------------------------------------------------------------------------------- AtomicFile


def test_atomic_file_invisible_until_commit(root: SafeRoot, tree: Path) -> None:
    pfd, leaf = root.open_parent((b"a", b"new"))
    try:
        with AtomicFile(pfd, leaf, size=5) as af:
            _write_all(af.fd, b"hello")
            assert not (tree / "root" / "a" / "new").exists()
            tmp_names = [n for n in _names(tree / "root" / "a") if n.startswith(TEMP_PREFIX)]
            assert tmp_names == [af.tmp]
            af.commit(0o755, MTIME_NS)
    finally:
        os.close(pfd)
    final = tree / "root" / "a" / "new"
    assert final.read_bytes() == b"hello"
    st = final.stat()
    assert stat.S_IMODE(st.st_mode) == 0o755
    assert st.st_mtime_ns == MTIME_NS
    assert _names(tree / "root" / "a") == [b"b", b"f", b"new"]


def test_atomic_file_masks_special_mode_bits(root: SafeRoot, tree: Path) -> None:
    with AtomicFile(root.fd, b"suid") as af:
        af.commit(0o4755 | 0o2000 | 0o1000, MTIME_NS, fsync=True)
    assert stat.S_IMODE((tree / "root" / "suid").stat().st_mode) == 0o755


def test_atomic_file_replaces_existing_file(root: SafeRoot, tree: Path) -> None:
    target = tree / "root" / "a" / "f"
    old_ino = target.stat().st_ino
    pfd, leaf = root.open_parent((b"a", b"f"))
    try:
        with AtomicFile(pfd, leaf) as af:
            _write_all(af.fd, b"new content")
            assert target.read_bytes() == b"data"
            af.commit(0o600, MTIME_NS)
    finally:
        os.close(pfd)
    assert target.read_bytes() == b"new content"
    assert target.stat().st_ino != old_ino


def test_atomic_file_replaces_symlink_never_writes_through(root: SafeRoot, tree: Path) -> None:
    link = tree / "root" / "leaf"
    link.symlink_to("../outside/secret")
    with AtomicFile(root.fd, b"leaf") as af:
        _write_all(af.fd, b"mine")
        af.commit(0o644, MTIME_NS)
    assert not link.is_symlink() and link.read_bytes() == b"mine"
    assert (tree / "outside" / "secret").read_bytes() == b"secret"


def test_atomic_file_discard_leaves_nothing(root: SafeRoot, tree: Path) -> None:
    before = _names(tree / "root")
    af = AtomicFile(root.fd, b"gone", size=4096)
    _write_all(af.fd, b"partial")
    af.discard()
    af.discard()
    assert af.fd == -1
    assert _names(tree / "root") == before
    with pytest.raises(ValueError):
        af.commit(0o644, MTIME_NS)
    with pytest.raises(RuntimeError), AtomicFile(root.fd, b"gone") as af2:
        _write_all(af2.fd, b"partial")
        raise RuntimeError("stream broke")
    assert _names(tree / "root") == before


def test_atomic_file_over_directory_raises_and_cleans_up(root: SafeRoot, tree: Path) -> None:
    pfd, leaf = root.open_parent((b"a", b"b"))
    try:
        af = AtomicFile(pfd, leaf)
        with pytest.raises(IsADirectoryError):
            af.commit(0o644, MTIME_NS)
        af.discard()
    finally:
        os.close(pfd)
    assert (tree / "root" / "a" / "b").is_dir()
    assert _names(tree / "root" / "a") == [b"b", b"f"]


def test_atomic_file_commits_again_once_the_directory_in_the_way_is_gone(root: SafeRoot, tree: Path) -> None:
    (tree / "root" / "a" / "empty").mkdir()
    pfd, leaf = root.open_parent((b"a", b"empty"))
    try:
        af = AtomicFile(pfd, leaf)
        os.write(af.fd, b"data")
        with pytest.raises(IsADirectoryError):
            af.commit(0o640, MTIME_NS)
        os.rmdir(leaf, dir_fd=pfd)
        af.commit(0o640, MTIME_NS)
    finally:
        os.close(pfd)
    assert (tree / "root" / "a" / "empty").read_bytes() == b"data"
    assert (tree / "root" / "a" / "empty").stat().st_mtime_ns == MTIME_NS


def test_atomic_file_refuses_bad_leaf(root: SafeRoot) -> None:
    for leaf in (b"..", b"a/b", b".zc.x"):
        with pytest.raises(UnsafePath):
            AtomicFile(root.fd, leaf)


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EINVAL])
def test_fallocate_unsupported_is_ignored(
    root: SafeRoot, tree: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    data = b"0123456789" * (PREALLOCATE_MIN // 10 + 1)
    with AtomicFile(root.fd, b"nofalloc", size=len(data)) as af:
        _write_all(af.fd, data)
        af.commit(0o644, MTIME_NS)
    assert (tree / "root" / "nofalloc").read_bytes() == data


def test_fallocate_failure_removes_temp(root: SafeRoot, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "posix_fallocate", broken)
    before = _names(tree / "root")
    with pytest.raises(OSError) as info:
        AtomicFile(root.fd, b"big", size=PREALLOCATE_MIN)
    assert info.value.errno == errno.EIO
    assert _names(tree / "root") == before


@contextlib.contextmanager
def _small_tmpfs(where: Path) -> Iterator[Path]:
    where.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount tmpfs: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True, timeout=10)


def test_fallocate_enospc_fails_fast_and_leaves_no_temp(tmp_path: Path) -> None:
    with _small_tmpfs(tmp_path / "small") as small, SafeRoot(os.fsencode(small)) as r:
        (small / "keep").write_bytes(b"old")
        with pytest.raises(OSError) as info:
            AtomicFile(r.fd, b"keep", size=10 * 1024 * 1024)
        assert info.value.errno == errno.ENOSPC
        assert _names(small) == [b"keep"]
        assert (small / "keep").read_bytes() == b"old"
