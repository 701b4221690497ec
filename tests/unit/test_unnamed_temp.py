"""Unnamed temp files (O_TMPFILE, linked in at commit) and the data path's shared parent directory fds."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from zchelpers import set_default_acl

from zcrepl.agent.transfer import atomic
from zcrepl.agent.transfer.atomic import AtomicFile
from zcrepl.agent.transfer.dircache import DirCache
from zcrepl.agent.transfer.partial import AREA, PartialArea
from zcrepl.agent.transfer.saferoot import TEMP_PREFIX, SafeRoot

MTIME_NS = 1_600_000_000_123_456_789


@pytest.fixture
def root(tmp_path: Path) -> Iterator[SafeRoot]:
    (tmp_path / "d").mkdir()
    with SafeRoot(os.fsencode(tmp_path / "d")) as r:
        yield r


@contextlib.contextmanager
def _opened(root: SafeRoot, name: bytes) -> Iterator[int]:
    fd = root.open_dir((name,))
    try:
        yield fd
    finally:
        os.close(fd)


def _names(p: Path) -> list[str]:
    return sorted(os.listdir(p))


def test_nameless_until_commit_then_linked_at_the_final_name(root: SafeRoot, tmp_path: Path) -> None:
    af = AtomicFile(root.fd, b"new", unnamed=True)
    os.write(af.fd, b"hello")
    assert af.tmp == b"" and _names(tmp_path / "d") == []  # nothing a reader (or a kill) could see
    af.commit(0o640, MTIME_NS)
    final = tmp_path / "d" / "new"
    assert final.read_bytes() == b"hello"
    assert final.stat().st_mtime_ns == MTIME_NS and final.stat().st_mode & 0o777 == 0o640
    assert _names(tmp_path / "d") == ["new"]


def test_discard_leaves_nothing(root: SafeRoot, tmp_path: Path) -> None:
    with AtomicFile(root.fd, b"gone", 4096, unnamed=True) as af:
        os.write(af.fd, b"partial")
    assert _names(tmp_path / "d") == []


def test_an_existing_file_or_symlink_is_replaced_by_rename(root: SafeRoot, tmp_path: Path) -> None:
    (tmp_path / "d" / "f").write_bytes(b"old")
    (tmp_path / "d" / "l").symlink_to("../outside")
    for leaf in (b"f", b"l"):
        with AtomicFile(root.fd, leaf, unnamed=True) as af:
            os.write(af.fd, b"new")
            af.commit(0o600, MTIME_NS)
    assert (tmp_path / "d" / "f").read_bytes() == b"new"
    assert not (tmp_path / "d" / "l").is_symlink() and (tmp_path / "d" / "l").read_bytes() == b"new"
    assert not (tmp_path / "outside").exists()
    assert _names(tmp_path / "d") == ["f", "l"]


def test_a_directory_in_the_way_then_gone(root: SafeRoot, tmp_path: Path) -> None:
    (tmp_path / "d" / "x").mkdir()
    af = AtomicFile(root.fd, b"x", unnamed=True)
    os.write(af.fd, b"data")
    with pytest.raises(IsADirectoryError):
        af.commit(0o644, MTIME_NS)
    assert [n for n in _names(tmp_path / "d") if n.startswith(os.fsdecode(TEMP_PREFIX))]  # named now
    os.rmdir(tmp_path / "d" / "x")
    af.commit(0o644, MTIME_NS)
    assert (tmp_path / "d" / "x").read_bytes() == b"data" and _names(tmp_path / "d") == ["x"]


def test_kept_for_a_resume_in_the_partial_area(root: SafeRoot, tmp_path: Path) -> None:
    af = AtomicFile(root.fd, b"big", unnamed=True)
    os.pwrite(af.fd, b"a" * 4096, 0)
    area = PartialArea(root)
    assert area.save(b"big", af, 9 << 20, 7, [(0, 4096)])
    p = area.find(b"big", 9 << 20, 7)
    assert p is not None and p.intervals == [(0, 4096)]
    part = tmp_path / "d" / os.fsdecode(AREA) / os.fsdecode(p.key + b".part")
    assert part.read_bytes()[:4096] == b"a" * 4096
    area.drop([b"big"])
    assert _names(tmp_path / "d") == []


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL])
def test_without_o_tmpfile_a_named_temp(root: SafeRoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        code: int) -> None:
    real_open = os.open

    def no_tmpfile(path: bytes, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(code, os.strerror(code))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", no_tmpfile)
    with AtomicFile(root.fd, b"f", unnamed=True) as af:
        assert af.tmp.startswith(TEMP_PREFIX)
        os.write(af.fd, b"x")
        af.commit(0o644, MTIME_NS)
    assert _names(tmp_path / "d") == ["f"]


def test_without_proc_a_named_temp(root: SafeRoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "_PROC_FD", False)
    with AtomicFile(root.fd, b"f", unnamed=True) as af:
        assert af.tmp.startswith(TEMP_PREFIX)
        af.commit(0o644, MTIME_NS)
    assert _names(tmp_path / "d") == ["f"]


@pytest.mark.parametrize("code", [errno.ENOENT, errno.EPERM])
def test_linked_through_proc_where_the_kernel_refuses_to_link_an_fd(
        root: SafeRoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    def refuse(*_args: object) -> int:
        ctypes.set_errno(code)
        return -1

    monkeypatch.setattr(atomic, "_FLINK", True)
    monkeypatch.setattr(atomic, "_linkat", refuse)
    (tmp_path / "d" / "taken").write_bytes(b"old")
    for leaf in (b"new", b"taken"):
        with AtomicFile(root.fd, leaf, unnamed=True) as af:
            os.write(af.fd, leaf)
            af.commit(0o644, MTIME_NS)
    assert not atomic._FLINK  # refused once: the /proc path from then on
    assert (tmp_path / "d" / "new").read_bytes() == b"new" and (tmp_path / "d" / "taken").read_bytes() == b"taken"
    assert _names(tmp_path / "d") == ["new", "taken"]


def test_a_removed_directory_does_not_turn_off_linking_by_fd(root: SafeRoot, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "_FLINK", True)
    (tmp_path / "d" / "sub").mkdir()
    with _opened(root, b"sub") as pfd:
        af = AtomicFile(pfd, b"f", unnamed=True)
        os.rmdir(tmp_path / "d" / "sub")
        with pytest.raises(FileNotFoundError):
            af.commit(0o644, MTIME_NS)
    assert atomic._FLINK


def test_dircache_shares_fds_and_closes_only_idle_ones(root: SafeRoot, tmp_path: Path) -> None:
    for name in "abc":
        (tmp_path / "d" / name).mkdir()
    cache = DirCache(root, keep=1)
    a1, _ = cache.acquire((b"a",))
    a2, _ = cache.acquire((b"a",))
    b, _ = cache.acquire((b"b",))
    assert a1 == a2 and a1 != b
    cache.release((b"a",), a1)
    cache.release((b"b",), b)  # over ``keep``: the oldest idle one goes, "a" is still in use
    os.fstat(a2)
    cache.release((b"a",), a2)
    c, _ = cache.acquire((b"c",))
    cache.drop((b"c",), c)  # the directory went away: the next acquire opens the path again
    c2, _ = cache.acquire((b"c",))
    assert c2 != c
    cache.release((b"c",), c)  # a dropped fd is closed by its last user
    with pytest.raises(OSError):
        os.fstat(c)
    cache.close()
    os.fstat(c2)  # in use: closed by its release, not by close()
    cache.release((b"c",), c2)
    with pytest.raises(OSError):
        os.fstat(c2)


def _count_fchmod(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fchmod

    def fchmod(fd: int, mode: int) -> None:
        calls.append(mode)
        real(fd, mode)

    monkeypatch.setattr(os, "fchmod", fchmod)
    return calls


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o400, 0o000, 0o755, 0o777, 0o666, 0o4755])
def test_created_with_its_final_mode(root: SafeRoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     mode: int) -> None:
    calls = _count_fchmod(monkeypatch)
    with AtomicFile(root.fd, b"f", unnamed=True, mode=mode) as af:
        os.write(af.fd, b"x")
        af.commit(mode, MTIME_NS)
    assert (tmp_path / "d" / "f").stat().st_mode & 0o7777 == mode & 0o777
    # fchmod only for bits the umask took away
    assert atomic.UMASK is not None and bool(calls) == bool(mode & atomic.UMASK)


def test_a_mode_other_than_the_one_created_with_is_set(root: SafeRoot, tmp_path: Path) -> None:
    with AtomicFile(root.fd, b"f", unnamed=True, mode=0o644) as af:
        af.commit(0o640, MTIME_NS)
    assert (tmp_path / "d" / "f").stat().st_mode & 0o777 == 0o640


def test_the_umask_is_read_without_changing_it() -> None:
    old = os.umask(0o027)
    try:
        assert atomic._read_umask() == 0o027 and os.umask(0o027) == 0o027
    finally:
        os.umask(old)


def test_dircache_tells_a_directory_with_a_default_acl(root: SafeRoot, tmp_path: Path) -> None:
    (tmp_path / "d" / "plain").mkdir()
    (tmp_path / "d" / "acl").mkdir()
    set_default_acl(tmp_path / "d" / "acl")
    cache = DirCache(root)
    fd, plain = cache.acquire((b"plain",))
    assert plain
    cache.release((b"plain",), fd)
    fd, plain = cache.acquire((b"acl",))
    assert not plain and cache.acquire((b"acl",)) == (fd, False)  # and so it stays while held
    cache.release((b"acl",), fd)
    cache.release((b"acl",), fd)
    cache.close()
