"""Tests for zcrepl.agent.transfer.saferoot: opening below the root never leaves it, with openat2 or the
per-component walk, at any depth (reliability §1-2)."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest
import saferoothelpers
from saferoothelpers import _chain, _names

from zcrepl.agent.transfer import saferoot
from zcrepl.agent.transfer.saferoot import SafeRoot, validate_relpath
from zcrepl.core.errors import UnsafePath

# The shared fixtures: pytest finds a fixture by the name of the module attribute holding it.
_no_fd_leak = saferoothelpers._no_fd_leak
resolver = saferoothelpers.resolver
tree = saferoothelpers.tree
root = saferoothelpers.root


# ----------------------------------------------------------------------------------------- openat2


def test_openat2_direct(tree: Path) -> None:
    dirfd = os.open(tree / "root", os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fd = saferoot.openat2(dirfd, b"a/b", os.O_RDONLY | os.O_DIRECTORY)
        except OSError as err:
            if err.errno in (errno.ENOSYS, errno.EPERM):
                pytest.skip("openat2 unavailable here")
            raise
        assert stat.S_ISDIR(os.fstat(fd).st_mode)
        assert not os.get_inheritable(fd)  # O_CLOEXEC added
        os.close(fd)
        with pytest.raises(OSError) as info:
            saferoot.openat2(dirfd, b"escape/secret", os.O_RDONLY)
        assert info.value.errno == errno.EXDEV
        with pytest.raises(FileNotFoundError):
            saferoot.openat2(dirfd, b"missing", os.O_RDONLY)
    finally:
        os.close(dirfd)


# ---------------------------------------------------------------------------------------- open_dir


@pytest.mark.parametrize(
    "parts",
    [
        (b"escape",),
        (b"escape", b"x"),
        (b"abs",),
        (b"abs", b"ssl"),
        (b"inlink",),
        (b"inlink", b"b"),
        (b"dang",),
    ],
)
@pytest.mark.parametrize("create", [False, True])
def test_open_dir_refuses_symlinks(
    root: SafeRoot, tree: Path, resolver: bool, parts: tuple[bytes, ...], create: bool
) -> None:
    with pytest.raises(UnsafePath):
        fd = root.open_dir(parts, create=create)
        os.close(fd)
    assert _names(tree / "outside") == [b"secret"]


@pytest.mark.parametrize("parts", [(b"..",), (b"a", b".."), (b"/etc",), (b"",), (b".zc.x",)])
def test_open_dir_validates_parts(root: SafeRoot, resolver: bool, parts: tuple[bytes, ...]) -> None:
    with pytest.raises(UnsafePath):
        os.close(root.open_dir(parts))


def test_open_dir_ok_missing_and_not_a_dir(root: SafeRoot, tree: Path, resolver: bool) -> None:
    fd = root.open_dir((b"a", b"b"))
    try:
        assert os.fstat(fd).st_ino == (tree / "root" / "a" / "b").stat().st_ino
    finally:
        os.close(fd)
    fd = root.open_dir(())
    try:
        assert fd != root.fd and os.fstat(fd).st_ino == os.fstat(root.fd).st_ino
    finally:
        os.close(fd)
    with pytest.raises(FileNotFoundError):
        root.open_dir((b"a", b"missing"))
    with pytest.raises(NotADirectoryError):
        root.open_dir((b"a", b"f"))
    with pytest.raises(NotADirectoryError):
        root.open_dir((b"a", b"f", b"x"))


@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EPERM])
def test_open_dir_falls_back_when_openat2_is_refused(
    root: SafeRoot, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    calls: list[bytes] = []

    def refused(dirfd: int, path: bytes, *args: object, **kwargs: object) -> int:
        calls.append(path)
        raise OSError(err, os.strerror(err), path)

    assert root.use_openat2
    monkeypatch.setattr(saferoot, "openat2", refused)
    os.close(root.open_dir((b"a", b"b")))
    with pytest.raises(UnsafePath):
        root.open_dir((b"escape", b"x"))
    assert calls == [b"a/b", b"escape/x"]


def test_create_makes_one_component_at_a_time(
    root: SafeRoot, tree: Path, resolver: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[tuple[bytes, int | None]] = []
    real_mkdir = os.mkdir

    def spy(path: bytes, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        made.append((path, dir_fd))
        real_mkdir(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", spy)
    umask = os.umask(0)
    os.umask(umask)
    fd = root.open_dir((b"a", b"x", b"y\n", b"\xff"), create=True, mode=0o750)
    os.close(fd)
    assert [name for name, _ in made] == [b"x", b"y\n", b"\xff"]
    assert all(dir_fd is not None for _, dir_fd in made)
    leaf = tree / "root" / "a" / "x" / "y\n" / os.fsdecode(b"\xff")
    assert leaf.is_dir() and not leaf.is_symlink()
    assert stat.S_IMODE(leaf.stat().st_mode) == 0o750 & ~umask
    made.clear()
    os.close(root.open_dir((b"a", b"x", b"y\n", b"\xff"), create=True))  # all there: nothing to make
    assert made == []


def test_create_never_follows_a_planted_symlink(root: SafeRoot, tree: Path, resolver: bool) -> None:
    # dang -> ../outside/newdir is dangling: a following mkdir would create outside/newdir.
    for parts in [(b"dang", b"x"), (b"escape", b"new"), (b"a", b"b", b"c")]:
        if parts[0] == b"a":
            (tree / "root" / "a" / "b" / "c").symlink_to("../../../outside")
        with pytest.raises(UnsafePath):
            os.close(root.open_dir(parts, create=True))
    assert _names(tree / "outside") == [b"secret"]


# -------------------------------------------------------------------------------- open_read, lstat


def test_open_read_regular_file(root: SafeRoot) -> None:
    fd = root.open_read((b"a", b"f"))
    try:
        assert os.read(fd, 100) == b"data"
    finally:
        os.close(fd)


def test_open_read_refuses_symlink_leaf_and_parent(root: SafeRoot, tree: Path, resolver: bool) -> None:
    (tree / "root" / "link").symlink_to("a/f")
    (tree / "root" / "out").symlink_to("../outside/secret")
    for parts in [(b"link",), (b"out",), (b"escape", b"secret"), (b"inlink", b"f")]:
        with pytest.raises(UnsafePath):
            os.close(root.open_read(parts))


def test_open_read_refuses_fifo_without_blocking(root: SafeRoot, tree: Path) -> None:
    fifo = tree / "root" / "fifo"
    os.mkfifo(fifo)
    outcome: list[BaseException | int] = []

    def attempt() -> None:
        try:
            outcome.append(root.open_read((b"fifo",)))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(2.0)
    if worker.is_alive():  # unblock the stuck open so the test can report instead of hanging
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(2.0)
        pytest.fail("open_read blocked on a FIFO")
    assert len(outcome) == 1 and isinstance(outcome[0], UnsafePath), outcome


def test_open_read_refuses_directory(root: SafeRoot) -> None:
    with pytest.raises(UnsafePath):
        os.close(root.open_read((b"a", b"b")))


def test_lstat(root: SafeRoot, tree: Path, resolver: bool) -> None:
    st = root.lstat((b"a", b"f"))
    assert st is not None and st.st_size == 4
    st = root.lstat((b"escape",))
    assert st is not None and stat.S_ISLNK(st.st_mode)
    assert root.lstat((b"a", b"missing")) is None
    assert root.lstat((b"missing", b"x")) is None
    assert root.lstat((b"a", b"f", b"x")) is None
    root_st = root.lstat(())
    assert root_st is not None and root_st.st_ino == (tree / "root").stat().st_ino
    with pytest.raises(UnsafePath):
        root.lstat((b"escape", b"secret"))


def test_open_parent(root: SafeRoot, resolver: bool) -> None:
    pfd, leaf = root.open_parent((b"a", b"new"))
    os.close(pfd)
    assert leaf == b"new"
    with pytest.raises(UnsafePath):
        root.open_parent(())
    with pytest.raises(UnsafePath):
        root.open_parent((b"a", b".."))


def test_saferoot_close_is_idempotent(tree: Path) -> None:
    r = SafeRoot(os.fsencode(tree / "root"))
    r.close()
    r.close()
    assert r.fd == -1


# ------------------------------------------------------------------------------------- past PATH_MAX


def _walk_fd(dir_fd: int, parts: tuple[bytes, ...]) -> int:
    fd = os.dup(dir_fd)
    for name in parts:
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd


def test_open_dir_deeper_than_path_max(root: SafeRoot, resolver: bool) -> None:
    parts = (b"n" * 200,) * 40  # 8,039 bytes: more than one syscall may resolve
    _chain(root.fd, len(parts), name=parts[0])
    fd = root.open_dir(parts)
    ref = _walk_fd(root.fd, parts)
    try:
        assert os.fstat(fd).st_ino == os.fstat(ref).st_ino
    finally:
        os.close(fd)
        os.close(ref)
    made = root.open_dir((*parts, b"new", b"deeper"), create=True)
    os.close(made)
    assert root.lstat((*parts, b"new", b"deeper")) is not None
    with pytest.raises(FileNotFoundError):
        root.open_dir((*parts, b"missing"))


def test_a_symlink_deep_below_path_max_is_refused(root: SafeRoot, tree: Path, resolver: bool) -> None:
    parts = (b"n" * 200,) * 40
    _chain(root.fd, len(parts), name=parts[0])
    pfd = _walk_fd(root.fd, parts[:30])
    try:
        os.rename(parts[30], b"moved", src_dir_fd=pfd, dst_dir_fd=pfd)
        os.symlink(os.fsencode(tree / "outside"), parts[30], dir_fd=pfd)
    finally:
        os.close(pfd)
    with pytest.raises(UnsafePath, match="a symlink is in the way"):
        root.open_dir(parts)
    with pytest.raises(UnsafePath):
        root.open_dir((*parts[:31], b"x"), create=True)
    assert _names(tree / "outside") == [b"secret"]


def test_open_below_and_open_child_start_from_a_held_directory(root: SafeRoot, tree: Path) -> None:
    parts = (b"n" * 200,) * 40
    _chain(root.fd, len(parts), name=parts[0])
    mid = root.open_dir(parts[:20])
    try:
        fd = root.open_below(mid, parts[:20], parts[20:])
        os.close(fd)
        fd = root.open_child(mid, parts[20], b"/".join(parts[:21]))
        os.close(fd)
        with pytest.raises(UnsafePath, match="a symlink is in the way"):
            root.open_child(root.fd, b"escape", b"escape")
        with pytest.raises(UnsafePath):
            root.open_child(mid, b"..", b"..")
    finally:
        os.close(mid)


def test_paths_longer_than_path_max_are_valid_up_to_the_wire_limit() -> None:
    deep = b"/".join([b"d"] * 300)  # deeper than the old 256-level limit
    assert len(validate_relpath(deep)) == 300
    assert len(validate_relpath(b"/".join([b"x" * 255] * 256))) == 256  # 65,535 bytes: MAX_PATH exactly
